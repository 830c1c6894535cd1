"""Data-parallel and large-batch training on real processes: DDP over gloo on 2 CPU ranks (forked from the
test process, with the environment torchrun gives its workers), the real `trainlab train --nproc 2` under
torchrun with a worker killed mid-run, GPipe pipeline parallelism, and the pure arithmetic (sharding,
lr scaling, warmup, BatchNorm policy)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from trainlab.cli import main
from trainlab.cli.launch import torchrun_command
from trainlab.config import Config, ConfigError, make_config
from trainlab.parallel.ddp import (BN_MIN_BATCH, Dist, apply_sync_bn, batchnorm_warning, cleanup, init, scale_lr,
                                   scaled_lr, shard_order)
from trainlab.models import build_model
from trainlab.optim import param_groups
from trainlab.parallel.pipeline import Pipeline, bubble_fraction, partition
from trainlab.store import Store
from trainlab.tasks import load_task
from trainlab.train import Stop, epoch_order, fit, load_checkpoint, lr_schedule

# SGD with momentum, no BatchNorm, no dropout: DDP and accumulation must match the big batch to 1e-5
EXACT = dict(model="mlp", width=32, optimizer="momentum", lr=0.05, schedule="cosine", monitor_every=0)
STEPS = 130  # more than one epoch of 113 updates at global batch 32: crosses the reshuffle and the short last batch


@pytest.fixture(scope="module")
def task():
    return load_task(Config(**EXACT))


# --- running ranks as real processes ------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, fn, port: int, world: int, out: str, args: tuple) -> None:
    # the environment torchrun gives each worker; init() reads it like under torchrun
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist = init("cpu")
    try:
        result = fn(dist, *args)
    finally:
        cleanup(dist)
    torch.save(result, Path(out) / f"rank{rank}.pt")


def run_ranks(fn, *args, tmp_path: Path, world: int = 2, timeout: float = 120.0) -> list:
    """Run fn(dist, *args) on `world` forked processes joined over gloo; their return values, by rank.

    Fails (instead of hanging) if any rank is still waiting after `timeout` seconds: the collective
    decisions under test are exactly what keeps ranks from waiting forever.
    """
    out = tmp_path / f"ranks-{time.monotonic_ns()}"
    out.mkdir()
    ctx = mp.start_processes(_rank_entry, args=(fn, _free_port(), world, str(out), args), nprocs=world,
                             join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"ranks still running after {timeout} s: a rank is waiting on a collective")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _fit_rank(dist: Dist, hp: Config, db: str, runs: str, callbacks=()):
    store = Store(db) if dist.rank == 0 else None
    result = fit(load_task(hp), hp, store=store, runs_dir=runs, quiet=True, dist=dist, callbacks=callbacks)
    return {"status": result.status, "reason": result.reason, "steps": result.steps, "run_id": result.run_id,
            "history": result.history, "model": result.model.state_dict(), "test": result.test}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# --- sharding -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n,world", [(3600, 2), (3601, 2), (10, 3), (2, 3)])
def test_shards_cover_the_dataset_once_per_epoch_and_reshuffle(n, world):
    orders = [epoch_order(n, 0, e) for e in range(3)]
    for order in orders:
        shards = [shard_order(order, r, world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1, "every rank runs the same number of steps"
        seen = torch.cat(shards)
        assert set(seen.tolist()) == set(range(n)), "every example is seen in the epoch"
        padding = len(seen) - n
        assert 0 <= padding < world and torch.bincount(seen, minlength=n).max() <= 1 + (padding > 0)
        if padding == 0:
            assert sorted(seen.tolist()) == list(range(n)), "exactly once when n divides"
        for r in range(world):  # oracle: DistributedSampler (drop_last=False) over the epoch's order
            sampler = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False)
            assert shards[r].tolist() == order[list(sampler)].tolist()
    if n > world:
        for r in range(world):
            assert shard_order(orders[0], r, world).tolist() != shard_order(orders[1], r, world).tolist(), \
                "a new order each epoch"


# --- large-batch arithmetic ---------------------------------------------------------------------

def test_lr_scaling_and_warmup_arithmetic():
    hp = Config(lr=0.1, batch_size=32, lr_scaling="linear", base_batch_size=256, accum_steps=4)
    s = scale_lr(hp, world_size=8, steps_per_epoch=10)
    assert s.global_batch_size == 32 * 8 * 4 == 1024
    assert s.effective_lr == pytest.approx(0.4) and s.lr_scale == pytest.approx(4.0)
    assert s.warmup_steps == 50 and s.warmup_added, "5 epochs' worth of updates by default"
    assert scale_lr(hp.model_copy(update={"lr_scaling": "sqrt"}), 8, 10).effective_lr == pytest.approx(0.2)
    assert scale_lr(hp.model_copy(update={"lr_scaling": "none"}), 8, 10).effective_lr == 0.1
    assert scale_lr(hp.model_copy(update={"lr_scaling": "none"}), 8, 10).warmup_steps == 0
    assert scale_lr(hp.model_copy(update={"warmup_steps": 7}), 8, 10).warmup_steps == 7, "an explicit warmup wins"
    assert scale_lr(hp.model_copy(update={"scaling_warmup_epochs": 0.0}), 8, 10).warmup_steps == 0
    assert scale_lr(hp.model_copy(update={"scaling_warmup_epochs": 2.5}), 8, 10).warmup_steps == 25
    base_default = scale_lr(Config(lr=0.01, batch_size=64, lr_scaling="linear"), 4, 10)
    assert base_default.base_batch_size == 64 and base_default.effective_lr == pytest.approx(0.04)
    assert scaled_lr(0.1, "linear", 8192, 256) == pytest.approx(3.2), "Goyal et al.: 0.1 per 256 -> 3.2 at 8k"

    # the schedule the loop follows: the peak after warmup is the scaled lr, warmup counted in updates
    big = Config(lr=0.01, batch_size=256, lr_scaling="linear", base_batch_size=32, epochs=30, schedule="cosine")
    factor, total, warmup = lr_schedule(big, steps_per_epoch=15)
    assert (total, warmup) == (450, 75)
    assert big.lr * factor(warmup) == pytest.approx(0.08)
    assert big.lr * factor(0) == pytest.approx(0.08 / 75), "linear warmup from lr/warmup"
    assert big.lr * factor(37) < big.lr * factor(73) < big.lr * factor(74) == pytest.approx(0.08)
    with pytest.raises(ConfigError, match=r"scaling_warmup_epochs: the warmup that lr_scaling=linear adds is 75 "
                                          r"updates, not fewer than the run's 20"):
        lr_schedule(big.model_copy(update={"steps": 20}), 15)
    with pytest.raises(ConfigError, match=r"lr_scaling: input should be 'none', 'linear' or 'sqrt', got 'cubic'"):
        make_config({"lr_scaling": "cubic"})
    with pytest.raises(ConfigError, match=r"accum_steps: input should be greater than or equal to 1, got 0"):
        make_config({"accum_steps": 0})
    with pytest.raises(ConfigError, match=r"base_batch_size: input should be greater than or equal to 1, got 0"):
        make_config({"base_batch_size": 0})


def test_the_resolved_lr_is_stored_and_logged(task, tmp_path):
    hp = Config(**EXACT, batch_size=64, accum_steps=2, lr_scaling="sqrt", base_batch_size=32, steps=40,
                scaling_warmup_epochs=0.25)
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, runs_dir=tmp_path / "runs", quiet=True)
    summary = store.run(result.run_id)["summary"]
    assert summary["global_batch_size"] == 128 and summary["effective_lr"] == pytest.approx(0.1)
    assert summary["lr_scaling"] == "sqrt" and summary["warmup_steps"] == 7 and summary["warmup_added"]
    lrs = store.metrics(result.run_id, ["lr"])["lr"]["value"]
    assert max(lrs) == pytest.approx(0.1) and lrs[0] == pytest.approx(0.1 / 7)
    assert store.run(result.run_id)["hparams"]["lr"] == 0.05, "the run keeps the config as given"


# --- gradient accumulation ----------------------------------------------------------------------

def test_accumulation_of_2x16_equals_one_batch_of_32(task, tmp_path):
    big = fit(task, Config(**EXACT, batch_size=32, steps=STEPS), quiet=True, evaluate_test=False)
    acc = fit(task, Config(**EXACT, batch_size=16, accum_steps=2, steps=STEPS), quiet=True, evaluate_test=False)
    assert acc.steps == big.steps == STEPS
    assert _max_diff(acc.model.state_dict(), big.model.state_dict()) < 1e-5
    assert acc.history["val/acc"] == pytest.approx(big.history["val/acc"], abs=1e-6)
    plain = fit(task, Config(**EXACT, batch_size=16, steps=STEPS), quiet=True, evaluate_test=False)
    assert _max_diff(plain.model.state_dict(), big.model.state_dict()) > 1e-3, "the test can tell batches apart"


# --- DDP ----------------------------------------------------------------------------------------

def test_ddp_2x16_equals_one_process_with_batch_32_and_writes_once(task, tmp_path):
    hp2 = Config(**EXACT, batch_size=16, steps=STEPS)
    db, runs = tmp_path / "ddp.db", tmp_path / "runs"
    ranks = run_ranks(_fit_rank, hp2, str(db), str(runs), tmp_path=tmp_path)
    one = fit(task, Config(**EXACT, batch_size=32, steps=STEPS), store=Store(tmp_path / "one.db"),
              runs_dir=tmp_path / "one", quiet=True)

    assert [r["status"] for r in ranks] == ["completed", "completed"] and ranks[0]["steps"] == STEPS
    assert ranks[0]["run_id"] == ranks[1]["run_id"] == 1
    assert _max_diff(ranks[0]["model"], ranks[1]["model"]) == 0, "DDP keeps the replicas identical"
    ddp_last = load_checkpoint(runs / "run-1" / "last.pt")["model"]
    one_last = load_checkpoint(tmp_path / "one" / f"run-{one.run_id}" / "last.pt")["model"]
    assert _max_diff(ddp_last, one_last) < 1e-5
    # validation is reduced across ranks: the same numbers as one process on the whole split
    assert ranks[0]["history"]["val/acc"] == pytest.approx(one.history["val/acc"], abs=1e-6)
    assert ranks[0]["history"]["val/loss"] == pytest.approx(one.history["val/loss"], abs=1e-5)
    assert ranks[1]["history"]["val/acc"] == ranks[0]["history"]["val/acc"]

    store = Store(db)
    (run,) = store.runs()
    assert run["status"] == "completed" and run["summary"]["world_size"] == 2
    assert run["summary"]["global_batch_size"] == 32 and run["summary"]["test/acc"] == ranks[0]["test"]["acc"]
    assert ranks[1]["test"] is None, "only rank 0 evaluates the test split and reports"
    loss = store.metrics(1, ["train/loss"])["train/loss"]
    assert loss["step"] == list(range(STEPS)), "one train/loss per step, not one per rank"
    assert sorted(p.name for p in runs.iterdir()) == ["run-1"]
    assert sorted(p.name for p in (runs / "run-1").iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(runs / "run-1" / "last.pt")["step"] == STEPS
    with pytest.raises(ConfigError, match=r"resume: run 1 was trained by 2 process\(es\); resume it with as many"):
        fit(task, hp2, store=store, resume=1, runs_dir=runs, quiet=True)
    assert store.run(1)["status"] == "completed", "a refused resume leaves the run as it was"


class _StopOnRank1:
    """A callback that asks to stop on one rank only: every rank must stop at that step, none hang."""

    def __init__(self, rank: int, at: int):
        self.rank, self.at = rank, at

    def on_step_end(self, state):
        if state.rank == self.rank and state.step == self.at:
            return Stop("stopped", f"rank {state.rank} asked at step {state.step}")

    def on_epoch_end(self, state):
        return None

    def on_fit_end(self, state):
        pass


def _fit_with_stop(dist: Dist, hp: Config, db: str, runs: str):
    return _fit_rank(dist, hp, db, runs, callbacks=[_StopOnRank1(1, 7)])


def test_ddp_stop_decisions_are_collective(tmp_path):
    # divergence: judged on losses averaged across ranks, so both ranks stop at the same step
    hot = Config(**{**EXACT, "lr": 50.0, "optimizer": "sgd"}, batch_size=16, epochs=2)
    ranks = run_ranks(_fit_rank, hot, str(tmp_path / "d.db"), str(tmp_path / "d"), tmp_path=tmp_path)
    assert [r["status"] for r in ranks] == ["diverged", "diverged"]
    assert ranks[0]["steps"] == ranks[1]["steps"] and ranks[0]["reason"] == ranks[1]["reason"]
    (run,) = Store(tmp_path / "d.db").runs()
    assert run["status"] == "diverged" and run["reason"].startswith("loss became")

    # early stopping: only the first validation can improve by 0.5
    patient = Config(**EXACT, batch_size=16, epochs=6, patience=1, min_delta=0.5)
    ranks = run_ranks(_fit_rank, patient, str(tmp_path / "e.db"), str(tmp_path / "e"), tmp_path=tmp_path)
    assert [len(r["history"]["val/acc"]) for r in ranks] == [2, 2]
    assert ranks[0]["reason"].startswith("stopped early") and ranks[1]["reason"] == ranks[0]["reason"]

    # a callback on rank 1 alone stops both ranks at its step
    ranks = run_ranks(_fit_with_stop, Config(**EXACT, batch_size=16, epochs=2), str(tmp_path / "c.db"),
                      str(tmp_path / "c"), tmp_path=tmp_path)
    assert [(r["status"], r["steps"]) for r in ranks] == [("stopped", 7), ("stopped", 7)]
    assert Store(tmp_path / "c.db").run(1)["reason"] == "rank 1 asked at step 7"


def test_a_time_fit_under_ddp_is_rank_0s_and_every_rank_trains_its_length(tmp_path):
    # 2000 epochs cannot train in 9 s: after epoch 1 rank 0's fit is broadcast, so both ranks train the same
    # fitted schedule and stop together (a rank that fitted its own length would leave the other waiting)
    hp = Config(**EXACT, batch_size=16, epochs=2000, minutes=0.15)
    ranks = run_ranks(_fit_rank, hp, str(tmp_path / "m.db"), str(tmp_path / "m"), tmp_path=tmp_path)
    assert ranks[0]["steps"] == ranks[1]["steps"] and [r["status"] for r in ranks] == ["completed"] * 2
    (run,) = Store(tmp_path / "m.db").runs()
    assert "fitted" in run["summary"], (run["status"], run["reason"], run["epochs"])
    fitted = run["summary"]["fitted"]
    assert fitted["updates"] < fitted["planned_updates"] == 2000 * 113
    assert ranks[0]["steps"] == fitted["updates"] or ranks[0]["reason"] == "the 0.15-minute limit reached"


def test_a_validation_split_smaller_than_the_world_size(task, tmp_path):
    """One validation example on 2 ranks: rank 1's shard is empty, and its NaN means weigh nothing."""
    hp = Config(**EXACT, batch_size=16, epochs=1, val_fraction=1e-4)
    ranks = run_ranks(_fit_rank, hp, str(tmp_path / "v.db"), str(tmp_path / "v"), tmp_path=tmp_path)
    accs = [r["history"]["val/acc"] for r in ranks]
    assert accs[0] == accs[1] and accs[0][0] in (0.0, 1.0), "both ranks judge the one example alike"
    assert [r["status"] for r in ranks] == ["completed", "completed"]


