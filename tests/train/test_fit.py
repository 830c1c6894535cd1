"""The one training loop on real (tiny) trainings: storage, schedule, early stopping, best weights,
divergence, Ctrl-C, exact resume after SIGKILL, atomic checkpoints."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from trainlab.config import Config
from trainlab.store import Store
from trainlab.train import CheckpointError, Stop, fit, load_checkpoint, lr_schedule, save_checkpoint
import helpers
from helpers import InterruptAt

TINY = dict(helpers.TINY, batch_size=64, monitor_every=50)  # 57 updates per epoch, monitors on


@pytest.fixture(scope="module")
def task(tiny_task):
    return tiny_task


def test_fit_stores_every_step_and_follows_the_schedule(task, tmp_path):
    hp = Config(**TINY, epochs=3, lr=3e-3, warmup_steps=10, schedule="cosine")
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs")
    assert result.status == "completed" and result.epochs == 3
    assert result.best_metric > 0.2, "a 3-epoch MLP on mnist1d is above chance (0.1)"
    m = store.metrics(result.run_id)
    steps = m["train/loss"]["step"]
    assert steps == list(range(result.steps)) and result.steps == 3 * 57
    factor, total, warmup = lr_schedule(hp, 57)
    assert m["lr"]["value"] == pytest.approx([3e-3 * factor(s) for s in steps], rel=1e-12)
    assert m["lr"]["value"][0] == pytest.approx(3e-3 / 10)
    assert m["val/acc"]["epoch"] == [1, 2, 3] and len(m["train/acc"]["value"]) == 3
    assert any(k.startswith("ratio/") for k in m) and "grad_norm" in m
    run = store.run(result.run_id)
    assert run["status"] == "completed" and run["epochs"] == 3 and run["summary"]["test/acc"] == result.test["acc"]
    best = load_checkpoint(run["checkpoint"])
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, best["model"][key])


def test_early_stopping_restores_the_best_weights(task, tmp_path):
    hp = Config(**TINY, epochs=10, patience=2, min_delta=0.5)  # only the first validation can improve by 0.5
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs")
    assert result.status == "completed" and result.epochs == 3 and result.best_epoch == 1
    assert result.reason.startswith("stopped early: val/acc did not improve for 2 validations")
    run_dir = tmp_path / "runs" / f"run-{result.run_id}"
    best, last = load_checkpoint(run_dir / "best.pt"), load_checkpoint(run_dir / "last.pt")
    assert best["epoch"] == 1 and last["epoch"] == 3
    state = result.model.state_dict()
    assert all(torch.equal(state[k], best["model"][k]) for k in state)
    assert not all(torch.equal(state[k], last["model"][k]) for k in state)
    assert last["early_stopping"] == {"best": result.best_metric, "best_epoch": 1, "bad_checks": 2}


def test_divergence_stops_at_once_with_a_reason(task, tmp_path):
    hp = Config(**TINY, epochs=5, optimizer="sgd", lr=50.0, schedule="constant")
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs")
    assert result.status == "diverged" and result.epochs == 0
    assert result.reason and "at step" in result.reason and "(lr 50)" in result.reason
    assert "learning rate too high" in result.reason
    assert store.run(result.run_id)["status"] == "diverged"
    assert result.steps <= 57, "the run must stop within the first epoch"




def test_ctrl_c_restores_best_weights_and_records_stopped(task, tmp_path):
    hp = Config(**TINY, epochs=5)
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs", callbacks=[InterruptAt(130)])
    assert result.status == "stopped" and "interrupted at step 130" in result.reason
    assert "trainlab train --resume" in result.reason
    best = load_checkpoint(tmp_path / "runs" / f"run-{result.run_id}" / "best.pt")
    assert best["epoch"] == 2
    assert all(torch.equal(v, best["model"][k]) for k, v in result.model.state_dict().items())
    assert result.test is not None
    assert len(store.metrics(result.run_id, ["train/loss"])["train/loss"]["value"]) == 130


class _PruneAt:
    def on_step_end(self, state):
        return None

    def on_epoch_end(self, state):
        state.metrics["custom"] = 1.0
        return Stop("pruned", "told to stop") if state.epoch == 1 else None

    def on_fit_end(self, state):
        return None


def test_callbacks_add_metrics_and_stop_with_a_status(task, tmp_path):
    store = Store(tmp_path / "t.db")
    result = fit(task, Config(**TINY, epochs=5), store=store, quiet=True, runs_dir=tmp_path / "r",
                 callbacks=[_PruneAt()], evaluate_test=False)
    assert (result.status, result.reason, result.epochs, result.test) == ("pruned", "told to stop", 2, None)
    assert store.metrics(result.run_id, ["custom"])["custom"]["value"] == [1.0, 1.0]


def _trainlab(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "trainlab", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("mid_epoch", [False, True], ids=["epoch-checkpoints", "mid-epoch-checkpoints"])
def test_resume_after_sigkill_is_exact(tmp_path, mid_epoch):
    cfg = tmp_path / "c.yaml"
    epochs = 8  # enough left after epoch 1 that a fast machine cannot finish before the kill lands
    lines = ["model: mlp", "width: 32", "dropout: 0.2", f"epochs: {epochs}", "seed: 3", "batch_size: 32"]
    if mid_epoch:
        lines.append("checkpoint_every_minutes: 0.001")
    cfg.write_text("\n".join(lines) + "\n")
    db, runs = tmp_path / "kill.db", tmp_path / "kill"
    victim = _trainlab("train", str(cfg), "--db", str(db), "--runs-dir", str(runs), "--quiet")
    deadline = time.monotonic() + 120
    store = None
    while time.monotonic() < deadline:
        if db.exists():
            store = store or Store(db)
            runs_now = store.runs()
            if runs_now and runs_now[0]["epochs"] >= 1:
                break
        time.sleep(0.01)
    time.sleep(0.1)  # into epoch 2, past a mid-epoch checkpoint when those are on
    victim.send_signal(signal.SIGSTOP)
    assert store.run(1)["status"] == "running" and store.run(1)["epochs"] < epochs
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    resumed = _trainlab("train", "--resume", "1", "--db", str(db), "--runs-dir", str(runs), "--quiet")
    # the uninterrupted reference, alongside the resume (it needs nothing of the kill)
    ref = _trainlab("train", str(cfg), "--db", str(tmp_path / "ref.db"), "--runs-dir", str(tmp_path / "ref"), "--quiet")
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out
    out, _ = ref.communicate(timeout=240)
    assert ref.returncode == 0, out

    ref_store = Store(tmp_path / "ref.db")
    assert store.run(1)["status"] == "completed" and store.run(1)["epochs"] == epochs
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(tmp_path / "ref" / "run-1" / name), load_checkpoint(runs / "run-1" / name)
        assert _states_equal(a["model"], b["model"]), name
    got, want = store.metrics(1, ["lr", "train/loss"]), ref_store.metrics(1, ["lr", "train/loss"])
    assert got["lr"]["step"] == want["lr"]["step"] == list(range(epochs * 113))
    assert got["lr"]["value"] == want["lr"]["value"], "the lr after resume must equal the uninterrupted run's"
    assert got["train/loss"]["value"] == want["train/loss"]["value"]
    assert store.run(1)["best_metric"] == ref_store.run(1)["best_metric"]


_WRITER = """
import sys, torch
from trainlab.checkpoint import save_checkpoint
print("writing", flush=True)
save_checkpoint({"model": {"w": torch.ones(60_000_000)}, "step": 2}, sys.argv[1])
"""


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(3)}, "step": 1}, path)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".last.pt.") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    state = load_checkpoint(path)
    assert state["step"] in (1, 2)
    if state["step"] == 1:
        assert torch.equal(state["model"]["w"], torch.zeros(3))
    else:  # the write won the race: then it must be complete
        assert state["model"]["w"].shape == (60_000_000,)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_load_only_safely(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match=r"cannot load '.*evil.pt' safely"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"no such file '.*nothing.pt'"):
        load_checkpoint(tmp_path / "nothing.pt")
    half = tmp_path / "half.pt"
    save_checkpoint({"w": torch.ones(1000)}, half)
    half.write_bytes(half.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(half)


class NaNAt(torch.nn.Module):
    """The task's model, whose output turns NaN on its `at`-th training forward (update `at`, 0-based)."""

    def __init__(self, inner, at):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            if self.calls == self.at:
                out = out * float("nan")
            self.calls += 1
        return out


@pytest.mark.parametrize("at", [0, 73, 149])
def test_a_nan_loss_is_named_on_its_own_step_and_the_run_stops_at_the_next_drain(task, tmp_path, at):
    from trainlab.train.steps import DRAIN

    torch.manual_seed(0)
    hp = Config(**TINY, epochs=3, schedule="cosine", warmup_steps=20)
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, quiet=True, checkpoints=False, model=NaNAt(task.build_model(), at))
    assert result.status == "diverged"
    assert f"loss became NaN at step {at} (lr " in result.reason
    lr = store.metrics(result.run_id, ["lr"])["lr"]
    assert f"(lr {lr['value'][lr['step'].index(at)]:.3g})" in result.reason
    assert at < result.steps <= at + DRAIN   # stopped at the next drain: at most DRAIN - 1 updates after the bad one
