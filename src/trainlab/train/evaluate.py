"""Evaluation without gradients: loss and accuracy of a model on a dataset, and its logits."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["evaluate", "predict", "dataset_tensors"]


def dataset_tensors(dataset: Dataset, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a whole dataset as two tensors on `device`."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
    else:
        xs, ys = zip(*(batch for batch in DataLoader(dataset, batch_size=1024)))
        x, y = torch.cat(xs), torch.cat(ys)
    return x.to(device), y.to(device)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset | torch.Tensor, device: torch.device | str = "cpu",
            batch_size: int = 1024) -> torch.Tensor:
    """Logits of `model` on every example, in eval mode (BatchNorm uses its running statistics)."""
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
def evaluate(model: nn.Module, dataset: Dataset, loss_fn: Callable = F.cross_entropy,
             device: torch.device | str = "cpu", batch_size: int = 1024,
             data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """{"loss": mean loss, "acc": accuracy} of `model` on `dataset` (or on ready tensors `data`); NaN for both
    when there are no examples, which `distributed.reduce_means` weighs by their count, zero."""
    x, y = data if data is not None else dataset_tensors(dataset, device)
    logits = predict(model, x, device, batch_size)
    loss = loss_fn(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return {"loss": loss, "acc": acc}
