"""Data-parallel training on torch.distributed: the torchrun environment, DDP, sharding, large-batch rules.

`init()` reads the torchrun environment once and returns a `Dist`; `fit(..., dist=dist)` does the rest;
`cleanup(dist)` ends the process group. Nothing here launches processes or moves bytes itself:
torchrun starts the workers, `torch.distributed` (gloo on CPU, NCCL on CUDA) talks between them.

    dist = init("auto")                     # single process unless started by torchrun
    try:
        fit(task, hp, store=store, dist=dist)
    finally:
        cleanup(dist)

Semantics the loop relies on (and the tests check):

- data: each epoch's order is the stateless `epoch_order(n, seed, epoch)`, the same on every rank; rank r
  takes `order[r::world]` after padding the order to a multiple of `world` with its own first examples,
  as `DistributedSampler(drop_last=False)` does. So every example is seen once per epoch across ranks
  (a padded one twice), in a new order each epoch, and 2 ranks x batch 16 see exactly the examples that
  one process with batch 32 sees, batch for batch.
- decisions: divergence is judged on the per-step losses averaged across ranks (one all-reduce every 50
  steps), so every rank reaches the same verdict at the same step; validation metrics are sums reduced
  across ranks (each rank evaluates its shard), so early stopping agrees too; stops requested by
  callbacks are agreed with `first_decision`. No rank is left waiting in a collective.
- writes: only rank 0 creates the run row, writes metrics and checkpoints and shows progress.
- learning rate: `scale_lr` (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, NoReturn

import torch
import torch.distributed as tdist
from torch import nn

from trainlab.config import Config, ConfigError

__all__ = ["Dist", "init", "cleanup", "wrap_ddp", "shard_order", "shard_size", "shard_tensors", "broadcast_object",
           "mean_across", "reduce_means", "first_decision", "any_rank", "LrScaling", "scale_lr",
           "global_batch_size", "scaled_lr", "BN_MIN_BATCH", "batchnorm_warning", "apply_sync_bn",
           "has_batchnorm", "restarted_run", "joined_group", "exit_process"]

BN_MIN_BATCH = 16  # examples per BatchNorm call below which batch statistics get noisy (Wu & He 2018, Fig. 1)

_joined = False  # this process joined a process group (init): it ends through exit_process


# --- the torchrun environment -------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    """Where this process stands: `ddp` is True under torchrun (even with one process).

    `launch_id` is torchrun's rendezvous id (TORCHELASTIC_RUN_ID): the same for every restart of one
    launch, so a restarted worker group can find the run it was training; None when torchrun has none.
    """

    ddp: bool
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    launch_id: str | None = None
    restart_count: int = 0

    @property
    def main(self) -> bool:
        """True on the one process that writes (rank 0)."""
        return self.rank == 0


def _device(name: str, local_rank: int) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: CUDA is not available on this machine, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init(device: str = "auto", env: Mapping[str, str] | None = None) -> Dist:
    """Read the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, ...) and join the process group.

    Outside torchrun (no RANK/WORLD_SIZE) this is a single process: `Dist(ddp=False)` on `device`.
    Under torchrun each process takes `cuda:LOCAL_RANK` with NCCL when CUDA is used (`device` auto or
    cuda), else the CPU with gloo. `env` defaults to `os.environ`.
    """
    global _joined
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        dev = _device(device, 0)
        return Dist(False, device=torch.device(device) if device.startswith("cuda:") else dev)
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", rank))
    dev = _device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    restart = int(env.get("TORCHELASTIC_RESTART_COUNT", 0))
    if not tdist.is_initialized():
        _joined = True  # before joining: a failed join may leave the group's threads running too
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                 device_id=dev if dev.type == "cuda" else None, store=_attempt_store(env, world, restart))
    launch = env.get("TORCHELASTIC_RUN_ID") or None
    return Dist(True, rank, local_rank, world, dev, None if launch == "none" else launch, restart)


def _attempt_store(env: Mapping[str, str], world: int, restart: int):
    """torchrun's own store with keys scoped to this restart attempt, or None (then env:// as usual).

    Workers share the agent's TCPStore across torchrun restarts, so a restarted group would read the dead
    group's addresses and fail to connect (pytorch/pytorch#135712; still so in torch 2.13 with gloo).
    """
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from torch.distributed.constants import default_pg_timeout

    agent = tdist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False,
                           timeout=default_pg_timeout)
    return tdist.PrefixStore(f"trainlab/attempt-{restart}", agent)


def cleanup(dist: Dist) -> None:
    """Leave the process group that `init` joined (a no-op for a single process).

    This does not stop the group's threads once a model was wrapped in DDP (torch 2.13: the reducer keeps the
    gloo group alive after destroy_process_group); a process that joined a group ends with `exit_process`.
    """
    if dist.ddp and tdist.is_initialized():
        tdist.destroy_process_group()


def joined_group() -> bool:
    """True when this process joined a process group (`init` under torchrun): it must end with `exit_process`."""
    return _joined


def exit_process(code: int, run_atexit: bool = False) -> NoReturn:
    """End this process now with exit status `code`: stdout, stderr and logging flushed (after the atexit
    handlers when `run_atexit`), then `os._exit`.

    For a torchrun worker once its work is stored (fit() has ended the run, its checkpoints and heartbeat
    closed) and `cleanup` ran. The interpreter's teardown is skipped on purpose: DDP keeps the gloo group
    and its threads (collective workers, the TCP loop) alive after destroy_process_group, and a teardown
    racing them (a worker thread releasing the last tensor of a finished collective while the interpreter
    shuts down) aborts the process with SIGABRT, "terminate called without an active exception"; the
    other ranks then see "connection reset" and torchrun counts a failure (a restart spent, or the launch
    failed). Reproduced with two gloo ranks in 3 of 6 launches; none with this exit.
    `trainlab recipe` ends this way too (with its atexit handlers): the teardown of torch's ~2,000 modules
    takes 1-4 s of wall time, which the budget's promise counts and nobody waits on for anything.
    """
    import atexit
    import logging

    if run_atexit:
        atexit._run_exitfuncs()

    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written to it
            pass
    logging.shutdown()
    os._exit(code)


def wrap_ddp(model: nn.Module, dist: Dist) -> nn.Module:
    """`model` wrapped in DistributedDataParallel under torchrun, else `model` itself.

    The loop runs forward/backward through the wrapper and everything else (optimizer, state_dict,
    checkpoints, evaluation) on the plain module, so parameter names never gain a "module." prefix.
    """
    if not dist.ddp:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)


# --- sharding -----------------------------------------------------------------------------------

def shard_size(n: int, world_size: int) -> int:
    """Examples per rank per epoch: ceil(n / world_size) (short shards are padded)."""
    return math.ceil(n / world_size)


def shard_order(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s share of an epoch's order, the way DistributedSampler(drop_last=False) shards.

    The order is padded to a multiple of `world_size` with its own first entries, then rank r takes
    entries r, r + world, r + 2 world, ... Every index appears in exactly one shard (a padded one in two),
    and all shards have the same length, so every rank runs the same number of steps.

    >>> shard_order(torch.arange(5), 1, 2)
    tensor([1, 3, 0])
    """
    if world_size == 1:
        return order
    n = len(order)
    total = shard_size(n, world_size) * world_size
    if total > n:
        order = order.repeat(math.ceil(total / n))[:total]
    return order[rank:total:world_size]


