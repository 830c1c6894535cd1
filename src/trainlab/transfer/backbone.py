"""Backbones: the named stages of any `nn.Module`, its head, its weights from a local file, freezing by stage,
and the pooled features of each stage.

The built-in models are `nn.Sequential`s of `stem`/`stage1`/.../`head` (`models.stage_names`). A torchvision
or timm model's stages are its top-level children that hold parameters (`conv1`, `bn1`, `layer1`, ...);
its head is the last stage called `head`, `fc`, `classifier` or `heads`; a model may also declare a
`stages` attribute. Weights load from a file the user names, always with `weights_only=True`: a trainlab
checkpoint, a plain state_dict, or safetensors. Nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.checkpoint import load_checkpoint, state_for
from trainlab.config import ConfigError
from trainlab.models import stage_names

__all__ = ["HEAD_NAMES", "MAX_PROBE_FEATURES", "head_name", "head_linear", "backbone_stages", "replace_head",
           "read_state_dict", "load_weights", "FrozenStages", "pool_features", "capture", "stage_features"]

HEAD_NAMES = ("head", "fc", "classifier", "heads")
MAX_PROBE_FEATURES = 512  # pooled features per stage for probes: equal budgets make stages comparable


# --- stages and heads -------------------------------------------------------------------------------

def head_name(model: nn.Module) -> str:
    """The head stage: the last stage called head, fc, classifier or heads."""
    names = stage_names(model)
    heads = [n for n in names if n.rsplit(".", 1)[-1] in HEAD_NAMES]
    if not heads:
        raise ConfigError(f"backbone: no head among its stages {names}; name the last stage one of "
                          f"{', '.join(HEAD_NAMES)} or declare `stages`")
    return heads[-1]


def backbone_stages(model: nn.Module) -> list[str]:
    """The stages before the head that hold parameters or buffers, from input to output."""
    names, head = stage_names(model), head_name(model)
    out = []
    for name in names[:names.index(head)]:
        module = model.get_submodule(name)
        if next(module.parameters(), None) is not None or next(module.buffers(), None) is not None:
            out.append(name)
    if not out:
        raise ConfigError(f"backbone: no stage before the head {head!r} holds parameters")
    return out


def head_linear(model: nn.Module) -> str:
    """The qualified name of the head's last `nn.Linear` (the classifier that a new task replaces)."""
    head = head_name(model)
    module = model.get_submodule(head)
    if isinstance(module, nn.Linear):
        return head
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"backbone: the head {head!r} has no nn.Linear to replace")
    return f"{head}.{linears[-1]}"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def replace_head(model: nn.Module, num_classes: int) -> bool:
    """Give `model` a freshly initialized classifier for `num_classes`; False (nothing done) if it has that many."""
    name = head_linear(model)
    old = model.get_submodule(name)
    if old.out_features == num_classes:
        return False
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    _set_module(model, name, new.to(device=old.weight.device, dtype=old.weight.dtype))
    return True


# --- weights ----------------------------------------------------------------------------------------