# --- BatchNorm policy ---------------------------------------------------------------------------

def test_batchnorm_policy():
    resnet = build_model("resnet", (1, 40), 10, width=8)
    mlp = build_model("mlp", (1, 40), 10, width=8)
    assert batchnorm_warning(mlp, 4) is None, "no BatchNorm, nothing to warn about"
    assert batchnorm_warning(resnet, BN_MIN_BATCH) is None
    msg = batchnorm_warning(resnet, 8, world_size=4)
    assert msg.startswith("BatchNorm normalizes over 8 examples (per-device batch_size 8), fewer than 16")
    assert batchnorm_warning(resnet, 8, world_size=4, sync_bn=True) is None, "SyncBatchNorm sees 8 x 4"
    with pytest.warns(UserWarning, match=r"BatchNorm normalizes over 8 examples"):
        fit(None, Config(model="resnet", width=8, batch_size=8, steps=2, monitor_every=0), quiet=True,
            evaluate_test=False)
    cpu2 = Dist(True, rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"sync_bn: SyncBatchNorm needs CUDA devices \(NCCL\), but this run has 2 "
                                          r"processes on cpu \(gloo\), got True"):
        apply_sync_bn(resnet, cpu2, True)
    assert apply_sync_bn(resnet, cpu2, False) is resnet, "per-device statistics by default"
    assert apply_sync_bn(resnet, Dist(False), True) is resnet, "one process: nothing to synchronize"
    # no weight decay on BatchNorm and bias parameters
    groups = param_groups(resnet, 0.1, 5e-4)
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    bn_and_bias = {n for n, p in resnet.named_parameters() if p.ndim < 2}
    assert no_decay == bn_and_bias and any(".bn1." in n for n in no_decay)


