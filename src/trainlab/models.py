"""Built-in models: `mlp`, `cnn` and `resnet`, for 1D signals (mnist1d) and 2D images (digits, shapes32).

Each is an `nn.Sequential` whose children are named stages (`stem`/`stage1`.../`head`), so transfer
learning can freeze or probe by stage and pipeline parallelism can split between them. Inputs are
channels-first: (N, C, L) for 1D, (N, C, H, W) for 2D. The resnet is CIFAR-shaped: full resolution in its
stem and first stage, halved twice (32x32 images end in 8x8 maps, 8x8 digits in 2x2).

`augment="flip_crop"` puts a `FlipCrop` stage first: in training mode it flips and shifts each image of the
batch on the device (the standard CIFAR augmentation); in eval mode it passes the batch through, so
validation, test and predictions see the images as they are. It has no parameters, so the model's
checkpoints are the same with and without it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODELS", "DEFAULT_WIDTH", "AUGMENTATIONS", "build_model", "stage_names", "FlipCrop", "flip_crop"]

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


def flip_crop(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Each image of the batch `x` (N, C, H, W) flipped left-right with probability 1/2 and shifted by up to
    `pad` pixels each way, the edge filled with zeros (a random crop of the zero-padded image, as in He et
    al. 2016 on CIFAR). On x's device, from torch's generator there (checkpointed with the run).

    >>> flip_crop(torch.ones(2, 3, 8, 8)).shape
    torch.Size([2, 3, 8, 8])
    """
    n, _, h, w = x.shape
    flip = torch.rand(n, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    shift = torch.randint(0, 2 * pad + 1, (2, n), device=x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (shift[0][:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (shift[1][:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous(memory_format=_format(x))


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


class FlipCrop(nn.Module):
    """`flip_crop` on training batches (in train mode); the identity in eval mode."""

    def __init__(self, pad: int = 4):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flip_crop(x, self.pad) if self.training else x


_BUILDERS = {"mlp": mlp, "cnn": cnn, "resnet": resnet}
AUGMENTATIONS = ("none", "flip_crop")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, width: int | None = None,
                dropout: float = 0.0, augment: str = "none") -> nn.Sequential:
    """Build a built-in model by name; `width=None` takes the model's default (DEFAULT_WIDTH).
    `augment="flip_crop"` (images only) puts a `FlipCrop` stage named "augment" first."""
    if name not in _BUILDERS:
        raise ValueError(f"model: unknown model {name!r}; choose one of {', '.join(MODELS)}")
    model = _BUILDERS[name](tuple(input_shape), num_classes, width or DEFAULT_WIDTH[name], dropout)
    if augment == "none":
        return model
    if augment != "flip_crop" or len(input_shape) != 3:
        raise ValueError(f"augment: flip_crop is for images (C, H, W), got {augment!r} for inputs {tuple(input_shape)}")
    return nn.Sequential(OrderedDict([("augment", FlipCrop()), *model.named_children()]))
