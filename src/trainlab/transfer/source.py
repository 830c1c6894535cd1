"""Where a transfer starts: the pretrained source (`Source`, `load_source`: a trainlab run or a local weights
file with its architecture) and what is built from it for a target task: the target's validation split
(`prepare_target`), its hyperparameters (`target_hparams`), the model with a new head (`target_model`),
and the study its runs are filed under (`study_name`). No network: weights load from a local file.

Sources: a trainlab run (its best checkpoint; the architecture rebuilt from the run's hyperparameters)
or a local weights file with its architecture (a built-in model, `torchvision:NAME`, `timm:NAME`,
`file.py:fn`, `pkg.module:fn`).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trainlab.checkpoint import plain_module
from trainlab.config import Config, ConfigError, apply_overrides, make_config
from trainlab.models import MODELS, build_model
from trainlab.store import Store
from trainlab.tasks import Task, load_task, split_val
from trainlab.train.evaluate import dataset_tensors
from trainlab.transfer.backbone import load_weights, replace_head

__all__ = ["Source", "load_source", "study_name", "prepare_target", "target_hparams", "target_model", "output_size"]


@dataclass
class Source:
    """A pretrained backbone: the model with its source head, where it came from, base hyperparameters."""

    name: str
    model: nn.Module
    hp: Config
    origin: str


def _build_arch(arch: str | Callable | nn.Module, hp: Config, input_shape: tuple[int, ...] | None) -> nn.Module:
    if isinstance(arch, nn.Module):
        return arch
    if callable(arch):
        return arch(input_shape, 10)
    if arch in MODELS:
        if input_shape is None:
            raise ConfigError(f"arch: the built-in {arch!r} needs the input shape (give a target task)")
        return build_model(arch, input_shape, 10, hp.width, hp.dropout)
    lib, _, name = arch.partition(":")
    if lib == "torchvision" and name:
        try:
            import torchvision
        except ImportError:
            raise ConfigError(f"arch: {arch!r} needs torchvision, which is not installed") from None
        return torchvision.models.get_model(name, weights=None)
    if lib == "timm" and name:
        try:
            import timm
        except ImportError:
            raise ConfigError(f"arch: {arch!r} needs timm, which is not installed") from None
        return timm.create_model(name, pretrained=False)
    target, _, fn_name = arch.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"arch: no such file {target!r}")
        spec = importlib.util.spec_from_file_location(
            f"trainlab_user_arch_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    elif target:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ConfigError(f"arch: cannot import module {target!r} ({err})") from None
    else:
        raise ConfigError(f"arch: unknown architecture {arch!r}; use one of {', '.join(MODELS)}, torchvision:NAME, "
                          "timm:NAME, path/to/file.py:fn or pkg.module:fn")
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"arch: {target!r} has no function {fn_name!r}")
    return fn(input_shape, 10)


def load_source(source: int | str | Path, *, store: Store | None = None, arch: str | Callable | nn.Module | None = None,
                hp: Config | None = None, input_shape: tuple[int, ...] | None = None) -> Source:
    """The pretrained backbone `source` names: a run id (its best checkpoint, its architecture rebuilt from
    the run's hyperparameters) or a weights file with `arch` (a built-in model name, `torchvision:NAME`,
    `timm:NAME`, `file.py:fn(input_shape, num_classes)`, or a ready `nn.Module`).
    """
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        if store is None:
            raise ConfigError(f"source: run {source} needs a store")
        run = store.run(int(source))
        if not run.get("checkpoint"):
            raise ConfigError(f"source: run {run['id']} has no checkpoint (status {run['status']}); "
                              "train it with a store and checkpoints")
        # the stored early-stopping metric was resolved for the source's task (a regression's val/loss): a target
        # task resolves its own from the default, unless the target's hyperparameters name one
        defaults = Config()
        src_hp = make_config({**run["hparams"], "early_stop_metric": defaults.early_stop_metric,
                              "early_stop_mode": defaults.early_stop_mode})
        try:
            model = plain_module(load_task(src_hp).build_model())  # a task may return torch.compile(model)
        except ConfigError as err:
            raise ConfigError(f"source: run {run['id']}'s model cannot be rebuilt from its hyperparameters: {err}") from None
        load_weights(model, run["checkpoint"])
        return Source(f"run{run['id']}", model, src_hp, f"run {run['id']} ({run['checkpoint']})")
    if arch is None:
        raise ConfigError(f"source: a weights file needs its architecture (arch), got only {str(source)!r}")
    base = hp or Config()
    if isinstance(arch, str) and arch in MODELS:
        base = apply_overrides(base, {"model": arch})
    model = _build_arch(arch, base, input_shape)
    load_weights(model, source, fit_head=True)
    return Source(Path(source).stem, model, base, str(source))


def study_name(source: Source, task: Task) -> str:
    """The default study of a transfer's runs: transfer-<source>-<target task>."""
    return f"transfer-{source.name}-{task.name}"


def prepare_target(task: Task, hp: Config) -> Task:
    """`task` with its validation split in place (carved from train like `load_task` does)."""
    if task.val is not None:
        return task
    train, val = split_val(task.train, hp.val_fraction, hp.split_seed)
    return replace(task, train=train, val=val)


def target_hparams(source: Source, task: Task, hp: Config | None = None) -> Config:
    """The target runs' hyperparameters: `hp`, else the source's with the target's task."""
    return hp or apply_overrides(source.hp, {"task": task.name})


def output_size(task: Task, targets: torch.Tensor | None = None) -> int:
    """The outputs per example a model of `task` gives: its number of classes for a classifier; for a
    regression, 1 for targets of shape (N,) and K for targets (N, K)."""
    if task.kind != "regression":
        return task.num_classes
    y = dataset_tensors(task.train)[1] if targets is None else targets
    return 1 if y.ndim <= 1 else int(y[0].numel())


def target_model(source: Source, task: Task) -> nn.Module:
    """A copy of the source model for `task`: its head replaced when its outputs differ from the task's (the
    number of classes, or a regression's outputs per example), so a classifier's backbone serves a regression
    target and the reverse."""
    model = copy.deepcopy(source.model)
    x, y = dataset_tensors(task.train)
    outputs = output_size(task, y)
    replace_head(model, outputs)
    x = x[:2]
    try:
        with torch.no_grad():
            out = model.eval()(x.to(next(model.parameters()).device))
    except RuntimeError as err:
        raise ConfigError(f"target: inputs of shape {tuple(x.shape[1:])} do not fit the source model "
                          f"({str(err).splitlines()[0]})") from None
    if out.ndim != 2 or out.shape[1] != outputs:
        raise ConfigError(f"target: the source model gives outputs of shape {tuple(out.shape[1:])}, "
                          f"expected ({outputs},)")
    return model
