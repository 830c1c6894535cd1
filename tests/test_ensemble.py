"""Prediction ensembles: the averaging math on known logits, members from the store (best checkpoints,
EMA weights, snapshots, the top K of a study), mismatched members, and the command line
(`trainlab ensemble`, `trainlab train --set seeds=K`) in-process on real tiny runs."""

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainlab.cli import main
from trainlab.config import Config
from trainlab.ensemble import (Member, average_probabilities, evaluate_ensemble, members_from_runs,
                               members_from_snapshots, top_runs, train_members, best_runs)
from trainlab.store import Store
from trainlab.tasks import Task, load_task
from trainlab.train import fit, predict

from helpers import TINY, TINY_SET


def test_average_probabilities_is_the_mean_of_softmaxes_not_of_logits():
    a = torch.tensor([[10.0, 0.0]])  # very sure of class 0
    b = torch.tensor([[0.0, 2.0]])   # fairly sure of class 1, twice
    probs = average_probabilities([a, b, b])
    p_b1 = math.exp(2) / (1 + math.exp(2))
    p_a0 = 1 / (1 + math.exp(-10))
    expected = [(p_a0 + 2 * (1 - p_b1)) / 3, ((1 - p_a0) + 2 * p_b1) / 3]
    assert probs[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert probs.argmax(1).item() == 1
    assert torch.stack([a, b, b]).mean(0).argmax(1).item() == 0, "averaging logits would pick class 0"
    assert probs.sum(1).tolist() == pytest.approx([1.0])
    with pytest.raises(ValueError, match=r"must share one shape .* \[\(1, 2\), \(1, 3\)\]"):
        average_probabilities([a, torch.zeros(1, 3)])
    with pytest.raises(ValueError, match="at least one member"):
        average_probabilities([])


class _Fixed(nn.Module):
    """Logits looked up by example: input i (a float index) gets row i of `table`."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.tensor(table))

    def forward(self, x):
        return self.table[x[:, 0].long()]


def _toy_task(num_classes=2, name="toy"):
    x = torch.arange(4, dtype=torch.float32)[:, None]
    y = torch.tensor([0, 1, 1, 0])
    data = TensorDataset(x, y)
    return Task(name=name, build_model=lambda: None, train=data, test=data, num_classes=num_classes, val=data)


def test_evaluate_ensemble_on_known_logits():
    task = _toy_task()
    hp = Config(task="toy.py:build")
    one = _Fixed([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.1]])   # right on examples 0, 1
    two = _Fixed([[0.0, 1.0], [0.0, 4.0], [0.0, 1.0], [0.0, 5.0]])   # right on examples 1, 2
    members = [Member(1, "one", "memory", hp, one), Member(2, "two", "memory", hp, two)]
    result = evaluate_ensemble(members, "test", tasks=[task, task])
    assert [m["acc"] for m in result.members] == [0.5, 0.5] and result.mean_member_acc == 0.5
    probs = average_probabilities([one(task.test.tensors[0]), two(task.test.tensors[0])])
    assert probs.argmax(1).tolist() == [0, 1, 0, 1]  # example 2 -> 0: sure-and-wrong beats unsure-and-right
    assert result.ensemble_acc == 0.5 and result.n == 4
    nll = -sum(math.log(probs[i, c]) for i, c in enumerate([0, 1, 1, 0])) / 4
    assert result.ensemble_loss == pytest.approx(nll, rel=1e-6)


def test_members_must_share_task_classes_and_validation_split():
    hp = Config(task="toy.py:build")
    model = _Fixed([[0.0, 1.0]] * 4)
    two, three = _toy_task(2), _toy_task(3)
    with pytest.raises(ValueError, match=r"^ensemble: members must share the classes, but run 1 has 2 and run 2 has 3$"):
        evaluate_ensemble([Member(1, "a", "m", hp, model), Member(2, "b", "m", hp, model)], "test", tasks=[two, three])
    other = Config(task="digits")
    with pytest.raises(ValueError, match=r"^ensemble: members must share one task, but run 1 has task 'toy.py:build' "
                                         r"and run 7 has task 'digits'$"):
        evaluate_ensemble([Member(1, "a", "m", hp, model), Member(7, "b", "m", other, model)], "test",
                          tasks=[two, two])
    moved = Config(task="toy.py:build", split_seed=1)
    pair = [Member(1, "a", "m", hp, model), Member(2, "b", "m", moved, model)]
    with pytest.raises(ValueError, match=r"hold out different validation splits .* use --split test$"):
        evaluate_ensemble(pair, "val", tasks=[two, two])
    assert evaluate_ensemble(pair, "test", tasks=[two, two]).n == 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three seeds of a tiny MLP, one run selected on its EMA weights, one snapshot run, in one store."""
    root = tmp_path_factory.mktemp("ensemble")
    store = Store(root / "t.db")
    runs = root / "runs"
    results, ens = train_members(Config(**TINY, epochs=3), 3, store, quiet=True, runs_dir=runs, study="seeds")
    ema = fit(None, Config(**TINY, epochs=3, ema=0.9, early_stop_metric="val/acc_ema"), store=store, quiet=True,
              runs_dir=runs)
    snap = fit(None, Config(**TINY, epochs=3, schedule="cyclic_cosine", cycles=3, snapshots=True), store=store,
               quiet=True, runs_dir=runs)
    return {"root": root, "db": str(root / "t.db"), "store": store, "members": results, "ensemble": ens,
            "ema": ema, "snap": snap}


def test_train_members_trains_k_seeds_and_ensembles_them(trained):
    store, results, ens = trained["store"], trained["members"], trained["ensemble"]
    runs = [store.run(r.run_id) for r in results]
    assert [r["seed"] for r in runs] == [0, 1, 2] and all(r["hparams"]["seeds"] == 1 for r in runs)
    assert [r["name"] for r in runs] == ["mnist1d-mlp-seed0", "mnist1d-mlp-seed1", "mnist1d-mlp-seed2"]
    assert len({r.best_metric for r in results}) > 1, "different seeds, different members"
    assert ens.split == "val" and [m["acc"] for m in ens.members] == pytest.approx([r.best_metric for r in results])
    assert ens.mean_member_acc == pytest.approx(sum(r.best_metric for r in results) / 3)


def test_members_from_runs_load_best_checkpoints_and_match_fit(trained):
    store, results = trained["store"], trained["members"]
    members = members_from_runs(store, [r.run_id for r in results])
    assert [m.source for m in members] == ["best.pt"] * 3
    result = evaluate_ensemble(members, "test")
    for row, r in zip(result.members, results):
        assert row["acc"] == pytest.approx(r.test["acc"]), "the checkpoint holds the weights fit tested"
    task = load_task(members[0].hp)
    logits = [predict(m.model, task.test) for m in members]
    manual = (average_probabilities(logits).argmax(1) == task.test.tensors[1]).float().mean().item()
    assert result.ensemble_acc == pytest.approx(manual)


def test_a_run_selected_on_ema_contributes_its_averaged_weights(trained):
    run = trained["ema"]
    (member,) = members_from_runs(trained["store"], [run.run_id])
    assert member.source == "best.pt (ema)"
    result = evaluate_ensemble([member], "val")
    assert result.members[0]["acc"] == pytest.approx(run.best_metric)  # best val/acc_ema
    assert result.ensemble_acc == pytest.approx(run.best_metric)


def test_snapshot_members(trained):
    run = trained["snap"]
    members = members_from_snapshots(trained["store"], run.run_id)
    assert [m.source for m in members] == ["snapshot-1.pt", "snapshot-2.pt", "snapshot-3.pt"]
    last_two = members_from_snapshots(trained["store"], run.run_id, last=2)
    result = evaluate_ensemble(last_two, "val")
    assert [m["source"] for m in result.members] == ["snapshot-2.pt", "snapshot-3.pt"]
    assert result.members[-1]["acc"] == pytest.approx(run.history["val/acc"][-1]), "the last cycle ends the run"
    with pytest.raises(ValueError, match=rf"^--last: run {run.run_id} has 3 snapshots, got 4$"):
        members_from_snapshots(trained["store"], run.run_id, last=4)
    with pytest.raises(ValueError, match=r"^ensemble: run 1 has no snapshots; train it with schedule=cyclic_cosine"):
        members_from_snapshots(trained["store"], 1)


def test_top_runs_of_a_study(trained):
    store, results = trained["store"], trained["members"]
    ranked = sorted(results, key=lambda r: (-r.best_metric, r.run_id))
    assert top_runs(store, "seeds", 2) == [r.run_id for r in ranked[:2]]
    with pytest.raises(ValueError, match=r"^ensemble: study 'seeds' has 3 comparable runs with a best checkpoint "
                                         r"\(task 'mnist1d'\), asked for 4"):
        top_runs(store, "seeds", 4)
    # the store mixes runs selected on val/acc and one on val/acc_ema: the most recent run's kind is taken
    ids, note = best_runs(store, None, 2)
    assert trained["ema"].run_id not in ids and "selected on val/acc_ema) 1 runs" in note


def test_best_runs_pick_within_one_task(tmp_path):
    """best:K on a store holding several tasks: members of one task (the latest, or --task), one split."""
    store = Store(str(tmp_path / "m.db"))

    def run(task, best, kind="train", **hp):
        rid = store.create_run(name=f"{task}-{best}", hparams={"task": task, **hp}, kind=kind)
        store.finish_run(rid, "completed", best_metric=best, best_epoch=1, epochs=1, checkpoint=f"/x/{rid}/best.pt")
        return rid

    other_split = run("mnist1d", 0.99, split_seed=1)
    m = [run("mnist1d", v) for v in (0.5, 0.7, 0.6)]
    check = run("mnist1d", 0.98, kind="check")
    d = [run("digits", v) for v in (0.9, 0.95)]
    ids, note = best_runs(store, None, 2)
    assert ids == [d[1], d[0]] and note.startswith("task 'digits' (the most recent; also in the store: mnist1d")
    ids, _ = best_runs(store, None, 2, task="mnist1d")
    assert ids == [m[1], m[2]] and other_split not in ids and check not in ids
    with pytest.raises(ValueError, match=r"^--task: the store has no runs with a best checkpoint on task 'cifar'; "
                                         r"tasks: mnist1d, digits$"):
        best_runs(store, None, 1, task="cifar")
    with pytest.raises(ValueError, match=r"^ensemble: the store has 2 comparable runs .*asked for 3$"):
        best_runs(store, None, 3)


# --- command line --------------------------------------------------------------------------------------

def test_cli_ensemble_runs_study_and_snapshots(trained, capsys, monkeypatch):
    monkeypatch.chdir(trained["root"])
    db, ids = trained["db"], [r.run_id for r in trained["members"]]
    assert main(["ensemble", "--runs", ",".join(map(str, ids)), "--split", "test", "--json", "--db", db]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "test" and out["n"] == 1000 and [m["run"] for m in out["members"]] == ids
    assert out["ensemble_acc"] == pytest.approx(evaluate_ensemble(members_from_runs(trained["store"], ids),
                                                                  "test").ensemble_acc)
    assert main(["ensemble", "--study", "seeds", "--top", "2", "--db", db]) == 0
    text = capsys.readouterr().out
    assert "top 2 runs of study 'seeds', task 'mnist1d': val split, 400 examples" in text
    assert "members' mean" in text and "ensemble of 2" in text
    snap = trained["snap"].run_id
    assert main(["ensemble", "--snapshots", str(snap), "--last", "2", "--json", "--db", db]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["source"] for m in out["members"]] == ["snapshot-2.pt", "snapshot-3.pt"]


@pytest.mark.parametrize("argv, message", [
    (["ensemble"], "give one of --runs ID,ID,..."),
    (["ensemble", "--runs", "1", "--snapshots", "5"], "got --runs, --snapshots"),
    (["ensemble", "--runs", "one,two"], "--runs: expected run ids separated by commas"),
    (["ensemble", "--runs", "1,1"], "a run is listed twice"),
    (["ensemble", "--runs", "99"], "99"),
    (["ensemble", "--top", "2", "--runs", "1"], "--top: goes with --study NAME"),
    (["ensemble", "--snapshots", "1"], "run 1 has no snapshots"),
    (["ensemble", "--study", "seeds", "--top", "0"], "--top: must be at least 1, got 0"),
])
def test_cli_ensemble_bad_input_exits_2_and_writes_nothing(trained, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(trained["root"])
    before = len(trained["store"].runs(kind=None))
    assert main([*argv, "--db", trained["db"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trainlab: error: ") and message in err and err.count("\n") == 1
    assert len(trained["store"].runs(kind=None)) == before


def test_cli_train_seeds_trains_members_and_prints_the_ensemble(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", *TINY_SET, "--set", "epochs=2", "--set", "seeds=2", "--set", "seed=4", "--quiet",
            "--db", str(tmp_path / "m.db"), "--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "trained 2 members (seeds 4..5): runs 1, 2" in text
    assert "independent ensemble: val split, 400 examples" in text
    assert "trainlab ensemble --runs 1,2 --split test" in text
    store = Store(tmp_path / "m.db")
    assert [r["seed"] for r in store.runs()] == [4, 5]
    assert main(["train", "--set", "seeds=0", "--db", str(tmp_path / "m.db")]) == 2
    assert "seeds: input should be greater than or equal to 1, got 0" in capsys.readouterr().err
