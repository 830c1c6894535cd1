"""The learning-curve doctor on REAL training runs, one built to show each fault, and on healthy runs
that must get no false alarm. Tiny models on mnist1d/digits, single-threaded, a few seconds each."""

from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

from trainlab import Config, Store, fit, load_task
from trainlab.cli import main
from trainlab.doctor.diagnose import diagnose_run
from trainlab.models import build_model
from helpers import strict_json





@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return str(tmp_path_factory.mktemp("doctor") / "runs.db")


def train(db, data=None, net=None, quiet=True, **hp):
    """fit() one run into the store at `db`; `data` replaces the task, `net` its model (a hand-built fault)."""
    hp = Config(**hp)
    task = data or load_task(hp)
    store = Store(db)
    result = fit(task, hp, store=store, quiet=quiet, evaluate_test=False, checkpoints=False, model=net)
    return store, result


def found(store, run_id):
    return {f.name: f for f in diagnose_run(store, run_id).findings}


def small_init_mlp(scale=0.05, seed=0):
    """An MLP whose weights are 20x smaller than PyTorch's default: the signal vanishes through the layers."""
    torch.manual_seed(seed)
    model = build_model("mlp", (1, 40), 10, 100, 0.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(scale)
                m.bias.zero_()
    return model


# --- one run per fault --------------------------------------------------------------------------------

def test_too_high_lr_diverges_and_the_doctor_says_learning_rate_too_high(db, capsys):
    store, r = train(db, model="mlp", lr=1.0, epochs=2)
    assert r.status == "diverged"
    f = found(store, r.run_id)
    assert list(f) == ["diverged"]
    d = f["diverged"]
    assert d.confidence == "high" and d.diagnosis.startswith("learning rate too high")
    assert d.numbers["lr"] == pytest.approx(1.0, rel=1e-3) and d.numbers["step"] < 50
    assert f"at step {d.numbers['step']} at lr 1" in d.evidence
    # the command line gives the same, as JSON
    assert main(["diagnose", str(r.run_id), "--db", db, "--json"]) == 0
    out = strict_json(capsys.readouterr().out)
    assert out["run"] == r.run_id and out["status"] == "diverged" and out["healthy"] is False
    assert [x["name"] for x in out["findings"]] == ["diverged"]


def test_barely_moving_loss_says_learning_rate_too_low_and_the_ratios_agree(db, capsys):
    store, r = train(db, model="mlp", optimizer="sgd", lr=1e-4, epochs=3, quiet=False)
    out = capsys.readouterr().out
    # fit's own end-of-run warnings: every weight matrix moves ~1e-5 of itself per step
    assert out.count("warning: update/weight ratio of") == 3 and "want about 1e-3" in out
    warnings = store.run(r.run_id)["summary"]["ratio_warnings"]
    assert {w["name"] for w in warnings} == {"stage1.1.weight", "stage2.0.weight", "head.weight"}
    assert all(w["side"] == "low" and w["median"] < 1e-4 for w in warnings)
    f = found(store, r.run_id)
    assert set(f) == {"lr_too_low", "update_ratio_low"}
    assert f["lr_too_low"].confidence == "high" and f["lr_too_low"].numbers["relative_drop"] < 0.03
    assert "raise the learning rate" in f["lr_too_low"].action


def test_tiny_model_underfits(db):
    store, r = train(db, model="mlp", width=2, lr=1e-2, epochs=12, batch_size=64)
    f = found(store, r.run_id)
    assert list(f) == ["underfitting"]
    u = f["underfitting"]
    assert u.numbers["train_acc"] < 0.6 and abs(u.numbers["gap"]) < 0.05
    assert "bigger model" in u.action


def test_no_regularization_on_a_small_subset_for_many_epochs_overfits(db):
    hp = Config(model="mlp")
    task = load_task(hp)
    x, y = task.train.tensors
    subset = replace(task, train=TensorDataset(x[:256], y[:256]))
    store, r = train(db, data=subset, model="mlp", epochs=40, weight_decay=0.0, dropout=0.0)
    f = found(store, r.run_id)
    assert list(f) == ["overfitting"]
    o = f["overfitting"]
    assert o.confidence == "high" and o.numbers["gap"] > 0.5
    assert o.numbers["val_loss_min_epoch"] <= 10 < 40 and o.numbers["val_loss_end"] > 1.2 * o.numbers["val_loss_min"]
    assert "regularization" in o.action and "more data" in o.action


def test_short_run_is_told_to_train_longer_from_the_command_line(db, tmp_path, capsys):
    rc = main(["train", "--set", "model=mlp", "--set", "epochs=3", "--db", db, "--quiet", "--json",
               "--runs-dir", str(tmp_path / "runs")])
    assert rc == 0
    run_id = strict_json(capsys.readouterr().out)["run"]
    f = found(Store(db), run_id)
    assert list(f) == ["train_longer"]
    assert f["train_longer"].numbers["epochs"] == [1, 3] and f["train_longer"].numbers["val_acc_rise"] > 0.03
    assert main(["diagnose", str(run_id), "--db", db]) == 0
    text = capsys.readouterr().out
    assert "1. train_longer (high confidence): still learning at the end of the run" in text
    assert "try: train longer" in text


def test_too_small_initialization_gives_a_flat_start_then_a_drop(db):
    store, r = train(db, net=small_init_mlp(), model="mlp", optimizer="momentum", lr=0.05, schedule="constant", epochs=6)
    f = found(store, r.run_id)
    assert "slow_start" in f and "diverged" not in f and "lr_too_low" not in f
    s = f["slow_start"]
    assert s.numbers["ratio"] >= 1.5 and s.numbers["min"] < 0.8 * s.numbers["start"]
    assert "initialization" in s.diagnosis and "check_start" in s.action


def test_too_small_initialization_is_a_slow_start_in_a_shorter_run_too(db):
    store, r = train(db, net=small_init_mlp(), model="mlp", optimizer="momentum", lr=0.05, schedule="constant", epochs=4)
    assert "slow_start" in found(store, r.run_id)


# --- schedules: each rule on a run built to show it -------------------------------------------------------

def test_a_constant_rate_that_stopped_helping_is_a_plateau_and_the_decayed_run_is_not(db):
    store, r = train(db, task="digits", model="mlp", lr=0.03, schedule="constant", epochs=12)
    p = found(store, r.run_id)["plateau"]
    assert p.numbers["lr"] == pytest.approx(0.03) and 0 < p.numbers["step"] < r.steps // 2
    assert f"from step {p.numbers['step']} (lr 0.03" in p.evidence and "decay the learning rate now" in p.action
    store, r = train(db, task="digits", model="mlp", lr=0.03, schedule="cosine", epochs=12)
    assert "plateau" not in found(store, r.run_id)


def test_a_step_decay_while_the_loss_still_falls_is_decayed_too_early(db):
    store, r = train(db, model="mlp", lr=1e-3, schedule="multistep", milestones_epochs=[2.0], epochs=8)
    f = found(store, r.run_id)
    d = f["decayed_too_early"]
    assert d.numbers["step"] == 2 * r.steps // 8 and d.numbers["lr_after"] == pytest.approx(1e-4)
    assert "train_longer" not in f and "underfitting" not in f


def test_a_step_decay_at_the_plateau_is_not_too_early(db):
    store, r = train(db, task="digits", model="mlp", lr=0.03, schedule="multistep", milestones_epochs=[3.0], epochs=8)
    f = found(store, r.run_id)
    assert "decayed_too_early" not in f and "plateau" not in f


def test_scaled_up_head_is_flagged_as_initial_loss_far_from_log_c(db):
    torch.manual_seed(0)
    model = build_model("mlp", (1, 40), 10, 100, 0.0)
    with torch.no_grad():
        model.head.weight.mul_(30)
    store, r = train(db, net=model, model="mlp", epochs=2)
    assert store.run(r.run_id)["summary"]["num_classes"] == 10
    f = found(store, r.run_id)
    i = f["initial_loss"]
    assert i.numbers["initial_loss"] > 4 and i.confidence == "high"
    assert "expected about 2.3 = log(10)" in i.evidence


# --- healthy runs: no false alarm ---------------------------------------------------------------------

@pytest.mark.slow
def test_healthy_default_resnet_gets_no_finding(db, capsys):
    # the default model, optimizer, lr and cosine schedule; narrower and shorter so the test stays fast
    store, r = train(db, model="resnet", width=8, epochs=6)
    assert r.history["val/acc"][-1] > 0.93
    d = diagnose_run(store, r.run_id)
    assert d.healthy, [str(f) for f in d.findings]
    assert store.run(r.run_id)["summary"]["ratio_warnings"] == []
    assert main(["diagnose", str(r.run_id), "--db", db]) == 0
    assert "no problems found" in capsys.readouterr().out


@pytest.mark.parametrize("epochs", [2, 6])
def test_healthy_short_digits_mlp_gets_no_schedule_or_init_finding(db, epochs):
    store, r = train(db, task="digits", model="mlp", epochs=epochs)
    f = found(store, r.run_id)
    assert not {"slow_start", "plateau", "decayed_too_early", "initial_loss", "lr_too_low"} & set(f), f
    assert set(f) <= {"train_longer"}   # 2 epochs: still learning, and rightly told so


@pytest.mark.slow
def test_healthy_digits_mlp_gets_no_finding(db):
    store, r = train(db, task="digits", model="mlp", epochs=15)
    assert r.history["val/acc"][-1] > 0.95 and r.history["train/acc"][-1] > 0.99
    assert diagnose_run(store, r.run_id).findings == []


# --- the command's errors -----------------------------------------------------------------------------

def test_diagnose_unknown_run_exits_2(db, capsys):
    assert main(["diagnose", "9999", "--db", db]) == 2
    assert "no run with id 9999" in capsys.readouterr().err


def test_diagnose_rejects_one_class(db, capsys):
    assert main(["diagnose", "1", "--db", db, "--num-classes", "1"]) == 2
    assert "--num-classes: must be >= 2, got 1" in capsys.readouterr().err


def test_check_start_confirms_a_bad_initialization_before_blaming_it():
    from trainlab.checks import check_start

    hp = Config(model="mlp", optimizer="momentum", lr=0.05)
    task = load_task(hp)
    bad = check_start(task, hp, small_init_mlp(), steps=150)
    assert bad.verdict == "fail" and "starts faster" in bad.message
    assert bad.evidence["default"] < 0.5 * (bad.evidence["given"] or 150)
    torch.manual_seed(0)
    ok = check_start(task, hp, build_model("mlp", (1, 40), 10, 100, 0.0), steps=150)
    assert ok.verdict == "pass" and "not the initialization's" in ok.message