# --- pipeline parallelism -----------------------------------------------------------------------

def _pipeline_rank(dist: Dist, n_micro: int):
    torch.manual_seed(0)
    model = build_model("mlp", (1, 40), 10, width=64)
    x, y = torch.randn(32, 1, 40), torch.randint(0, 10, (32,))
    reference = nn.functional.cross_entropy(model(x), y)  # the unsplit model, on every rank
    reference.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    pipe = Pipeline(model, rank=dist.rank, world_size=dist.world_size, device=dist.device, n_microbatches=n_micro)
    loss = pipe.step(x, y)
    got = {f"{stage}.{n}": p.grad.clone() for stage in pipe.parts[dist.rank]
           for n, p in getattr(model, stage).named_parameters()}
    return {"parts": pipe.parts, "loss": loss, "reference": reference.detach(),
            "grad_diff": max((got[n] - want[n]).abs().max().item() for n in got), "grads": len(got)}


def test_gpipe_on_2_ranks_matches_the_unsplit_model(tmp_path):
    ranks = run_ranks(_pipeline_rank, 4, tmp_path=tmp_path)
    assert ranks[0]["parts"] == [["stage1"], ["stage2", "head"]]
    assert ranks[0]["loss"] is None and ranks[1]["loss"] == pytest.approx(ranks[1]["reference"].item(), abs=1e-6)
    assert ranks[0]["grads"] == 2 and ranks[1]["grads"] == 4
    assert ranks[0]["grad_diff"] < 1e-6 and ranks[1]["grad_diff"] < 1e-6
    assert bubble_fraction(2, 4) == pytest.approx(0.2) and bubble_fraction(2, 1) == 0.5
    with pytest.raises(ValueError, match=r"n_parts: must be between 1 and the model's 3 stages"):
        partition(build_model("mlp", (1, 40), 10), 4)


