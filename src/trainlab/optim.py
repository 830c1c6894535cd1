"""Optimizer factory: the seven optimizers of the lecture, with parameter groups.

Weight decay is applied to weights only: biases and normalization parameters (every tensor with
fewer than two dimensions) go in a group without it. Each group carries `base_lr`, the learning rate
a schedule multiplies, so fine-tuning can give a backbone a lower rate than its head.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from trainlab.config import Config

__all__ = ["build_optimizer", "param_groups"]


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 lr_mult: dict[str, float] | None = None) -> list[dict]:
    """Split trainable parameters into decay / no-decay groups, per learning-rate multiplier.

    `lr_mult` maps a parameter-name prefix (e.g. a stage name "stage1") to a factor of `lr`; the
    longest matching prefix wins; unmatched parameters get factor 1. Frozen parameters are left out.
    """
    lr_mult = lr_mult or {}
    groups: dict[tuple[float, bool], list] = {}
    names: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        matches = [k for k in lr_mult if name == k or name.startswith(k + ".")]
        mult = lr_mult[max(matches, key=len)] if matches else 1.0
        decay = p.ndim >= 2 and weight_decay > 0  # one group when nothing decays: fewer optimizer dispatches
        groups.setdefault((mult, decay), []).append(p)
        names.setdefault((mult, decay), []).append(name)
    return [
        {"params": params, "names": names[key], "lr": lr * key[0], "base_lr": lr * key[0],
         "weight_decay": weight_decay if key[1] else 0.0}
        for key, params in groups.items()
    ]


def build_optimizer(hp: Config, params: Iterable | nn.Module, lr_mult: dict[str, float] | None = None
                    ) -> torch.optim.Optimizer:
    """The optimizer `hp.optimizer` names over `params` (a model, or ready-made param groups).

    sgd is plain SGD; momentum and nesterov are SGD with `hp.momentum`; adam couples weight decay to the
    gradient (L2); adamw decouples it (Loshchilov & Hutter 2019).
    """
    groups = param_groups(params, hp.lr, hp.weight_decay, lr_mult) if isinstance(params, nn.Module) else list(params)
    kind = hp.optimizer
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=hp.lr)
    if kind in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=kind == "nesterov")
    if kind == "adagrad":
        return torch.optim.Adagrad(groups, lr=hp.lr, eps=hp.eps)
    if kind == "rmsprop":
        return torch.optim.RMSprop(groups, lr=hp.lr, eps=hp.eps)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=hp.lr, betas=hp.betas, eps=hp.eps)
    return torch.optim.AdamW(groups, lr=hp.lr, betas=hp.betas, eps=hp.eps)
