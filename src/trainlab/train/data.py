"""What the loop feeds the model: each epoch's order, minibatches on the device, micro-batches grouped
for gradient accumulation, and the training examples re-evaluated each epoch.

The order of an epoch is a function of (seed, epoch) only, so resuming mid-run draws the same batches; under
data parallelism every rank computes the same order and takes its shard (`parallel.ddp.shard_order`).

Two paths. A `TensorDataset` of (inputs, targets) is in memory: it is moved to the device once and each batch is
an index into it (no DataLoader, no per-example Python). Any other dataset (map-style, iterable, items that are
tuples or dicts) is read by a DataLoader built once by the task's factory (`Task.make_loader`, DataLoader by
default) with the Config's `num_workers`, `pin_memory` and `persistent_workers`; trainlab hands it the epoch's
order through a sampler, so the order stays a function of (seed, epoch) and the position in it, whatever the
workers. `Feed` turns a batch (tuple or dict) into (inputs, targets) on the device.

    feed = Feed.for_task(task, hp, torch.device("cpu"))
    batches = Batches(task.train, batch_size=32, device=torch.device("cpu"), feed=feed)
    for x, y in batches.iterate(epoch_order(batches.n, seed=0, epoch=0), start=0): ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset, TensorDataset

from trainlab.config import Config, ConfigError
from trainlab.parallel.ddp import shard_order, shard_size

__all__ = ["epoch_order", "Batches", "Feed", "grouped", "accumulate", "train_subset", "check_data", "INPUT_KEYS",
           "TARGET_KEYS", "TRAIN_EVAL_EXAMPLES"]

TRAIN_EVAL_EXAMPLES = 1000  # training examples re-evaluated each epoch for train/acc, in eval mode like val/acc
INPUT_KEYS = ("input", "inputs", "x", "pixel_values", "input_ids", "image", "features")  # dict batches, in this order
TARGET_KEYS = ("label", "labels", "target", "targets", "y")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of training examples in `epoch`: a function of (seed, epoch) only, so resume is exact."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


class Feed:
    """How a task's datasets become (inputs, targets) batches on `device`: the batch's keys (`Task.input_key`,
    `target_key`, or the first of `INPUT_KEYS`/`TARGET_KEYS` a dict batch has), the DataLoader factory and the
    Config's loader options. `Feed()` reads tuples and dicts with the default keys through a plain DataLoader."""

    def __init__(self, input_key: str | int | None = None, target_key: str | int | None = None,
                 make_loader: Callable[..., Iterable] | None = None, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, device: torch.device | str = "cpu"):
        self.input_key, self.target_key = input_key, target_key
        self.make_loader = make_loader or DataLoader
        self.device = torch.device(device)
        self.num_workers, self.persistent = num_workers, persistent_workers and num_workers > 0
        self.pin = pin_memory and self.device.type == "cuda"  # pinning is for copies to a GPU
        self._kept: dict[int, Iterable] = {}

    @classmethod
    def for_task(cls, task, hp: Config, device: torch.device) -> Feed:
        return cls(task.input_key, task.target_key, task.make_loader, hp.num_workers, hp.pin_memory,
                   hp.persistent_workers, device)

    def in_memory(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(inputs, targets) of a TensorDataset (the positions `input_key`/`target_key`, default 0 and 1), else None."""
        if not isinstance(dataset, TensorDataset) or len(dataset.tensors) < 2:
            return None
        ik = 0 if self.input_key is None else self.input_key
        tk = 1 if self.target_key is None else self.target_key
        if not (isinstance(ik, int) and isinstance(tk, int)) or max(ik, tk) >= len(dataset.tensors):
            return None  # check_data names the problem
        return dataset.tensors[ik], dataset.tensors[tk]

    def keys(self, item: Any, split: str = "train") -> tuple[Any, Any]:
        """The (input, target) keys of a dataset item or a batch; one ConfigError line when there are none."""
        if isinstance(item, Mapping):
            present = list(item.keys())
            return (self._key(present, self.input_key, INPUT_KEYS, "input_key", split),
                    self._key(present, self.target_key, TARGET_KEYS, "target_key", split))
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            ik = 0 if self.input_key is None else self.input_key
            tk = 1 if self.target_key is None else self.target_key
            for name, k in (("input_key", ik), ("target_key", tk)):
                if not isinstance(k, int) or not -len(item) <= k < len(item):
                    raise ConfigError(f"task: {name} {k!r} is not a position in the {split} split's items, which "
                                      f"are tuples of {len(item)}; use 0..{len(item) - 1}")
            return ik, tk
        what = f"tuples of {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
        raise ConfigError(f"task: the {split} split's items must be (input, target) tuples or dicts, got {what}")

    @staticmethod
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

    def split(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of a collated batch, on the device."""
        ik, tk = self.keys(batch)
        x, y = batch[ik], batch[tk]
        return x.to(self.device, non_blocking=self.pin), y.to(self.device, non_blocking=self.pin)

    def loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None,
               generator: torch.Generator | None = None, workers: bool = True) -> Iterable:
        """The task's DataLoader over `dataset` in the order of `sampler` (never shuffled by the loader)."""
        extra = {"sampler": sampler} if sampler is not None else {}
        n = self.num_workers if workers else 0
        return self.make_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=n, pin_memory=self.pin,
                                persistent_workers=self.persistent and n > 0, generator=generator, **extra)

    def batches(self, dataset: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every example of `dataset` once, in its own order, in batches on the device (evaluation). With
        persistent workers the loader of each dataset is kept, so its workers serve every evaluation."""
        loader = self._kept.get(id(dataset)) if self.persistent else None
        if loader is None:
            loader = self.loader(dataset, batch_size, generator=torch.Generator().manual_seed(0))
            if self.persistent:
                self._kept[id(dataset)] = loader
        for batch in loader:
            yield self.split(batch)


class _Order(Sampler):
    """The indices of the epoch in progress: set before each pass, read by the DataLoader in the main process
    (so persistent workers see each epoch's order, and the loader draws no random numbers of its own)."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Batches:
    """Minibatches in a given order: tensor slicing for in-memory data, the task's DataLoader otherwise.

    A `TensorDataset` of (inputs, targets) is moved to `device` once; each batch is then an index into it.
    `transform(x) -> x` (the task's `train_transform`) augments every batch's inputs on the device.
    """

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1,
                 feed: Feed | None = None, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 seed: int = 0):
        self.feed = feed or Feed(device=device)
        self.n, self.bs, self.device = len(dataset), batch_size, device
        self.rank, self.world, self.transform, self.seed = rank, world_size, transform, seed
        self.dataset = dataset
        memory = self.feed.in_memory(dataset)
        self.tensors = tuple(t.to(device) for t in memory) if memory is not None else None
        self.iterable = isinstance(dataset, IterableDataset)
        if self.iterable and world_size > 1:
            raise ConfigError("task: an iterable train split cannot be sharded across processes by index; give a "
                              "map-style Dataset (__getitem__, __len__) to train data-parallel")
        self._order = _Order()
        self._gen = torch.Generator()
        self._loader = None  # built on first use, kept: persistent workers live as long as it does

    def __len__(self) -> int:
        """Batches per epoch on this rank (its shard of the data when several processes train)."""
        return math.ceil(shard_size(self.n, self.world) / self.bs)

    def iterate(self, order: torch.Tensor, start: int, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in `order` (the whole epoch's order; this rank takes its shard), from batch `start`.
        `epoch` seeds the loader's own generator (its workers' seeds) and goes to an iterable's `set_epoch`."""
        if self.world > 1:
            order = shard_order(order, self.rank, self.world)
        t = self.transform
        if self.tensors is not None:
            x, y = self.tensors
            order = order.to(self.device)
            for b in range(start, len(self)):
                idx = order[b * self.bs:(b + 1) * self.bs]
                yield (x[idx] if t is None else t(x[idx])), y[idx]
            return
        # the loader's own random numbers (worker seeds) depend on the epoch's order alone, never on torch's
        # global generator, which stays the model's (dropout, augmentation) and is checkpointed
        self._gen.manual_seed(self.seed * 1_000_003 + epoch)
        if self.iterable:
            if hasattr(self.dataset, "set_epoch"):  # the Hugging Face / DistributedSampler convention
                self.dataset.set_epoch(epoch)
            batches = self._iterable_batches(order, start)
        else:
            self._order.indices = order[start * self.bs:].tolist()
            if self._loader is None:
                self._loader = self.feed.loader(self.dataset, self.bs, sampler=self._order, generator=self._gen)
            batches = (self.feed.split(b) for b in self._loader)
        for x, y in batches:
            yield (x if t is None else t(x)), y

    def _iterable_batches(self, order: torch.Tensor, start: int):
        """An iterable dataset has its own order (a function of the epoch, through `set_epoch`, for resume to be
        exact); resuming skips the batches already done."""
        if self._loader is None:
            self._loader = self.feed.loader(self.dataset, self.bs, generator=self._gen)
        for b, batch in enumerate(self._loader):
            if b >= start:
                yield self.feed.split(batch)


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
    TRAIN_EVAL_EXAMPLES), so the train/val gap compares numbers of the same precision. An iterable split
    gives none (it has no indices to take a fixed subset by)."""
    n = min(len(train), n_val, TRAIN_EVAL_EXAMPLES)
    if isinstance(train, TensorDataset):
        return TensorDataset(*(t[:n] for t in train.tensors))
    if isinstance(train, IterableDataset):
        return Subset(train, range(0))
    return Subset(train, range(n))


def _first_item(dataset: Dataset, split: str) -> Any:
    try:
        return next(iter(dataset)) if isinstance(dataset, IterableDataset) else dataset[0]
    except (StopIteration, IndexError):
        raise ConfigError(f"task: the {split} split has no examples") from None


def check_data(task, hp: Config, feed: Feed) -> None:
    """Before a run is opened: one item of each split has an input and a target (tuples or dicts, the keys
    present), and `train_transform` keeps a training batch's shape. One ConfigError line otherwise. Torch's
    random state is left as it was (the transform may draw random numbers)."""
    for split in ("train", "val", "test"):
        dataset = getattr(task, split)
        if dataset is None or feed.in_memory(dataset) is not None:
            continue
        if isinstance(dataset, TensorDataset):
            raise ConfigError(f"task: the {split} split is a TensorDataset of {len(dataset.tensors)} tensor(s); "
                              "give (inputs, targets), or input_key/target_key positions within it")
        feed.keys(_first_item(dataset, split), split)
    if task.train_transform is None:
        return
    memory = feed.in_memory(task.train)
    if memory is not None:
        x = memory[0][:hp.batch_size].to(feed.device)
    else:
        x, _ = feed.split(next(iter(feed.loader(task.train, hp.batch_size, generator=torch.Generator(), workers=False))))
    with torch.random.fork_rng(devices=[]):
        try:
            out = task.train_transform(x)
        except Exception as err:  # the user's code: its error, on one line, with the batch it got
            raise ConfigError(f"train_transform: failed on a batch of shape {tuple(x.shape)}: "
                              f"{type(err).__name__}: {err}") from None
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ConfigError(f"train_transform: must return a batch of the shape it was given, {tuple(x.shape)}, "
                          f"got {_shape(out)}")
