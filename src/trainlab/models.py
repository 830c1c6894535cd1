"""Built-in models: `mlp`, `cnn` and `resnet`, for 1D signals (mnist1d) and 2D images (digits).

Each is an `nn.Sequential` whose children are named stages (`stem`/`stage1`.../`head`), so transfer
learning can freeze or probe by stage and pipeline parallelism can split between them. Inputs are
channels-first: (N, C, L) for 1D, (N, C, H, W) for 2D.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

__all__ = ["MODELS", "DEFAULT_WIDTH", "build_model", "stage_names"]

MODELS = ("mlp", "cnn", "resnet")
DEFAULT_WIDTH = {"mlp": 100, "cnn": 32, "resnet": 32}


def stage_names(model: nn.Module) -> list[str]:
    """The model's stages in order: its declared `stages`, else the names of its children."""
    declared = getattr(model, "stages", None)
    return list(declared) if declared else [name for name, _ in model.named_children()]


def _layers(ndim: int):
    if ndim == 1:
        return nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d
    return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d


def mlp(input_shape: tuple[int, ...], num_classes: int, width: int, dropout: float) -> nn.Sequential:
    """Two hidden layers of `width` ReLU units: 40-100-100-10 on mnist1d."""
    n_in = math.prod(input_shape)
    return nn.Sequential(OrderedDict(
        stage1=nn.Sequential(nn.Flatten(), nn.Linear(n_in, width), nn.ReLU(), nn.Dropout(dropout)),
        stage2=nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout)),
        head=nn.Linear(width, num_classes),
    ))


def cnn(input_shape: tuple[int, ...], num_classes: int, width: int, dropout: float) -> nn.Sequential:
    """Two conv-ReLU-pool stages and a linear head (no BatchNorm)."""
    conv, _, pool, gap = _layers(len(input_shape) - 1)
    c = input_shape[0]
    return nn.Sequential(OrderedDict(
        stage1=nn.Sequential(conv(c, width, 3, padding=1), nn.ReLU(), pool(2)),
        stage2=nn.Sequential(conv(width, 2 * width, 3, padding=1), nn.ReLU(), pool(2)),
        head=nn.Sequential(gap(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, num_classes)),
    ))


class _Block(nn.Module):
    """Basic residual block (He et al. 2016): two 3-wide convs with BatchNorm, projection when shapes change."""

    def __init__(self, ndim: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        conv, bn, _, _ = _layers(ndim)
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = bn(c_out)
        self.relu = nn.ReLU()
        self.skip = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), bn(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.skip(x))


def resnet(input_shape: tuple[int, ...], num_classes: int, width: int, dropout: float) -> nn.Sequential:
    """A small residual network with BatchNorm: stem, three stages (width, 2x, 4x; stride 2 after the first), head."""
    ndim = len(input_shape) - 1
    conv, bn, _, gap = _layers(ndim)
    w = width
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(conv(input_shape[0], w, 3, padding=1, bias=False), bn(w), nn.ReLU()),
        stage1=_Block(ndim, w, w, 1),
        stage2=_Block(ndim, w, 2 * w, 2),
        stage3=_Block(ndim, 2 * w, 4 * w, 2),
        head=nn.Sequential(gap(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, num_classes)),
    ))


_BUILDERS = {"mlp": mlp, "cnn": cnn, "resnet": resnet}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, width: int | None = None,
                dropout: float = 0.0) -> nn.Sequential:
    """Build a built-in model by name; `width=None` takes the model's default (DEFAULT_WIDTH)."""
    if name not in _BUILDERS:
        raise ValueError(f"model: unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return _BUILDERS[name](tuple(input_shape), num_classes, width or DEFAULT_WIDTH[name], dropout)
