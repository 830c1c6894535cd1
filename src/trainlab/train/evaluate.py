"""Evaluation without gradients: the loss and the task's metrics of a model on a dataset, and its outputs.

In-memory tensors (a `TensorDataset`) are evaluated in slices of tensors already on the device; any other
dataset is read in batches through the task's DataLoader (`data.Feed`) and never held whole on the device:
each batch's means are weighted by its examples, which gives the whole split's means.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, IterableDataset, Subset

from trainlab.metrics import Metric, accuracy, scores
from trainlab.train.data import Feed

__all__ = ["evaluate", "predict", "dataset_tensors", "eval_data", "eval_count", "EvalData"]

EvalData = Union[tuple[torch.Tensor, torch.Tensor], Dataset]  # tensors on the device, or a dataset read in batches
_ACC = (Metric("acc", accuracy, "max"),)


def dataset_tensors(dataset: Dataset, device: torch.device | str = "cpu",
                    feed: Feed | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a whole dataset as two tensors on `device` (tuple or dict items; `feed`'s keys)."""
    feed = feed or Feed()
    memory = feed.in_memory(dataset)
    if memory is not None:
        x, y = memory
    else:
        cpu = Feed(feed.input_key, feed.target_key, feed.make_loader)
        parts = [cpu.split(b) for b in cpu.loader(dataset, 1024, workers=False)]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return x.to(device), y.to(device)


def eval_data(dataset: Dataset, device: torch.device, feed: Feed, rank: int = 0, world_size: int = 1) -> EvalData:
    """What a split is evaluated on, held for a run: in-memory tensors moved to `device` once, or the dataset
    itself, read in batches at each evaluation; under data parallelism this rank's share of the examples
    (every `world_size`-th from `rank`, unpadded)."""
    memory = feed.in_memory(dataset)
    if memory is not None:
        return tuple(t[rank::world_size].to(device) for t in memory)
    if world_size > 1 and not isinstance(dataset, IterableDataset):  # an iterable one: every rank reads it all
        return Subset(dataset, range(rank, len(dataset), world_size))
    return dataset


def eval_count(data: EvalData) -> int:
    """The examples `data` holds (an iterable dataset without `__len__` counts as 1: ranks weigh alike)."""
    if isinstance(data, tuple):
        return len(data[1])
    return len(data) if hasattr(data, "__len__") else 1


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset | torch.Tensor, device: torch.device | str = "cpu",
            batch_size: int = 1024) -> torch.Tensor:
    """Outputs of `model` on every example, in eval mode (BatchNorm uses its running statistics)."""
    x = dataset if isinstance(dataset, torch.Tensor) else dataset_tensors(dataset, device)[0]
    was_training = model.training
    model.eval()
    try:
        out = [model(x[i:i + batch_size].to(device)).float() for i in range(0, len(x), batch_size)]
        if not out:  # no examples (a rank's empty shard of a tiny split): zero rows of logits, not an error
            out = [model(x[:0].to(device)).float()]
    finally:
        model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset | None, loss_fn: Callable = F.cross_entropy,
             device: torch.device | str = "cpu", batch_size: int = 1024, data: EvalData | None = None,
             metrics: Sequence[Metric] = _ACC, feed: Feed | None = None) -> dict[str, float]:
    """{"loss": mean loss, name: mean of each metric} of `model` on `dataset` (or on `data`: tensors on the
    device, or a dataset read in batches by `feed`). `metrics` defaults to accuracy ("acc"). NaN for all when
    there are no examples, which `distributed.reduce_means` weighs by their count, zero."""
    feed = feed or Feed(device=device)
    if data is None:
        memory = feed.in_memory(dataset)
        data = (memory[0].to(device), memory[1].to(device)) if memory is not None else dataset
    if isinstance(data, tuple):
        x, y = data
        if len(y) == 0:
            return {k: float("nan") for k in ["loss", *(m.name for m in metrics)]}
        return scores(predict(model, x, device, batch_size), y, loss_fn, metrics)
    totals: dict[str, float] = {}
    n = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in feed.batches(data, batch_size):
            k = len(y)
            for name, v in scores(model(x).float(), y, loss_fn, metrics).items():
                totals[name] = totals.get(name, 0.0) + v * k
            n += k
    finally:
        model.train(was_training)
    if n == 0:
        return {k: float("nan") for k in ["loss", *(m.name for m in metrics)]}
    return {k: v / n for k, v in totals.items()}
