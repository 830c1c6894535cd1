"""The sanity checks (`check init|overfit|lr`) on real models and data, through Python and the command
line, each recorded in a real SQLite store; and `plot --ratios`."""

import textwrap
from dataclasses import replace

import pytest
import torch

from trainlab import Config, Store, fit, load_task
from trainlab.checks import LECTURE_LRS, check_init, check_lr, check_overfit
from trainlab.cli import main
from helpers import noisy_task, strict_json





@pytest.fixture(scope="module")
def mlp():
    hp = Config(model="mlp")
    return load_task(hp), hp


USER_TASK = textwrap.dedent('''
    """mnist1d with a fault: the head's weights x {scale}, or {classes} classes declared."""
    import torch
    from torch.utils.data import TensorDataset
    from trainlab import Task
    from trainlab.models import build_model
    from trainlab.tasks import mnist1d_arrays

    def build(hp):
        d = mnist1d_arrays()
        x, y = torch.tensor(d["x"][:, None, :]), torch.tensor(d["y"])
        xt, yt = torch.tensor(d["x_test"][:, None, :]), torch.tensor(d["y_test"])

        def model():
            m = build_model("mlp", (1, 40), {classes}, hp.width, hp.dropout)
            with torch.no_grad():
                m.head.weight.mul_({scale})
            return m

        return Task("faulty", model, TensorDataset(x, y), TensorDataset(xt, yt), {classes})
''')


def user_task(tmp_path, scale=1, classes=10):
    path = tmp_path / f"faulty_{scale}_{classes}.py"
    path.write_text(USER_TASK.format(scale=scale, classes=classes))
    return f"{path}:build"


# --- check init ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_check_init_passes_on_the_builtin_models(tmp_path, model):
    hp = Config(model=model, width=8 if model == "resnet" else None, weight_decay=1e-3)
    store = Store(tmp_path / "runs.db")
    r = check_init(load_task(hp), hp, store)
    assert r.passed and r.name == "init"
    assert r.evidence["expected"] == pytest.approx(2.302585) and abs(r.evidence["deviation"]) < 0.1  # within 10%
    assert r.evidence["examples"] == 320 and len(r.evidence["batch_losses"]) == 10
    run = store.run(r.run_id)
    assert (run["name"], run["kind"], run["status"]) == ("check-init", "check", "completed")
    assert run["summary"]["verdict"] == "pass" and run["hparams"]["weight_decay"] == 0.0  # weight decay off
    assert store.runs() == []  # a check is not a training run