# --- the command line: torchrun, restarts -------------------------------------------------------

def test_nproc_relaunches_the_same_command_under_torchrun(tmp_path, capsys):
    cmd = torchrun_command(["train", "c.yaml", "--nproc", "2", "--set", "lr=0.1", "--max-restarts=3", "--quiet"], 2, 3)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--max-restarts=3", "-m", "trainlab",
                       "train", "c.yaml", "--set", "lr=0.1", "--quiet"]
    assert main(["train", "--max-restarts", "2", "--db", str(tmp_path / "t.db")]) == 2
    assert "--max-restarts: only with --nproc K" in capsys.readouterr().err
    assert main(["train", "--nproc", "0", "--db", str(tmp_path / "t.db")]) == 2
    assert "--nproc: must be at least 1, got 0" in capsys.readouterr().err
    assert main(["train", "--nproc", "2", "--set", "lr_scaling=cube", "--db", str(tmp_path / "t.db")]) == 2
    assert "lr_scaling: input should be" in capsys.readouterr().err
    assert main(["train", "--nproc", "2", "--set", "seeds=3", "--db", str(tmp_path / "t.db")]) == 2
    assert "--nproc: trains one run data-parallel, not an ensemble of seeds; got seeds=3" in capsys.readouterr().err
    assert not (tmp_path / "t.db").exists(), "bad input writes nothing"


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _worker(root: int, rank: int) -> int | None:
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            env = []
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env):
            return pid
        todo += _children(pid)
    return None


