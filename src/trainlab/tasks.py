"""Tasks: a model factory, train/val/test datasets, a loss and the number of classes.

Built-in tasks generate or ship their data (nothing is downloaded, ever):
`mnist1d` (procedurally generated, 4000 train / 1000 test), `mnist1d-shuffle` (the same signals with
their 40 positions permuted, which removes spatial structure) and `digits` (scikit-learn's 8x8 digits).
A user task is `path/to/file.py:build` or `pkg.module:build`, where `build(hp)` returns a `Task`.
The validation split is carved from the training data; the test split is kept for the final model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from trainlab.config import Config, ConfigError
from trainlab.models import MODELS, build_model

__all__ = ["Task", "BUILTIN_TASKS", "load_task", "build_task", "with_val_split", "split_val", "mnist1d_arrays"]

BUILTIN_TASKS = ("mnist1d", "mnist1d-shuffle", "digits")


@dataclass
class Task:
    """What to learn. `build_model()` returns a fresh, randomly initialized model each call.

    `val` may be None: `load_task` then carves it from `train` (Config.val_fraction, fixed by split_seed).
    """

    name: str
    build_model: Callable[[], nn.Module]
    train: Dataset
    test: Dataset
    num_classes: int
    val: Dataset | None = None
    loss: Callable[..., torch.Tensor] = F.cross_entropy
    info: dict[str, Any] = field(default_factory=dict)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "trainlab"


@lru_cache(maxsize=8)
def _mnist1d_cached(key: str) -> dict[str, np.ndarray]:
    overrides = json.loads(key)
    path = _cache_dir() / f"mnist1d-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError):
            pass
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for k, v in overrides.items():
        if not hasattr(args, k):
            raise ValueError(f"mnist1d: unknown generator argument {k!r}")
        setattr(args, k, v)
    templates = overrides.get("templates")
    data = make_dataset(args, template=templates)
    arrays = {k: np.asarray(data[k], dtype=np.float32 if k.startswith("x") else np.int64)
              for k in ("x", "y", "x_test", "y_test")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass
    return arrays


def mnist1d_arrays(**generator_args: Any) -> dict[str, np.ndarray]:
    """MNIST-1D from the `mnist1d` generator (Greydanus 2020): x (N, 40) float32, y int64, and the test split.

    Keyword arguments override the generator's (seed, num_samples, iid_noise_scale, shuffle_seq, ...).
    Generated once per setting and cached under ~/.cache/trainlab.
    """
    return _mnist1d_cached(json.dumps(generator_args, sort_keys=True))


def _as_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))


def _mnist1d(hp: Config, shuffle: bool) -> Task:
    d = mnist1d_arrays(shuffle_seq=True) if shuffle else mnist1d_arrays()
    x, xt = d["x"][:, None, :], d["x_test"][:, None, :]
    return _builtin("mnist1d-shuffle" if shuffle else "mnist1d", hp, x, d["y"], xt, d["y_test"], 10)


def _digits(hp: Config) -> Task:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.2, random_state=0, stratify=data.target)
    mean, std = x_tr.mean(), x_tr.std()
    return _builtin("digits", hp, (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te, 10)


def _builtin(name: str, hp: Config, x, y, x_test, y_test, num_classes: int) -> Task:
    if hp.model not in MODELS:
        raise ConfigError(f"model: unknown model {hp.model!r} for task {name!r}; choose one of {', '.join(MODELS)}")
    shape = tuple(x.shape[1:])
    return Task(
        name=name,
        build_model=lambda: build_model(hp.model, shape, num_classes, hp.width, hp.dropout),
        train=_as_dataset(x, y),
        test=_as_dataset(x_test, y_test),
        num_classes=num_classes,
        info={"input_shape": shape, "model": hp.model},
    )


def _load_user_builder(spec: str) -> Callable[[Config], Task]:
    target, _, fn_name = spec.rpartition(":")
    if not target or not fn_name:
        raise ConfigError(f"task: unknown task {spec!r}; use one of {', '.join(BUILTIN_TASKS)}, "
                          "path/to/file.py:build or pkg.module:build")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"task: no such file {target!r}")
        mod_name = f"trainlab_user_task_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
        spec_obj = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec_obj)
        spec_obj.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ConfigError(f"task: cannot import module {target!r} ({err})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"task: {target!r} has no function {fn_name!r}")
    return fn


def split_val(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Carve a validation split of `fraction` from `train`, the same for a given seed."""
    n = len(train)
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 1:
        raise ConfigError(f"val_fraction: leaves no training data from {n} examples, got {fraction!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if isinstance(train, TensorDataset):
        return (TensorDataset(*(t[train_idx] for t in train.tensors)),
                TensorDataset(*(t[val_idx] for t in train.tensors)))
    return torch.utils.data.Subset(train, train_idx), torch.utils.data.Subset(train, val_idx)


def load_task(hp: Config) -> Task:
    """The task `hp.task` names, with its validation split in place."""
    return with_val_split(build_task(hp), hp)


def build_task(hp: Config) -> Task:
    """The task `hp.task` names as its builder made it: the validation split not carved yet (so a
    pre-flight check names examples by the builder's own indices)."""
    if hp.task in ("mnist1d", "mnist1d-shuffle"):
        task = _mnist1d(hp, shuffle=hp.task == "mnist1d-shuffle")
    elif hp.task == "digits":
        task = _digits(hp)
    else:
        task = _load_user_builder(hp.task)(hp)
        if not isinstance(task, Task):
            raise ConfigError(f"task: {hp.task!r} returned {type(task).__name__}, expected trainlab.Task")
    for split in ("train", "test"):
        if len(getattr(task, split)) == 0:
            raise ConfigError(f"task {hp.task!r}: the {split} split is empty (0 examples)")
    return task


def with_val_split(task: Task, hp: Config) -> Task:
    """`task` with a validation split: its own, or hp.val_fraction of train carved by hp.split_seed."""
    if task.val is None:
        train, val = split_val(task.train, hp.val_fraction, hp.split_seed)
        task = replace(task, train=train, val=val)
    return task