def test_scaled_up_init_fails_check_init_and_explains_itself(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    task = user_task(tmp_path, scale=30)
    rc = main(["check", "init", "--set", f"task={task}", "--set", "model=mlp", "--db", db])
    assert rc == 1
    out = capsys.readouterr().out
    assert "check init: FAIL: initial loss" in out
    assert "expected about 2.3 = log(10)" in out and "the output layer's scale is too large" in out
    assert main(["check", "init", "--set", f"task={task}", "--set", "model=mlp", "--db", db, "--json"]) == 1
    result = strict_json(capsys.readouterr().out)
    assert result["verdict"] == "fail" and result["evidence"]["initial_loss"] > 4
    assert result["evidence"]["logit_std"] > 1  # a healthy mlp: about 0.1
    run = Store(db).run(result["run_id"])
    assert run["status"] == "completed" and run["summary"]["verdict"] == "fail"  # the check itself worked


def test_labels_that_do_not_match_the_classes_fail_check_init(tmp_path):
    hp = Config(task=user_task(tmp_path, classes=5), model="mlp")
    r = check_init(load_task(hp), hp)
    assert not r.passed
    assert r.message == ("labels run over 0..9, but the task has 5 classes (0..4): labels do not match the "
                         "number of classes")


def test_check_init_leaves_the_model_and_rng_alone(mlp):
    task, hp = mlp
    torch.manual_seed(123)
    model = task.build_model()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    r = check_init(task, hp, model=model)
    assert r.passed
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


# --- check overfit ------------------------------------------------------------------------------------

def test_check_overfit_reaches_100_percent_with_regularization_off(tmp_path, mlp):
    task, _ = mlp
    hp = Config(model="mlp", weight_decay=1e-2, dropout=0.5, label_smoothing=0.1)
    store = Store(tmp_path / "runs.db")
    r = check_overfit(task, hp, store, batches=5)
    assert r.passed, r.message
    assert r.evidence["examples"] == 160 and r.evidence["final_accuracy"] == 1.0
    assert 0 < r.evidence["steps_to_100"] <= r.evidence["steps"] <= 1000
    assert r.message.startswith(f"reached 100% training accuracy on 160 examples (5 minibatches) in "
                                f"{r.evidence['steps_to_100']} steps")
    run = store.run(r.run_id)
    assert (run["name"], run["kind"], run["status"]) == ("check-overfit", "check", "completed")
    assert run["hparams"]["weight_decay"] == 0.0 and run["hparams"]["dropout"] == 0.0
    assert run["hparams"]["label_smoothing"] == 0.0 and run["hparams"]["schedule"] == "constant"
    curve = store.metrics(r.run_id, ["train/loss", "val/acc"])
    assert len(curve["train/loss"]["value"]) == r.evidence["steps"] and curve["val/acc"]["value"][-1] == 1.0


def test_check_overfit_with_an_exploding_lr_names_the_cause(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    rc = main(["check", "overfit", "--set", "model=mlp", "--set", "optimizer=sgd", "--set", "lr=50", "--db", db,
               "--json"])
    assert rc == 1
    r = strict_json(capsys.readouterr().out)
    assert r["evidence"]["cause"] == "loss exploding" and r["evidence"]["training_status"] == "diverged"
    assert "the loss exploded" in r["message"] and "learning rate too high (lr 50), or bad initialization" in r["message"]
    assert Store(db).run(r["run_id"])["status"] == "completed"


def test_check_overfit_with_a_tiny_lr_says_the_loss_is_not_going_down(mlp):
    task, _ = mlp
    r = check_overfit(task, Config(model="mlp", optimizer="sgd", lr=1e-6), max_steps=100)
    assert not r.passed and r.evidence["cause"] == "loss not going down"
    assert "learning rate too low (lr 1e-06), or bad initialization" in r.message
    assert r.run_id is None and r.evidence["steps"] == 100


# --- check lr -----------------------------------------------------------------------------------------

def test_check_lr_both_methods_on_mnist1d_mlp(tmp_path, mlp):
    task, hp = mlp
    store = Store(tmp_path / "runs.db")
    torch.manual_seed(7)
    model = task.build_model()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    plot = tmp_path / "lr.png"
    r = check_lr(task, hp, store, plot=plot, model=model)
    # the raw table: every lecture rate, from the same initial loss
    assert [row["lr"] for row in r.table] == sorted(LECTURE_LRS, reverse=True)
    assert len({row["start"] for row in r.table}) == 1
    status = {row["lr"]: row["status"] for row in r.table}
    assert status[0.1] == "unstable" and status[1e-2] == "ok"  # 1e-1 spikes to 2.5x the initial loss
    assert r.discrete_lr == 0.01 and [row["lr"] for row in r.table if row["picked"]] == [0.01]
    # the sweep: 1e-6 -> 10, cut where it blew up, a tenth of its minimum
    s = r.sweep
    assert s["cut_reason"] is not None and s["cut"] < 200
    assert r.sweep_lr == pytest.approx(s["lr_at_min"] / 10) and 1e-3 < r.sweep_lr < 3e-2
    assert r.agree is True and r.suggested_lr == 0.01 and r.passed
    assert "(not applied)" in r.message
    # a picture, the stored run, and no trace left
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and r.plot == str(plot)
    run = store.run(r.run_id)
    assert (run["name"], run["kind"], run["status"]) == ("check-lr", "check", "completed")
    assert run["summary"]["suggested_lr"] == 0.01 and len(run["summary"]["table"]) == 4
    m = store.metrics(r.run_id)
    assert len(m["lr_test/discrete/0.01/loss"]["value"]) == 100
    assert len(m["lr_test/sweep/lr"]["value"]) == len(s["lrs"])
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_check_lr_fails_when_no_rate_makes_the_loss_drop(tmp_path):
    hp = Config(model="mlp")
    task = load_task(hp)
    x, y = task.train.tensors
    labels = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]  # nothing left to learn
    shuffled = replace(task, train=torch.utils.data.TensorDataset(x, labels))
    r = check_lr(shuffled, hp, method="discrete", lrs=(1e-2, 1e-3), steps=50)
    assert not r.passed and r.suggested_lr is None and r.discrete_lr is None
    assert {row["status"] for row in r.table} <= {"no drop", "diverged", "unstable"}
    assert r.message.startswith("no learning rate found: no discrete trial dropped significantly")


def test_check_lr_command_prints_the_table_and_the_pick(tmp_path, capsys):
    db, png = str(tmp_path / "runs.db"), tmp_path / "lr.png"
    rc = main(["check", "lr", "--set", "model=mlp", "--method", "discrete", "--steps", "40", "--db", db,
               "--plot", str(png)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "discrete trial: 40 steps at each lr, constant, from the same initialization" in out
    lines = [line for line in out.splitlines() if line.startswith(("0.1 ", "0.01 ", "0.001 ", "0.0001 "))]
    assert len(lines) == 4 and sum("<- picked" in line for line in lines) == 1
    assert "check lr: PASS: suggested lr" in out and "to use it: trainlab train --set lr=" in out
    assert png.is_file() and f"wrote {png}" in out


def test_check_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    db = tmp_path / "runs.db"
    assert main(["check", "init", "--set", "lr=-1", "--db", str(db)]) == 2
    assert "lr:" in capsys.readouterr().err and not db.exists()
    assert main(["check", "lr", "--set", "model=mlp", "--steps", "5", "--db", str(db)]) == 2
    assert "steps must be >= 10" in capsys.readouterr().err
    assert main(["check", "overfit", "--batches", "0", "--db", str(db)]) == 2
    assert "--batches: must be >= 1, got 0" in capsys.readouterr().err
    assert Store(db).runs(kind=None) == []
    with pytest.raises(SystemExit):
        main(["check", "lr", "--method", "bogus"])


# --- plot --ratios ------------------------------------------------------------------------------------

def test_plot_ratios(tmp_path, mlp, capsys):
    task, _ = mlp
    db = str(tmp_path / "runs.db")
    store = Store(db)
    r = fit(task, Config(model="mlp", epochs=1, monitor_every=10), store=store, quiet=True, evaluate_test=False,
            checkpoints=False)
    png = tmp_path / "ratios.png"
    assert main(["plot", str(r.run_id), "--ratios", "-o", str(png), "--db", db]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and f"wrote {png}" in capsys.readouterr().out
    off = fit(task, Config(model="mlp", epochs=1, monitor_every=0), store=store, quiet=True, evaluate_test=False,
              checkpoints=False)
    assert main(["plot", str(off.run_id), "--ratios", "-o", str(png), "--db", db]) == 2
    assert f"run {off.run_id} has no update/weight ratios" in capsys.readouterr().err


@pytest.mark.slow
def test_widened_lr_test_finds_a_rate_for_a_slow_but_real_learner_and_fails_only_on_evidence():
    from trainlab.checks import check_lr_widened

    hp = Config(model="mlp", width=64)
    task = noisy_task(0.06)
    assert check_lr(task, hp, steps=100, sweep_steps=200).suggested_lr is None   # the plain test gives up ...
    r = check_lr_widened(task, hp, steps=100, sweep_steps=200)                  # ... the widened one does not
    assert r.passed and r.suggested_lr is not None and len(r.settings["attempts"]) >= 2
    assert "slow but real" in r.message or "after widening" in r.message
    # and the rate it found trains the model: validation accuracy above chance
    res = fit(task, Config(model="mlp", width=64, lr=r.suggested_lr, epochs=4), quiet=True, evaluate_test=False)
    assert max(res.history["val/acc"]) > 0.3   # chance 0.25; 1,000 examples: 3.5 standard errors above it
    # inputs that carry nothing: every try fails, and the message shows each rate's loss change
    dead = check_lr_widened(noisy_task(0.06, zero_inputs=True), hp, steps=30, sweep_steps=40, max_steps=60)
    assert not dead.passed and len(dead.settings["attempts"]) == 3
    assert dead.message.startswith("no rate moves the loss, after 3 tries") and "s.e." in dead.message