def shard_tensors(tensors: tuple[torch.Tensor, ...], rank: int, world_size: int) -> tuple[torch.Tensor, ...]:
    """Every `world_size`-th example starting at `rank`, unpadded: each example in exactly one shard."""
    return tuple(t[rank::world_size] for t in tensors)


# --- collectives --------------------------------------------------------------------------------

def broadcast_object(dist: Dist, obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (pickled; for small things and resume payloads, not per step)."""
    if not dist.ddp:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src, device=dist.device if dist.device.type == "cuda" else None)
    return box[0]


def mean_across(dist: Dist, values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of `values` over ranks (float32, on the process's device)."""
    if not dist.ddp:
        return values
    out = values.to(dist.device, torch.float32).clone()
    tdist.all_reduce(out)
    return out / dist.world_size


def reduce_means(dist: Dist, means: Mapping[str, float], count: int) -> dict[str, float]:
    """Global means from per-rank means over `count` examples each: sum(mean x count) / sum(count).

    A rank with no examples (count 0) contributes nothing, whatever its (NaN) means.
    """
    if not dist.ddp:
        return dict(means)
    keys = list(means)
    local = [float(means[k]) * count if count else 0.0 for k in keys]
    t = torch.tensor([*local, float(count)], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t)
    total = t[-1].item()
    return {k: (v / total if total else float("nan")) for k, v in zip(keys, t[:-1].tolist())}


def any_rank(dist: Dist, flag: bool) -> bool:
    """True on every rank if `flag` is True on any rank."""
    if not dist.ddp:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def first_decision(dist: Dist, decision: Any) -> Any:
    """The decision of the lowest rank that has one (not None), agreed on every rank; None if none has.

    One 1-element all-reduce when nobody decides; an all-gather of the (small) decisions when someone does.
    """
    if not dist.ddp:
        return decision
    if not any_rank(dist, decision is not None):
        return None
    gathered: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(gathered, decision)
    return next(d for d in gathered if d is not None)


# --- large-batch training -----------------------------------------------------------------------

def global_batch_size(per_device_batch_size: int, world_size: int = 1, accum_steps: int = 1) -> int:
    """Examples per optimizer update: per-device batch x devices x accumulation steps."""
    return per_device_batch_size * world_size * accum_steps


def scaled_lr(lr: float, rule: str, global_batch: int, base_batch: int) -> float:
    """`lr` tuned at `base_batch` moved to `global_batch`.

    linear: lr x k (Goyal et al. 2017); sqrt: lr x sqrt(k) (Krizhevsky 2014; Hoffer et al. 2017);
    none: lr; with k = global_batch / base_batch.

    >>> scaled_lr(0.1, "linear", 8192, 256), scaled_lr(0.1, "sqrt", 1024, 256)
    (3.2, 0.2)
    """
    k = global_batch / base_batch
    if rule == "linear":
        return lr * k
    if rule == "sqrt":
        return lr * math.sqrt(k)
    if rule == "none":
        return lr
    raise ValueError(f"lr_scaling: must be none, linear or sqrt, got {rule!r}")


@dataclass(frozen=True)
class LrScaling:
    """The resolved learning rate of a run: what `hp` asked for and what the loop uses."""

    rule: str
    lr: float
    effective_lr: float
    global_batch_size: int
    base_batch_size: int
    per_device_batch_size: int
    world_size: int
    accum_steps: int
    warmup_steps: int
    warmup_added: bool

    @property
    def lr_scale(self) -> float:
        return self.effective_lr / self.lr

    def summary(self) -> dict[str, Any]:
        """What the run stores in its summary: the numbers, not the recipe."""
        d = asdict(self)
        d.pop("lr")
        d["lr_scaling"] = d.pop("rule")
        return d

    def describe(self) -> str:
        """One line, printed at start: the lr, where it came from, the global batch, the warmup."""
        batch = (f"global batch {self.global_batch_size} = {self.per_device_batch_size} per device x "
                 f"{self.world_size} device{'s' if self.world_size > 1 else ''} x {self.accum_steps} "
                 f"accumulation step{'s' if self.accum_steps > 1 else ''}")
        if self.rule == "none":
            lr = f"lr {self.effective_lr:.4g} (no scaling)"
        else:
            ratio = f"{self.global_batch_size}/{self.base_batch_size}"
            k = ratio if self.rule == "linear" else f"sqrt({ratio})"
            lr = f"lr {self.effective_lr:.4g} = {self.lr:.4g} x {k} ({self.rule} scaling from base batch {self.base_batch_size})"
        warm = f"warmup {self.warmup_steps} updates" + (" (added by lr_scaling)" if self.warmup_added else "")
        return f"{lr}; {batch}; {warm}"


def scale_lr(hp: Config, world_size: int = 1, steps_per_epoch: int = 1) -> LrScaling:
    """Resolve `hp`'s learning rate for `world_size` devices with `steps_per_epoch` optimizer updates.

    The base batch is `hp.base_batch_size`, or `hp.batch_size` (one device, no accumulation) when unset.
    The warmup is the one `hp` sets (warmup_steps / warmup_epochs); when it sets none and lr_scaling is
    on, `scaling_warmup_epochs` epochs' worth of updates are added (Goyal et al.: 5 epochs).

    >>> s = scale_lr(Config(lr=0.1, batch_size=32, lr_scaling="linear", base_batch_size=256), 16, 10)
    >>> s.global_batch_size, round(s.effective_lr, 6), s.warmup_steps
    (512, 0.2, 50)
    """
    gb = global_batch_size(hp.batch_size, world_size, hp.accum_steps)
    base = hp.base_batch_size or hp.batch_size
    explicit = hp.warmup_steps or round(hp.warmup_epochs * steps_per_epoch)
    added = not explicit and hp.lr_scaling != "none" and hp.scaling_warmup_epochs > 0
    warmup = round(hp.scaling_warmup_epochs * steps_per_epoch) if added else explicit
    return LrScaling(hp.lr_scaling, hp.lr, scaled_lr(hp.lr, hp.lr_scaling, gb, base), gb, base, hp.batch_size,
                     world_size, hp.accum_steps, warmup, added and warmup > 0)


# --- BatchNorm policy ---------------------------------------------------------------------------

def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def batchnorm_warning(model: nn.Module, batch_size: int, world_size: int = 1, sync_bn: bool = False) -> str | None:
    """Why BatchNorm will see too few examples per call (< BN_MIN_BATCH), or None.

    By default each device normalizes over its own per-device batch (gradient accumulation does not
    help: BatchNorm sees micro-batches); with sync_bn over the per-device batch x world size.
    """
    if not has_batchnorm(model):
        return None
    seen = batch_size * world_size if (sync_bn and world_size > 1) else batch_size
    if seen >= BN_MIN_BATCH:
        return None
    how = f"{batch_size} per device x {world_size} devices (sync_bn)" if sync_bn and world_size > 1 \
        else f"per-device batch_size {batch_size}"
    return (f"BatchNorm normalizes over {seen} examples ({how}), fewer than {BN_MIN_BATCH}: its batch statistics "
            f"will be noisy; use a larger per-device batch, sync_bn: true on several GPUs, or a model without BatchNorm")


def apply_sync_bn(model: nn.Module, dist: Dist, sync_bn: bool) -> nn.Module:
    """The BatchNorm policy: per-device statistics (the model unchanged) unless `sync_bn`, which converts
    every BatchNorm to SyncBatchNorm when several processes train (one process has nothing to sync).

    SyncBatchNorm runs on CUDA only; asking for it on several CPU processes is a ConfigError.
    """
    if not (sync_bn and dist.ddp and dist.world_size > 1 and has_batchnorm(model)):
        return model
    if dist.device.type != "cuda":
        raise ConfigError(f"sync_bn: SyncBatchNorm needs CUDA devices (NCCL), but this run has {dist.world_size} "
                          f"processes on {dist.device.type} (gloo), got True")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# --- restarts -----------------------------------------------------------------------------------

def restarted_run(dist: Dist, store, runs_dir: str | os.PathLike) -> dict | None:
    """On a torchrun restart, the run that this launch was training: {"id", "status"}, or None.

    Rank 0 looks in `store` for the run whose summary holds this launch's `launch_id` (fit records it)
    and tells every rank. A run that died before its first checkpoint cannot be resumed: it is marked
    failed and None is returned, so the restarted group starts a new run.
    """
    found = None
    if dist.main and dist.ddp and dist.restart_count > 0 and dist.launch_id and store is not None:
        runs = [r for r in store.runs(kind=None) if r["summary"].get("launch_id") == dist.launch_id]
        if runs:
            run = runs[-1]
            if run["status"] in ("running", "lost", "failed") and not (Path(runs_dir) / f"run-{run['id']}" / "last.pt").is_file():
                store.finish_run(run["id"], "failed", reason="the worker group restarted before the first checkpoint")
            else:
                store.update_run(run["id"], summary={"restarts": dist.restart_count})
                found = {"id": run["id"], "status": run["status"]}
    return broadcast_object(dist, found)