def _few(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{f', ... (+{len(keys) - n} more)' if len(keys) > n else ''}]"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors (by suffix), else a trainlab checkpoint (its "model"), a
    checkpoint with "state_dict", or a plain state_dict, loaded with `weights_only=True`.

    A missing file, a pickle holding Python objects, or a file holding no tensors is a ValueError
    (ConfigError or CheckpointError) with one line saying which.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights: no such file {str(path)!r}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"weights: {str(path)!r} is safetensors, which needs the safetensors package "
                              "(pip install safetensors)") from None

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises SafetensorError, OSError...
            raise ConfigError(f"weights: {str(path)!r} is not a valid safetensors file: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    obj = load_checkpoint(path)  # weights_only=True; refuses pickled Python objects
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise ConfigError(f"weights: {str(path)!r} holds no state_dict (expected a trainlab checkpoint, "
                          "a dict of tensors, or a .safetensors file)")
    return obj


def _strip_prefix(sd: dict[str, torch.Tensor], own: dict[str, Any]) -> dict[str, torch.Tensor]:
    # DDP and FrozenStages both keep the real model under `.module`
    if own and not any(k.startswith("module.") for k in own) and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_weights(model: nn.Module, weights: str | Path | dict[str, torch.Tensor], *, fit_head: bool = False) -> nn.Module:
    """Load `weights` (a file or a state_dict) into `model` strictly: every key present, none unexpected,
    every shape equal. Otherwise a ConfigError on one line listing the missing and unexpected keys.

    `fit_head=True` first resizes the head's classifier to the number of classes the weights hold (for a
    file whose source task is not known). A `module.` prefix on every key (DDP, FrozenStages) is removed.
    """
    label = repr(str(weights)) if not isinstance(weights, dict) else "the state_dict"
    sd = read_state_dict(weights) if not isinstance(weights, dict) else weights
    sd = _strip_prefix(state_for(model, sd), model.state_dict())  # torch.compile's `_orig_mod.` too
    if fit_head:
        key = f"{head_linear(model)}.weight"
        if key in sd and sd[key].ndim == 2:
            replace_head(model, sd[key].shape[0])
    own = model.state_dict()
    # BatchNorm's num_batches_tracked is bookkeeping, not a weight; old files lack it
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        wrong = f"; wrong shapes {_few(shapes)}" if shapes else ""
        raise ConfigError(f"weights: {label} do not fit the {type(model).__name__}: missing keys {_few(missing)}; "
                          f"unexpected keys {_few(unexpected)}{wrong}")
    model.load_state_dict(sd, strict=False)
    return model


# --- freezing -----------------------------------------------------------------------------------------

class FrozenStages(nn.Module):
    """`module` with some of its stages frozen: no gradients, and kept in eval mode by `train()`.

    `fit` calls `model.train()` every epoch; a frozen stage must keep using (and not update) BatchNorm's
    running statistics, and keep dropout off, or its "frozen" weights would see their inputs drift.
    State-dict keys carry the prefix `module.`, which `load_weights` removes.
    """

    def __init__(self, module: nn.Module, frozen: Sequence[str] = ()):
        super().__init__()
        self.module = module
        self.frozen: list[str] = []
        for name in frozen:
            self.freeze(name)

    def freeze(self, name: str) -> None:
        stage = self.module.get_submodule(name)
        for p in stage.parameters():
            p.requires_grad_(False)
        stage.eval()
        if name not in self.frozen:
            self.frozen.append(name)

    def unfreeze(self, name: str) -> None:
        stage = self.module.get_submodule(name)
        for p in stage.parameters():
            p.requires_grad_(True)
        stage.train(self.training)
        self.frozen.remove(name)

    def train(self, mode: bool = True) -> FrozenStages:
        super().train(mode)
        for name in self.frozen:
            self.module.get_submodule(name).eval()
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


# --- features -----------------------------------------------------------------------------------------

def pool_features(t: torch.Tensor, max_features: int = MAX_PROBE_FEATURES) -> torch.Tensor:
    """(N, C, *space) -> (N, D): flattened when C x space <= max_features, else average-pooled over space
    to the largest grid that fits (at least global pooling, D = C)."""
    if t.ndim <= 2:
        return t.flatten(1)
    c, space = t.shape[1], t.shape[2:]
    if c * math.prod(space) <= max_features:
        return t.flatten(1)
    k = len(space)
    grid = max(1, int((max_features / c) ** (1 / k)))
    if k == 1:
        return F.adaptive_avg_pool1d(t, min(grid, space[0])).flatten(1)
    if k == 2:
        return F.adaptive_avg_pool2d(t, [min(grid, s) for s in space]).flatten(1)
    return t.flatten(2).mean(2)


@torch.no_grad()
def capture(model: nn.Module, x: torch.Tensor, points: dict[str, tuple[nn.Module, str]],
             transform: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Run `model` (eval mode) on x and collect, for each named point, a module's input ("in") or output ("out")."""
    got: dict[str, list[torch.Tensor]] = {name: [] for name in points}

    def hook(name: str, where: str):
        def fn(module, args, output=None):
            t = args[0] if where == "in" else output
            got[name].append(transform((t[0] if isinstance(t, (tuple, list)) else t).float()))
        return fn

    handles = [m.register_forward_hook(hook(n, w)) if w == "out" else m.register_forward_pre_hook(hook(n, w))
               for n, (m, w) in points.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: torch.cat(parts).cpu() for name, parts in got.items()}


def stage_features(model: nn.Module, x: torch.Tensor, stages: Sequence[str] | None = None,
                   max_features: int = MAX_PROBE_FEATURES) -> dict[str, torch.Tensor]:
    """Each stage's output on `x`, pooled to at most `max_features` per example: {stage: (N, D)}."""
    stages = backbone_stages(model) if stages is None else stages
    return capture(model, x, {s: (model.get_submodule(s), "out") for s in stages},
                    lambda t: pool_features(t, max_features))
