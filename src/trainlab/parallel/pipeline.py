"""Pipeline (model) parallelism: a sequential model's named stages split across ranks, fed micro-batches.

Split naively, rank 1 waits while rank 0 computes and rank 0 waits during the backward pass: with p
stages only one device works at a time. GPipe (Huang et al. 2019) cuts each batch into m micro-batches
and streams them through the stages, so the devices idle only for the fill and drain of the pipeline,
a fraction (p - 1) / (m + p - 1) of the time (`bubble_fraction`). Gradients of the m micro-batches
accumulate before one optimizer step, so the update equals the unsplit model's on the whole batch.

This module plans the split and wraps `torch.distributed.pipelining` (`PipelineStage`, `ScheduleGPipe`);
it builds no communication of its own. Every rank runs the same script:

    dist = trainlab.distributed.init("cpu")                  # under torchrun, 2 processes
    pipe = Pipeline(model, rank=dist.rank, world_size=dist.world_size, device=dist.device, n_microbatches=4)
    opt = torch.optim.SGD(pipe.module.parameters(), lr=0.1)  # this rank's stages only
    for x, y in batches:                                     # same-sized batches on every rank
        opt.zero_grad()
        loss = pipe.step(x, y)                               # the batch's mean loss on the last rank, else None
        opt.step()
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.models import stage_names

__all__ = ["partition", "stage_module", "bubble_fraction", "Pipeline"]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def partition(model: nn.Module, n_parts: int, cost: Callable[[nn.Module], float] = _params) -> list[list[str]]:
    """The model's named stages in `n_parts` contiguous groups, minimizing the largest group's `cost`
    (default: parameter count), so no rank holds most of the model.

    >>> m = nn.Sequential(OrderedDict(a=nn.Linear(10, 100), b=nn.Linear(100, 100), c=nn.Linear(100, 10)))
    >>> partition(m, 2)
    [['a'], ['b', 'c']]
    """
    names = stage_names(model)
    if not 1 <= n_parts <= len(names):
        raise ValueError(f"n_parts: must be between 1 and the model's {len(names)} stages ({', '.join(names)}), "
                         f"got {n_parts}")
    costs = [cost(getattr(model, n)) for n in names]
    best = None
    for cuts in itertools.combinations(range(1, len(names)), n_parts - 1):
        bounds = (0, *cuts, len(names))
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
        if best is None or worst < best[0]:
            best = (worst, bounds)
    bounds = best[1]
    return [names[a:b] for a, b in zip(bounds, bounds[1:])]


def stage_module(model: nn.Module, names: list[str]) -> nn.Sequential:
    """The named stages of `model` as one nn.Sequential (the same modules, not copies)."""
    return nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))


def bubble_fraction(n_stages: int, n_microbatches: int) -> float:
    """The share of time a device idles in a GPipe step: (p - 1) / (m + p - 1). Naive split (m = 1): (p - 1) / p.

    >>> bubble_fraction(2, 1), bubble_fraction(2, 8)
    (0.5, 0.1111111111111111)
    """
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


class Pipeline:
    """This rank's stages of `model` in a GPipe pipeline over `world_size` ranks.

    `parts` (lists of stage names, one per rank) defaults to `partition(model, world_size)`. Batches must
    have the same size on every step and split evenly into `n_microbatches`. `loss_fn` is a mean over a
    micro-batch; GPipe averages the micro-batches' gradients, so they equal the unsplit model's.
    """

    def __init__(self, model: nn.Module, *, rank: int, world_size: int, device: torch.device | str = "cpu",
                 n_microbatches: int = 4, loss_fn: Callable = F.cross_entropy, parts: list[list[str]] | None = None,
                 group=None):
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        if n_microbatches < 1:
            raise ValueError(f"n_microbatches: must be at least 1, got {n_microbatches}")
        self.parts = parts or partition(model, world_size)
        if len(self.parts) != world_size:
            raise ValueError(f"parts: need one list of stages per rank ({world_size}), got {len(self.parts)}")
        self.rank, self.world_size, self.n_microbatches = rank, world_size, n_microbatches
        self.device = torch.device(device)
        self.module = stage_module(model, self.parts[rank]).to(self.device)
        self.stage = PipelineStage(self.module, rank, world_size, self.device, group=group)
        self.schedule = ScheduleGPipe(self.stage, n_microbatches, loss_fn=loss_fn)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.world_size - 1

    def step(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor | None:
        """Forward and backward of one batch as `n_microbatches` micro-batches (GPipe: all forwards, then all
        backwards). Gradients accumulate into this rank's parameters; zero them before, step after.

        The first rank needs `x`, the last rank `y` (others may pass None). Returns the batch's mean loss
        (detached) on the last rank, None elsewhere.
        """
        batch = x if self.is_first else y
        if batch is not None and len(batch) % self.n_microbatches:
            raise ValueError(f"batch: {len(batch)} examples do not split into {self.n_microbatches} equal micro-batches")
        losses: list[torch.Tensor] = []
        args = (x.to(self.device),) if self.is_first else ()
        target = y.to(self.device) if self.is_last else None
        self.schedule.step(*args, target=target, losses=losses if self.is_last else None)
        return torch.stack([loss.detach() for loss in losses]).mean() if self.is_last else None