@pytest.mark.slow
def test_train_nproc_2_survives_a_killed_worker_with_max_restarts(task, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: mlp\nwidth: 32\noptimizer: momentum\nlr: 0.05\nmonitor_every: 0\nbatch_size: 16\n"
                   "epochs: 4\n")
    db, runs = tmp_path / "t.db", tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", str(cfg), "--nproc", "2", "--max-restarts",
                             "1", "--db", str(db), "--runs-dir", str(runs), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, store = time.monotonic() + 240, None
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                store = store or Store(db)
                if store.runs() and store.runs()[0]["epochs"] >= 1:
                    break
            time.sleep(0.05)
        victim = _worker(proc.pid, 1)
        assert victim is not None, "the run ended before a worker could be killed"
        os.kill(victim, signal.SIGSTOP)  # frozen, the group cannot finish an epoch: check, then kill
        assert proc.poll() is None and store.runs()[0]["epochs"] < 4
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    (run,) = Store(db).runs()
    assert run["status"] == "completed" and run["epochs"] == 4 and run["summary"]["restarts"] == 1
    loss = Store(db).metrics(run["id"], ["train/loss"])["train/loss"]
    assert loss["step"] == list(range(4 * 113)), "resumed: every step once"
    # the restarted group resumed exactly: the result equals one uninterrupted process with the global batch
    one = fit(task, Config(model="mlp", width=32, optimizer="momentum", lr=0.05, monitor_every=0, batch_size=32,
                           epochs=4),
              store=Store(tmp_path / "one.db"), runs_dir=tmp_path / "one", quiet=True, evaluate_test=False)
    got = load_checkpoint(runs / f"run-{run['id']}" / "last.pt")["model"]
    want = load_checkpoint(tmp_path / "one" / f"run-{one.run_id}" / "last.pt")["model"]
    assert _max_diff(got, want) < 1e-5
