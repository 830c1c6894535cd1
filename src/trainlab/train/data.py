"""What the loop feeds the model: each epoch's order, minibatches on the device, micro-batches grouped
for gradient accumulation, and the training examples re-evaluated each epoch.

The order of an epoch is a function of (seed, epoch) only, so resuming mid-run draws the same batches; under
data parallelism every rank computes the same order and takes its shard (`parallel.ddp.shard_order`).

    batches = Batches(task.train, batch_size=32, device=torch.device("cpu"))
    for x, y in batches.iterate(epoch_order(batches.n, seed=0, epoch=0), start=0): ...
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from trainlab.parallel.ddp import shard_order, shard_size

__all__ = ["epoch_order", "Batches", "grouped", "accumulate", "train_subset", "TRAIN_EVAL_EXAMPLES"]

TRAIN_EVAL_EXAMPLES = 1000  # training examples re-evaluated each epoch for train/acc, in eval mode like val/acc


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of training examples in `epoch`: a function of (seed, epoch) only, so resume is exact."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class Batches:
    """Minibatches in a given order: tensor slicing for in-memory data, a DataLoader otherwise.

    A `TensorDataset` of (inputs, targets) is moved to `device` once; each batch is then an index into it.
    """

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1):
        self.n, self.bs, self.device = len(dataset), batch_size, device
        self.rank, self.world = rank, world_size
        self.tensors = None
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            self.tensors = tuple(t.to(device) for t in dataset.tensors)
        self.dataset = dataset

    def __len__(self) -> int:
        """Batches per epoch on this rank (its shard of the data when several processes train)."""
        return math.ceil(shard_size(self.n, self.world) / self.bs)

    def iterate(self, order: torch.Tensor, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in `order` (the whole epoch's order; this rank takes its shard), from batch `start`."""
        if self.world > 1:
            order = shard_order(order, self.rank, self.world)
        if self.tensors is not None:
            x, y = self.tensors
            order = order.to(self.device)
            for b in range(start, len(self)):
                idx = order[b * self.bs:(b + 1) * self.bs]
                yield x[idx], y[idx]
            return
        indices = order[start * self.bs:].tolist()
        loader = DataLoader(Subset(self.dataset, indices), batch_size=self.bs, shuffle=False)
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def grouped(batches, k: int):
    """Micro-batches in groups of `k` (the last group may be shorter): ([x...], [y...]) per optimizer update."""
    xs, ys = [], []
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        if len(xs) == k:
            yield xs, ys
            xs, ys = [], []
    if xs:
        yield xs, ys


def accumulate(net: nn.Module, loss_fn: Callable, xs: list, ys: list, optimizer: torch.optim.Optimizer,
               autocast: Callable = nullcontext, scaler=None) -> tuple[torch.Tensor, int]:
    """Gradient accumulation: the gradient of the mean loss over all examples of the micro-batches.

    Each micro-batch's mean loss is weighted by its share of the examples, so accumulating 2 x 16 gives
    the gradient of one batch of 32 (and a short last micro-batch is weighted right). Under DDP only the
    last backward all-reduces gradients (`no_sync`, as nanoGPT toggles require_backward_grad_sync).
    `autocast()` is the context of forward and loss (the run's precision); `scaler` (fp16) scales each
    backward's loss.
    Returns (the weighted mean loss, detached; the number of examples).
    """
    n = sum(len(y) for y in ys)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=ys[0].device)
    for i, (x, y) in enumerate(zip(xs, ys)):
        sync = net.no_sync() if hasattr(net, "no_sync") and i < len(xs) - 1 else nullcontext()
        with sync:
            with autocast():
                loss = loss_fn(net(x), y) * (len(y) / n)
            (loss if scaler is None else scaler.scale(loss)).backward()
        total += loss.detach().float()
    return total, n


def train_subset(train: Dataset, n_val: int) -> Dataset:
    """Training examples re-evaluated each epoch: as many as the validation split (at most
    TRAIN_EVAL_EXAMPLES), so the train/val gap compares numbers of the same precision."""
    n = min(len(train), n_val, TRAIN_EVAL_EXAMPLES)
    if isinstance(train, TensorDataset):
        return TensorDataset(*(t[:n] for t in train.tensors))
    return Subset(train, range(n))
