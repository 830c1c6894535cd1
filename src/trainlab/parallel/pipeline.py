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

__all__ = ["partition", "stage_module", "bubble_fraction", "boundaries", "Pipeline"]


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


def boundaries(model: nn.Module, parts: list[list[str]], example: torch.Tensor) -> list[torch.Tensor]:
    """The tensors between the parts when `example` goes through `model`: [input, after part 0, after part 1,
    ...], computed in eval mode without gradients (no BatchNorm statistics or RNG touched). The ones between
    parts require grad, as the activations a stage receives and sends back gradients for do."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            edges = [example]
            for part in parts:
                edges.append(stage_module(model, part)(edges[-1]))
    finally:
        model.train(was)
    return [edges[0], *(e.detach().requires_grad_(e.is_floating_point()) for e in edges[1:])]


class Pipeline:
    """This rank's stages of `model` in a GPipe pipeline over `world_size` ranks.

    `parts` (lists of stage names, one per rank) defaults to `partition(model, world_size)`. Batches must
    have the same size on every step and split evenly into `n_microbatches`. `loss_fn` is a mean over a
    micro-batch; GPipe averages the micro-batches' gradients, so they equal the unsplit model's.

    `example` (one micro-batch of inputs, on every rank) gives every stage its input and output shapes up
    front (`boundaries`: the model run in eval mode, without gradients). Without it torch infers them at
    the first step by running each stage on uninitialized placeholder tensors in training mode, which
    writes garbage into BatchNorm's running statistics (NaN in evaluation) and draws from the RNG.
    """

    def __init__(self, model: nn.Module, *, rank: int, world_size: int, device: torch.device | str = "cpu",
                 n_microbatches: int = 4, loss_fn: Callable = F.cross_entropy, parts: list[list[str]] | None = None,
                 group=None, example: torch.Tensor | None = None):
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        if n_microbatches < 1:
            raise ValueError(f"n_microbatches: must be at least 1, got {n_microbatches}")
        self.parts = parts or partition(model, world_size)
        if len(self.parts) != world_size:
            raise ValueError(f"parts: need one list of stages per rank ({world_size}), got {len(self.parts)}")
        self.rank, self.world_size, self.n_microbatches = rank, world_size, n_microbatches
        self.device = torch.device(device)
        self.module = stage_module(model, self.parts[rank]).to(self.device)
        shapes = {}
        if example is not None:  # static shapes: no forward on placeholders (see the class docstring)
            edges = boundaries(model, self.parts, example.to(self.device))
            shapes = {"input_args": edges[rank], "output_args": edges[rank + 1]}
        self.stage = PipelineStage(self.module, rank, world_size, self.device, group=group, **shapes)
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
