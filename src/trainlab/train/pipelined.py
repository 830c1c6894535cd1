"""The loop's side of pipeline parallelism (`parallel: pipeline` under `trainlab train --nproc K`).

The model's named stages are split across the K processes (`parallel.pipeline.partition`, balanced by
parameter count); every batch goes through them as `pipeline_microbatches` micro-batches (GPipe, via
`torch.distributed.pipelining`), so process r computes only its stages, forward and backward, and the
update equals the unsplit model's on the whole batch. Every process sees every batch (the data is not
sharded: the first stage needs the inputs, the last the targets), in the order one process would see.

What stays as in one process, and how:

- the model object: every process builds the whole model from the seed (identical weights) and trains
  its own stages; the optimizer covers the whole model, and parameters without gradients (the other
  processes' stages) are left alone by torch's optimizers, so each process updates its stages only;
- validation, early stopping, the best weights, checkpoints: before each, `sync()` broadcasts every stage's
  parameters and buffers from the process that trains it, so every process holds the current whole model;
  validation is then sharded and reduced as under DDP, and `gather()` merges the optimizer states (each
  process holds its stages' entries) into rank 0's checkpoint, which has the format of a one-process
  checkpoint: resume, ensembles and transfer read it as they read any other;
- the loss: computed on the last process; `losses()` gives every process the last one's values (one
  broadcast per read, every `steps.DRAIN` steps), so divergence and the stored train/loss agree;
- gradient clipping: the global norm over all stages (one all-reduce per step when clipping).

Costs and limits: every process holds the whole model (memory is not divided; the compute is), and the
weights travel once per validation and per checkpoint. A batch that does not split evenly (the epoch's
short last batch) runs as the largest number of equal micro-batches that divides it, so every update is
exact. BatchNorm normalizes over each micro-batch. EMA, snapshots, gradient accumulation, compile and
mixed precision are not supported with the pipeline yet (a ConfigError says so).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.distributed as tdist
from torch import nn

from trainlab.config import Config, ConfigError
from trainlab.models import stage_names
from trainlab.parallel.ddp import Dist
from trainlab.parallel.pipeline import Pipeline, bubble_fraction, partition, stage_module

__all__ = ["PipelineRun", "check_pipeline"]


def check_pipeline(hp: Config, dist: Dist | None) -> bool:
    """True, or a ConfigError naming the field for what `parallel: pipeline` cannot do (raised before
    anything is stored)."""
    if dist is None or not dist.ddp:
        raise ConfigError("parallel: pipeline splits the model across processes; launch them with "
                          "trainlab train --nproc K, got 'pipeline'")
    for field, bad, why in (("ema", hp.ema is not None, "an EMA of the weights"),
                            ("snapshots", hp.snapshots, "snapshots"),
                            ("accum_steps", hp.accum_steps > 1, "gradient accumulation (raise pipeline_microbatches "
                                                                "and batch_size instead)"),
                            ("compile", hp.compile, "torch.compile"),
                            ("precision", hp.precision in ("bf16", "fp16"), "mixed precision")):
        if bad:
            raise ConfigError(f"{field}: parallel=pipeline does not support {why} yet, "
                              f"got {getattr(hp, field)!r}")
    if hp.batch_size % hp.pipeline_microbatches:
        raise ConfigError(f"pipeline_microbatches: batch_size {hp.batch_size} does not split into "
                          f"{hp.pipeline_microbatches} equal micro-batches; pick a divisor of it, "
                          f"got {hp.pipeline_microbatches}")
    return True


def _microbatches(n: int, most: int) -> int:
    """The largest number of equal micro-batches, at most `most`, that `n` examples split into."""
    return next(m for m in range(min(most, n), 0, -1) if n % m == 0)


class PipelineRun:
    """This process's part of a pipelined `fit`: its stages of `model` in GPipe pipelines (one per batch
    size), the loss shared from the last process, weights synced and states gathered for checkpoints."""

    def __init__(self, model: nn.Module, hp: Config, dist: Dist, loss_fn: Callable, optimizer: torch.optim.Optimizer):
        if hp.label_smoothing:
            loss_fn = functools.partial(loss_fn, label_smoothing=hp.label_smoothing)
        names = stage_names(model)
        try:
            self.parts = partition(model, dist.world_size)
        except ValueError:
            raise ConfigError(f"parallel: the model has {len(names)} stages ({', '.join(names)}), fewer than the "
                              f"{dist.world_size} processes; use --nproc {len(names)} or fewer, got 'pipeline'") from None
        self.model, self.hp, self.dist, self.loss_fn, self.optimizer = model, hp, dist, loss_fn, optimizer
        self.rank, self.world, self.last = dist.rank, dist.world_size, dist.world_size - 1
        self.own = stage_module(model, self.parts[self.rank])  # this process's stages (parameter names as in model)
        self.owner = {name: r for r, part in enumerate(self.parts) for name in part}
        self.pipes: dict[int, Pipeline] = {}
        self.dirty = False  # trained since the last sync

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one batch through the pipeline (gradients into this process's stages);
        the batch's mean loss on the last process, a zero on the others (`losses()` shares it)."""
        n = len(y)
        pipe = self.pipes.get(n)
        if pipe is None:  # the same size on every process at the same step: they build it together
            m = _microbatches(n, self.hp.pipeline_microbatches)
            pipe = self.pipes[n] = Pipeline(self.model, rank=self.rank, world_size=self.world,
                                            device=self.dist.device, loss_fn=self.loss_fn, parts=self.parts,
                                            n_microbatches=m, example=x[:n // m])
        self.dirty = True
        loss = pipe.step(x, y)
        return loss if loss is not None else torch.zeros((), device=self.dist.device)

    def losses(self, values: torch.Tensor) -> torch.Tensor:
        """The last process's per-step losses, on every process (one broadcast)."""
        out = values.to(self.dist.device, torch.float32).contiguous()
        tdist.broadcast(out, src=self.last)
        return out

    def clip(self, max_norm: float) -> torch.Tensor:
        """Clip the gradients of the whole pipelined model to a global L2 norm of `max_norm`; the norm."""
        grads = [p.grad for p in self.own.parameters() if p.grad is not None]
        sq = torch.stack([g.detach().float().pow(2).sum() for g in grads]).sum() if grads \
            else torch.zeros((), device=self.dist.device)
        tdist.all_reduce(sq)
        norm = sq.sqrt()
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
        for g in grads:
            g.mul_(scale.to(g.dtype))
        return norm

    def sync(self) -> None:
        """Every stage's parameters and buffers from the process that trains it, to every process."""
        if not self.dirty:
            return
        with torch.no_grad():
            for name, owner in self.owner.items():
                for t in getattr(self.model, name).state_dict().values():
                    tdist.broadcast(t, src=owner)
        self.dirty = False

    def gather(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(model state, optimizer state) of the whole pipeline on rank 0 ((None, None) elsewhere): a collective."""
        self.sync()
        own = self.optimizer.state_dict()
        states: list | None = [None] * self.world if self.rank == 0 else None
        tdist.gather_object({k: {n: (v.cpu() if torch.is_tensor(v) else v) for n, v in s.items()}
                             for k, s in own["state"].items()}, states, dst=0)
        if self.rank:
            return None, None
        merged: dict = {}
        for part in states:
            merged.update(part)
        return self.model.state_dict(), {"state": merged, "param_groups": own["param_groups"]}

    def summary(self) -> dict[str, Any]:
        m = self.hp.pipeline_microbatches
        return {"parallel": "pipeline", "processes": self.world, "stages": self.parts, "microbatches": m,
                "microbatch_size": self.hp.batch_size // m, "bubble_fraction": bubble_fraction(self.world, m)}

    def describe(self) -> str:
        m = self.hp.pipeline_microbatches
        parts = " | ".join(", ".join(p) for p in self.parts)
        return (f"  pipeline over {self.world} processes: [{parts}], {m} micro-batches of {self.hp.batch_size // m} "
                f"per batch (GPipe; each process idles {bubble_fraction(self.world, m):.0%} of a step)")
