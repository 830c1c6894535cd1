"""Tasks: a model factory, train/val/test datasets, a loss and the number of classes.

Built-in tasks generate or ship their data (nothing is downloaded, ever):
`mnist1d` (procedurally generated, 4000 train / 1000 test), `mnist1d-shuffle` (the same signals with
their 40 positions permuted, which removes spatial structure), `digits` (scikit-learn's 8x8 digits) and
`shapes32` (procedurally generated 3x32x32 colour images of 10 shape classes, 10000 train / 2000 test;
see `trainlab.shapes32`; `augment: flip_crop` flips and shifts its training batches).
A user task is `path/to/file.py:build` or `pkg.module:build`, where `build(hp)` returns a `Task`.
The validation split is carved from the training data; the test split is kept for the final model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from trainlab.config import Config, ConfigError
from trainlab.datacache import cached_arrays
from trainlab.metrics import Metric, TaskMetrics, regression_loss, resolve_metrics
from trainlab.models import MODELS, build_model

__all__ = ["Task", "BUILTIN_TASKS", "load_task", "build_task", "with_val_split", "split_val", "mnist1d_arrays",
           "model_label", "dataset_size", "checked", "check_task", "item_keys", "INPUT_KEYS",
           "TARGET_KEYS"]

BUILTIN_TASKS = ("mnist1d", "mnist1d-shuffle", "digits", "shapes32")


@dataclass
class Task:
    """What to learn. `build_model()` returns a fresh, randomly initialized model each call.

    `train`, `val` and `test` are any torch Datasets: map-style (`__getitem__` and `__len__`) or iterable
    (an `IterableDataset` with `__len__`, the examples per epoch). Items are `(input, target)` tuples or dicts
    (the Hugging Face convention); `input_key` / `target_key` name the fields (a key for dicts, a position for
    tuples), found by common names when None (`INPUT_KEYS`, `TARGET_KEYS`). A `TensorDataset` of (inputs,
    targets) is in memory and is indexed on the device directly (the fast path); every other dataset is read
    through `make_loader` (a DataLoader factory, `torch.utils.data.DataLoader` itself by default, e.g.
    `functools.partial(DataLoader, collate_fn=pad)`), with `num_workers`, `pin_memory` and `persistent_workers`
    from the Config, in the order trainlab gives it (a sampler), so resume and data parallelism stay exact.

    `val` may be None: `load_task` then carves it from `train` (Config.val_fraction, fixed by split_seed).
    `kind` is "classification" (`num_classes` classes, cross-entropy, accuracy) or "regression" (mean squared
    error; mse and mae); `metrics` replaces the kind's metrics (names such as "acc", "top5", "mse", "mae",
    `metrics.Metric`s or functions `fn(outputs, targets) -> batch mean`); the first is the headline metric.
    `loss` defaults to the kind's. `train_transform(x) -> x` augments each training batch of inputs on the
    device (validation and test are never transformed); it must keep the batch's shape. `model_name` labels the
    task's runs (`<task>-<model_name>`); None: the Config's model for built-in tasks, else the model's class.
    """

    name: str
    build_model: Callable[[], nn.Module]
    train: Dataset
    test: Dataset
    num_classes: int = 0
    val: Dataset | None = None
    loss: Callable[..., torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    kind: str = "classification"
    metrics: Sequence[str | Metric | Callable] | None = None
    input_key: str | int | None = None
    target_key: str | int | None = None
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    make_loader: Callable[..., Iterable] | None = None
    model_name: str | None = None

    def __post_init__(self) -> None:
        if self.loss is None:
            self.loss = regression_loss if self.kind == "regression" else F.cross_entropy

    @property
    def task_metrics(self) -> TaskMetrics:
        """The kind and the resolved metrics (`metrics.TaskMetrics`)."""
        return TaskMetrics(self.kind, resolve_metrics(self.kind, self.metrics))


def model_label(task: Task, hp: Config, model: nn.Module | None = None) -> str:
    """The model's name in a run's label: the task's `model_name`, the Config's model for a built-in task,
    else the class of the model the task builds (a user task's model is its own, not `hp.model`)."""
    if task.model_name:
        return task.model_name
    if "model" in task.info:
        return str(task.info["model"])
    return type(model).__name__.lower() if model is not None else hp.model


@lru_cache(maxsize=8)
def _mnist1d_cached(key: str) -> dict[str, np.ndarray]:
    overrides = json.loads(key)

    def make() -> dict[str, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        for k, v in overrides.items():
            if not hasattr(args, k):
                raise ValueError(f"mnist1d: unknown generator argument {k!r}")
            setattr(args, k, v)
        data = make_dataset(args, template=overrides.get("templates"))
        return {k: np.asarray(data[k], dtype=np.float32 if k.startswith("x") else np.int64)
                for k in ("x", "y", "x_test", "y_test")}

    return cached_arrays(f"mnist1d-{hashlib.sha1(key.encode()).hexdigest()[:12]}", make)


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


def _shapes32(hp: Config) -> Task:
    from trainlab.shapes32 import shapes32_arrays

    d = shapes32_arrays()
    x, xt = d["x"].astype(np.float32) / 255.0, d["x_test"].astype(np.float32) / 255.0
    mean, std = x.mean(axis=(0, 2, 3), keepdims=True), x.std(axis=(0, 2, 3), keepdims=True)  # per channel
    return _builtin("shapes32", hp, (x - mean) / std, d["y"], (xt - mean) / std, d["y_test"], 10,
                    augment=hp.augment)


def _builtin(name: str, hp: Config, x, y, x_test, y_test, num_classes: int, augment: str = "none") -> Task:
    if hp.model not in MODELS:
        raise ConfigError(f"model: unknown model {hp.model!r} for task {name!r}; choose one of {', '.join(MODELS)}")
    if hp.augment != augment:
        raise ConfigError(f"augment: the task {name!r} has no label-preserving {hp.augment} (flips change what "
                          f"its examples mean); use it with shapes32, got {hp.augment!r}")
    shape = tuple(x.shape[1:])
    return Task(
        name=name,
        build_model=lambda: build_model(hp.model, shape, num_classes, hp.width, hp.dropout, augment),
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


def dataset_size(dataset: Dataset, split: str = "train") -> int:
    """The examples in `dataset`; an iterable dataset must say how many (`__len__`)."""
    try:
        return len(dataset)
    except TypeError:
        raise ConfigError(f"task: the {split} split is a {type(dataset).__name__} without __len__; define __len__ "
                          "(its examples per epoch), so the schedule can count updates") from None


def split_val(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Carve a validation split of `fraction` from `train`, the same for a given seed."""
    if isinstance(train, IterableDataset):
        raise ConfigError(f"task: the train split is a {type(train).__name__} (iterable: no indices to carve a "
                          "validation split from); give the Task a val dataset")
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
    elif hp.task == "shapes32":
        task = _shapes32(hp)
    else:
        task = _load_user_builder(hp.task)(hp)
        if not isinstance(task, Task):
            raise ConfigError(f"task: {hp.task!r} returned {type(task).__name__}, expected trainlab.Task")
    return check_task(task, hp)


def check_task(task: Task, hp: Config) -> Task:
    """`task` with its kind, metrics and sizes checked (one ConfigError line each); the validation split not carved."""
    task.task_metrics  # noqa: B018 - resolving them is the check (kind, names, modes)
    if task.kind == "classification" and task.num_classes < 2:
        raise ConfigError(f"task: a classification task needs num_classes >= 2 (or kind='regression'), "
                          f"got num_classes={task.num_classes!r}")
    for split in ("train", "test"):
        if dataset_size(getattr(task, split), split) == 0:
            raise ConfigError(f"task {task.name!r}: the {split} split is empty (0 examples)")
    _check_options(task, hp)
    return task


_BUILTIN_METRIC = re.compile(r"(acc|top\d+|mse|mae)(_ema)?")


def _takes(fn: Callable, name: str) -> bool:
    """Whether `fn` accepts the keyword `name` (True when its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _check_options(task: Task, hp: Config) -> None:
    """Options that only some tasks can honour, refused in one line before anything runs: label smoothing
    of a loss that has none (a regression's), and early stopping on a built-in metric the task does not
    measure (val/top5 of a regression, val/mse of a classifier)."""
    from trainlab.metrics import for_task

    if hp.label_smoothing:
        if task.kind != "classification":
            raise ConfigError(f"label_smoothing: smooths the class targets of a classification loss; task "
                              f"{task.name!r} is a {task.kind} task (set label_smoothing to 0), got {hp.label_smoothing!r}")
        if not _takes(task.loss, "label_smoothing"):
            loss = getattr(task.loss, "__name__", type(task.loss).__name__)
            raise ConfigError(f"label_smoothing: task {task.name!r}'s loss {loss} takes no label_smoothing argument "
                              f"(set label_smoothing to 0, or give the loss one), got {hp.label_smoothing!r}")
    tm = task.task_metrics
    metric = for_task(hp, tm)[0].early_stop_metric
    split, _, name = metric.partition("/")
    measured = {m.name for m in tm.metrics}
    found = _BUILTIN_METRIC.fullmatch(name)
    if split in ("val", "train") and found and found.group(1) not in measured:
        raise ConfigError(f"early_stop_metric: task {task.name!r} ({task.kind}) does not measure {found.group(1)}; "
                          f"it measures loss{''.join(', ' + n for n in sorted(measured))}, got {metric!r}")


def checked(task: Task, hp: Config) -> Task:
    """A task handed in (not built from `hp.task`): checked, and its validation split in place."""
    return with_val_split(check_task(task, hp), hp)


def with_val_split(task: Task, hp: Config) -> Task:
    """`task` with a validation split: its own, or hp.val_fraction of train carved by hp.split_seed."""
    if task.val is None:
        train, val = split_val(task.train, hp.val_fraction, hp.split_seed)
        task = replace(task, train=train, val=val)
    return task


INPUT_KEYS = ("input", "inputs", "x", "pixel_values", "input_ids", "image", "features")  # dict batches, in this order
TARGET_KEYS = ("label", "labels", "target", "targets", "y")


def item_keys(item: Any, input_key: str | int | None = None, target_key: str | int | None = None,
              split: str = "train") -> tuple[Any, Any]:
    """The (input, target) keys of a dataset item or a batch: `input_key`/`target_key`, else the first of
    INPUT_KEYS/TARGET_KEYS a dict has, or positions 0 and 1 of a tuple; one ConfigError line when there are none."""
    if isinstance(item, Mapping):
        present = list(item.keys())
        return (_key(present, input_key, INPUT_KEYS, "input_key", split),
                _key(present, target_key, TARGET_KEYS, "target_key", split))
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        ik = 0 if input_key is None else input_key
        tk = 1 if target_key is None else target_key
        for name, k in (("input_key", ik), ("target_key", tk)):
            if not isinstance(k, int) or not -len(item) <= k < len(item):
                raise ConfigError(f"task: {name} {k!r} is not a position in the {split} split's items, which "
                                  f"are tuples of {len(item)}; use 0..{len(item) - 1}")
        return ik, tk
    what = f"tuples of {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
    raise ConfigError(f"task: the {split} split's items must be (input, target) tuples or dicts, got {what}")


def _key(present: list, chosen: Any, defaults: tuple[str, ...], name: str, split: str) -> Any:
    if chosen is not None:
        if chosen in present:
            return chosen
        raise ConfigError(f"task: {name} {chosen!r} is not in the {split} split's items; keys present: {present}")
    for k in defaults:
        if k in present:
            return k
    raise ConfigError(f"task: the {split} split's items have no {name.split('_')[0]} key among {list(defaults)}; "
                      f"keys present: {present}; set Task({name}=...)")
