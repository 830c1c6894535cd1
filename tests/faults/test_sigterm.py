"""SIGTERM (Slurm, Kubernetes, docker stop, systemd) stops a run like Ctrl-C, within a grace period: a last
checkpoint at the exact position, the best weights restored, status `stopped`, and a resume that gives the
uninterrupted run's result. Under torchrun (`trainlab train --nproc 2`) every rank stops at the same step."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch

from conftest import TINY_YAML, run_row, trainlab, wait_for
from trainlab.checkpoint import load_checkpoint
from trainlab.store import Store

GRACE_S = 10.0  # the shortest grace period in common use (Kubernetes' default is 30 s, Slurm's KillWait 30 s)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_the_resume_is_exact(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_YAML + "epochs: 6\n")
    db, runs = tmp_path / "t.db", tmp_path / "runs"
    proc = trainlab("train", str(cfg), "--db", str(db), "--runs-dir", str(runs), "--quiet", "--json")
    wait_for(lambda: (run_row(db) or {}).get("epochs", 0) >= 1)
    time.sleep(0.2)  # into epoch 2
    proc.send_signal(signal.SIGSTOP)  # frozen: what the store says now cannot run ahead
    assert run_row(db)["status"] == "running" and run_row(db)["epochs"] < 6
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert took < GRACE_S, f"took {took:.1f} s to stop after SIGTERM"
    result = json.loads(out)
    run = run_row(db)
    assert run["status"] == "stopped" and result["status"] == "stopped"
    step = result["steps"]
    hint = "; resume with: trainlab train --resume 1"
    # mid-epoch: stopped after the update in flight; or, when the signal lands during an epoch's validation,
    # after that epoch (its checkpoint is the last one)
    assert run["reason"] in (f"terminated (SIGTERM) at step {step}{hint}",
                             f"terminated (SIGTERM) after epoch {step // 113}{hint}"), run["reason"]
    assert "after epoch" not in run["reason"] or step % 113 == 0
    last = load_checkpoint(runs / "run-1" / "last.pt")
    # the position to resume from: mid-epoch (epoch, batch); after an epoch's validation (next epoch, 0); and when
    # the signal lands on an epoch's last update, before its validation: (that epoch, 113), so the resume validates it
    at = [(step // 113, step % 113)] + ([(step // 113 - 1, 113)] if step % 113 == 0 and "at step" in run["reason"] else [])
    assert last["step"] == step and (last["epoch"], last["batch"]) in at, (last["epoch"], last["batch"], run["reason"])
    assert Store(db).metrics(1, ["train/loss"])["train/loss"]["step"] == list(range(step))
    best = load_checkpoint(runs / "run-1" / "best.pt")
    assert run["checkpoint"] == str(runs / "run-1" / "best.pt") and run["best_epoch"] == best["early_stopping"]["best_epoch"]
    assert result["test"] is not None, "the best weights were restored and tested"

    resumed = trainlab("train", "--resume", "1", "--db", str(db), "--runs-dir", str(runs), "--quiet")
    # the uninterrupted reference, alongside the resume (it needs nothing of the stop)
    ref = trainlab("train", str(cfg), "--db", str(tmp_path / "ref.db"), "--runs-dir", str(tmp_path / "ref"), "--quiet")
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    out, err = ref.communicate(timeout=240)
    assert ref.returncode == 0, err
    store, ref_store = Store(db), Store(tmp_path / "ref.db")
    assert store.run(1)["status"] == "completed"
    got, want = store.metrics(1, ["train/loss", "lr"]), ref_store.metrics(1, ["train/loss", "lr"])
    assert got["train/loss"]["step"] == list(range(6 * 113)), "every step once"
    assert got["train/loss"]["value"] == want["train/loss"]["value"], "resumed exactly"
    for name in ("last.pt", "best.pt"):
        assert _states_equal(load_checkpoint(runs / "run-1" / name)["model"],
                             load_checkpoint(tmp_path / "ref" / "run-1" / name)["model"]), name


@pytest.mark.slow
def test_sigterm_to_train_nproc_2_stops_every_rank_at_one_step(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_YAML.replace("batch_size: 32", "batch_size: 16") + "epochs: 6\noptimizer: momentum\n")
    db, runs = tmp_path / "t.db", tmp_path / "runs"
    proc = trainlab("train", str(cfg), "--nproc", "2", "--db", str(db), "--runs-dir", str(runs), "--quiet")
    wait_for(lambda: (run_row(db) or {}).get("epochs", 0) >= 1, timeout=240)
    proc.send_signal(signal.SIGTERM)  # the launcher only, as docker stop or systemd would
    sent = time.monotonic()
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    run = run_row(db)
    assert run["status"] == "stopped", (run, err[-3000:])
    assert run["epochs"] < 6
    assert run["reason"].startswith("terminated (SIGTERM)") and "--nproc 2" in run["reason"], run["reason"]
    assert took < 30, f"took {took:.1f} s to stop after SIGTERM"
    print(f"stopped {took:.1f} s after SIGTERM; launcher exit {proc.returncode}; stderr tail:\n{err[-2000:]}")
    last = load_checkpoint(runs / "run-1" / "last.pt")
    loss = Store(db).metrics(1, ["train/loss"])["train/loss"]["step"]
    assert loss == list(range(last["step"])), "rank 0 wrote every step up to the checkpoint, once"

    resumed = trainlab("train", "--resume", "1", "--nproc", "2", "--db", str(db), "--runs-dir", str(runs), "--quiet")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    run = run_row(db)
    assert run["status"] == "completed"
    assert Store(db).metrics(1, ["train/loss"])["train/loss"]["step"] == list(range(6 * 113))


SIGTERM_AT_THE_ROW = """
import os, signal, sys
from trainlab import Config, fit, load_task
from trainlab.store import Store

class TermAtTheRow(Store):
    '''A SIGTERM the moment the run's row is written (created, or claimed by a resume), before any update.'''
    def create_run(self, *a, **k):
        run = super().create_run(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        return run

    def claim_run(self, *a, **k):
        super().claim_run(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)

db, runs = sys.argv[1], sys.argv[2]
hp = Config(task="digits", model="mlp", width=8, batch_size=64, epochs=2)
first = fit(load_task(hp), hp, store=TermAtTheRow(db), runs_dir=runs, quiet=True)
again = fit(load_task(hp), hp, store=TermAtTheRow(db), runs_dir=runs, quiet=True, resume=first.run_id)
print(first.status, first.steps, again.status, again.steps)
"""


@pytest.mark.slow
def test_a_sigterm_as_soon_as_the_row_exists_stops_the_run_it_does_not_lose_it(tmp_path):
    """The handler is in place before the run's row is written (fresh) or claimed (resume): a SIGTERM in
    that window is a clean stop at the first update, not a dead process whose run later reads `lost`."""
    import subprocess
    import sys

    db, runs = tmp_path / "t.db", tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_AT_THE_ROW, str(db), str(runs)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, first_steps, again, again_steps = proc.stdout.split()
    assert (first, again) == ("stopped", "stopped") and int(first_steps) == 1 and int(again_steps) == 2
    row = Store(db).run(1)
    assert row["status"] == "stopped" and "SIGTERM" in row["reason"]
