"""Pre-flight: a task checked before anything trains or is stored, so that bad data is one line naming the
task and the problem, never a traceback from inside the loop or a "diverged: lower the learning rate".

`preflight(task, hp, model=None)` checks, in this order, and raises `PreflightError` (a `ConfigError`: the
command line prints it as one line and exits 2) at the first problem:

1. every split (train, val when given, test) has examples, and `num_classes` is a positive integer;
2. the data: for in-memory tensors (`TensorDataset`, and subsets of one) every example, otherwise the first
   batch: inputs finite (NaN or Inf named with the example's index and how many examples hold one), and for
   classification (integer labels with a cross-entropy or NLL loss) labels in [0, num_classes), the offending
   value and index named (cross-entropy's ignore_index, -100 by default, is allowed);
3. the model fits in memory: built on the meta device first (no memory), its parameters with their
   gradients and optimizer state against this machine's memory, so `width=1000000` is refused before it
   is allocated;
4. the first batch goes through the model in eval mode without gradients: a shape mismatch names the batch's
   shape and the error; the output must be finite and, for classification, have num_classes scores;
5. the loss of that batch is computed and must be finite.

It changes nothing: the random number generators are restored (fit() initializes its model from hp.seed as
before), and a model handed in keeps its mode and weights. Cost: one model build and one forward pass of at
most 64 examples, plus a vectorized scan of in-memory data (about 10 ms for mnist1d).

>>> preflight(load_task(hp), hp)          # None, or PreflightError("task 'my.py:build': ...")
"""

from __future__ import annotations

import math
import os
import traceback
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, IterableDataset, Subset, TensorDataset, default_collate

from trainlab.config import Config, ConfigError
from trainlab.tasks import Task, build_task, item_keys, with_val_split

__all__ = ["PreflightError", "preflight", "load_checked_task"]

_BATCH = 64            # examples put through the model
_SCAN_ELEMENTS = 1 << 22  # elements per chunk of the scan of in-memory data (bounded extra memory)
_STATE_COPIES = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1, "adam": 2, "adamw": 2}


class PreflightError(ConfigError):
    """The task cannot be trained as given: one line naming the task and the problem (exit status 2)."""


def load_checked_task(hp: Config, model: nn.Module | None = None) -> Task:
    """`load_task(hp)` with `preflight` in between: the task ready to train (validation split carved), or
    one line saying why not. Examples are named by the builder's own indices (checked before the carve).

    An exception raised by a user's `build(hp)` (a file.py:build or pkg.mod:build task) becomes a
    PreflightError naming the task, the exception and where in the user's file it was raised.
    """
    try:
        task = build_task(hp)
    except ConfigError:
        raise
    except Exception as err:
        raise PreflightError(f"task {hp.task!r}: building the task raised {_error_text(err)}{_where(err)}") from None
    preflight(task, hp, model)
    return with_val_split(task, hp)


def preflight(task: Task, hp: Config, model: nn.Module | None = None) -> None:
    """Check `task` (and `model`, default: a fresh `task.build_model()`) before training; see the module.

    Raises PreflightError, one line starting with "task '<name>': ".
    """
    with torch.random.fork_rng(devices=[]):
        _preflight(task, hp, model)


def _preflight(task: Task, hp: Config, model: nn.Module | None) -> None:
    name = _name(task, hp)

    def fail(problem: str) -> PreflightError:
        return PreflightError(f"task {name}: {problem}")

    classes = task.num_classes
    classify = task.kind == "classification" and _classifies(task.loss)
    if task.kind == "classification" and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise fail(f"num_classes must be a positive integer, got {classes!r}")
    # An iterable dataset has no length and no indexable first batch: its items are checked as they are read.
    splits = [(s, getattr(task, s)) for s in ("train", "val", "test")
              if getattr(task, s, None) is not None and not isinstance(getattr(task, s), IterableDataset)]
    for split, data in splits:
        try:
            n = len(data)
        except TypeError:
            if isinstance(data, IterableDataset):  # a stream: read through the task's Feed by the loop
                continue
            raise fail(f"the {split} split has no length ({type(data).__name__} must be a map-style Dataset)") from None
        if n == 0:
            raise fail(f"the {split} split is empty (0 examples)")
    ignore = _ignore_index(task.loss)
    batch = min(_BATCH, hp.batch_size)
    keys = (task.input_key, task.target_key)
    for split, data in splits:  # in-memory tensors: every example; another Dataset: its first batch
        x, y = _tensors(data, keys) or _first_batch(data, split, batch, fail, keys)
        _check_inputs(x, split, fail)
        if classify:
            _check_labels(y, split, classes, ignore, fail)
        elif torch.is_tensor(y) and y.is_floating_point() and not torch.isfinite(y).all():
            raise fail(f"the {split} split's labels hold NaN or Inf")
    if not splits or splits[0][0] != "train":
        return  # an iterable training set: nothing to put through the model here
    x, y = _first_batch(task.train, "train", batch, fail, keys)

    if model is None:
        _check_memory(task, hp, fail)
        try:
            model = task.build_model()
        except Exception as err:
            raise fail(f"building the model raised {_error_text(err)}{_where(err)}") from None
    _forward(task, model, x, y, classes, classify, fail)


def _name(task: Task, hp: Config) -> str:
    return repr(task.name) if task.name == hp.task else f"{task.name!r} ({hp.task})"


def _error_text(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text if len(text) <= 300 else text[:300] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _where(err: BaseException) -> str:
    """' (at file.py line N)': the innermost frame outside trainlab and torch, when there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    torch_dir = os.path.dirname(torch.__file__)
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = os.path.abspath(frame.filename)
        if not path.startswith((here, torch_dir)) and "site-packages" not in path and not frame.filename.startswith("<"):
            return f" (at {os.path.basename(frame.filename)} line {frame.lineno})"
    return ""


def _classifies(loss: Any) -> bool:
    """Whether the task's labels are class indices: a cross-entropy or NLL loss (function or module)."""
    if isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return True
    return loss in (F.cross_entropy, F.nll_loss)


def _ignore_index(loss: Any) -> int:
    return getattr(loss, "ignore_index", -100)


def _tensors(data: Dataset, keys: tuple[Any, Any] = (None, None)) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(inputs, labels) of in-memory data: a TensorDataset, or a Subset of one (indices applied), at the
    task's positions (default 0 and 1)."""
    ik = 0 if keys[0] is None else keys[0]
    tk = 1 if keys[1] is None else keys[1]
    base, idx = (data.dataset, data.indices) if isinstance(data, Subset) else (data, None)
    if not isinstance(base, TensorDataset) or not isinstance(ik, int) or not isinstance(tk, int) \
            or max(ik, tk) >= len(base.tensors):
        return None
    x, y = base.tensors[ik], base.tensors[tk]
    if idx is not None:
        idx = torch.as_tensor(list(idx), dtype=torch.long)
        x, y = x[idx], y[idx]
    return x, y


def _chunks(t: torch.Tensor):
    per = max(1, t[0].numel()) if t.dim() else 1
    rows = max(1, _SCAN_ELEMENTS // per)
    for start in range(0, len(t), rows):
        yield start, t[start:start + rows]


def _check_inputs(x: torch.Tensor, split: str, fail) -> None:
    if not torch.is_tensor(x) or not (x.is_floating_point() or x.is_complex()) or x.dim() == 0:
        return
    first, count, what = None, 0, None
    for start, chunk in _chunks(x):
        bad = ~torch.isfinite(chunk).reshape(len(chunk), -1)
        rows = bad.any(dim=1)
        if rows.any():
            count += int(rows.sum())
            if first is None:
                i = int(rows.nonzero()[0])
                values = chunk[i].reshape(-1)[bad[i]]
                what = "NaN" if torch.isnan(values).any() else "Inf"
                first = (start + i, int(bad[i].sum()))
    if first is not None:
        index, n_bad = first
        raise fail(f"the {split} split's input at index {index} holds {what} ({n_bad} of its values; {count} "
                   f"example{'s' if count > 1 else ''} with NaN or Inf in all): inputs must be finite; clean or "
                   "impute them before training")


def _check_labels(y: torch.Tensor, split: str, classes: int, ignore: int, fail) -> None:
    if not torch.is_tensor(y):
        raise fail(f"the {split} split's labels must be tensors of class indices, got {type(y).__name__}")
    if y.is_floating_point():
        if y.dim() >= 2 and y.shape[-1] == classes:  # class probabilities (soft labels), one row per example
            if not torch.isfinite(y).all():
                raise fail(f"the {split} split's label probabilities hold NaN or Inf")
            return
        raise fail(f"the {split} split's labels are {str(y.dtype).replace('torch.', '')}, but a classification "
                   f"loss needs class indices (torch.long) in [0, {classes}); convert them with .long()")
    if y.dtype == torch.bool or y.is_complex():
        raise fail(f"the {split} split's labels are {str(y.dtype).replace('torch.', '')}, but a classification "
                   f"loss needs class indices (torch.long) in [0, {classes})")
    count, first = 0, None
    for start, chunk in _chunks(y):
        bad = ((chunk < 0) | (chunk >= classes)) & (chunk != ignore)
        rows = bad.reshape(len(chunk), -1).any(dim=1) if chunk.dim() else bad.reshape(1)
        if rows.any():
            count += int(rows.sum())
            if first is None:
                i = int(rows.nonzero()[0])
                value = int(chunk[i].reshape(-1)[bad[i].reshape(-1)][0]) if chunk.dim() else int(chunk)
                first = (start + i, value)
    if first is not None:
        index, value = first
        why = "negative" if value < 0 else f"not below num_classes {classes}"
        raise fail(f"the {split} split's label at index {index} is {value} ({why}; {count} example"
                   f"{'s' if count > 1 else ''} out of range in all): labels must be class indices in [0, {classes})")


def _first_batch(data: Dataset, split: str, k: int, fail, keys: tuple[Any, Any] = (None, None)) -> tuple[Any, Any]:
    k = max(1, min(k, len(data)))
    tensors = _tensors(data, keys)
    if tensors is not None:
        return tensors[0][:k], tensors[1][:k]
    examples = []
    for i in range(k):
        try:
            example = data[i]
        except Exception as err:
            raise fail(f"reading {split} example {i} raised {_error_text(err)}{_where(err)}") from None
        try:  # tuples (input, label) or dicts with the task's keys (tasks.item_keys)
            ik, tk = item_keys(example, keys[0], keys[1], split)
        except ConfigError as err:
            raise fail(str(err).removeprefix("task: ")) from None
        examples.append((example[ik], example[tk]))
    try:
        x, y = default_collate(examples)
    except Exception as err:
        raise fail(f"the first {k} {split} examples cannot be batched: {_error_text(err)}") from None
    return x, torch.as_tensor(y) if not torch.is_tensor(y) else y


def _memory_bytes() -> tuple[int, str] | None:
    """(this machine's memory in bytes, what it is) for the check: physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "memory"
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _check_memory(task: Task, hp: Config, fail) -> None:
    """Refuse a model whose training state cannot fit in this machine's memory, counted on the meta device
    (parameters allocate no memory there). A build that fails on meta (a user model that loads weights or
    mixes in numpy) is not checked here: the real build and forward pass follow."""
    try:
        with torch.device("meta"):
            shadow = task.build_model()
        params = sum(p.numel() * p.element_size() for p in shadow.parameters())
        buffers = sum(b.numel() * b.element_size() for b in shadow.buffers())
    except Exception:
        return
    device = hp.device if hp.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        total, where = torch.cuda.get_device_properties(index).total_memory, f"GPU {index} has"
    else:
        found = _memory_bytes()
        if found is None:
            return
        total, where = found[0], "this machine has"
    # weights, gradients, the optimizer's state, the best weights kept in memory (and an EMA copy)
    copies = 3 + _STATE_COPIES.get(hp.optimizer, 2) + (1 if hp.ema else 0)
    need = params * copies + buffers
    if need > total:
        builtin = task.info.get("model") if isinstance(task.info, dict) else None
        width = f", width {hp.width}" if hp.width is not None else ""
        what = f"the model ({builtin}{width})" if builtin else "the model"
        raise fail(f"{what} has {_size(params)} of parameters; training it needs about "
                   f"{_size(need)} (weights, gradients, {hp.optimizer} state, best copy), and {where} "
                   f"{_size(total)}: use a smaller model or width")


def _forward(task: Task, model: nn.Module, x: Any, y: Any, classes: int, classify: bool, fail) -> None:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "meta":
        return
    xb = x.to(device) if torch.is_tensor(x) else x
    yb = y.to(device) if torch.is_tensor(y) else y
    shape = f"({', '.join(map(str, x.shape))})" if torch.is_tensor(x) else type(x).__name__
    built_for = task.info.get("input_shape") if isinstance(task.info, dict) else None
    hint = f"; the model was built for examples of shape {tuple(built_for)}" if built_for else ""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                out = model(xb)
            except Exception as err:  # RuntimeError from a layer, or a user model's own error
                raise fail(f"the model does not accept the train inputs: a batch of shape {shape} (dtype "
                           f"{str(getattr(x, 'dtype', '?')).replace('torch.', '')}) raised {_error_text(err)}"
                           f"{hint}") from None
            if not torch.is_tensor(out):
                raise fail(f"the model returns a {type(out).__name__}, not a tensor of scores")
            if out.is_floating_point() and not torch.isfinite(out).all():
                raise fail(f"the model's output on the first train batch (shape {shape}) holds NaN or Inf before "
                           "any update: check the inputs' scale and the model's initialization")
            if classify and torch.is_tensor(y) and not y.is_floating_point() and y.dim() == 1:
                if out.dim() != 2 or out.shape[0] != len(y) or out.shape[1] != classes:
                    got = "x".join(map(str, out.shape))
                    raise fail(f"the model outputs scores of shape {got} for a batch of {len(y)}, but the task has "
                               f"{classes} classes: expected {len(y)}x{classes}")
            try:
                loss = task.loss(out, yb)
            except Exception as err:
                raise fail(f"the loss fails on the first train batch: {_error_text(err)}") from None
            if torch.is_tensor(loss) and loss.numel() == 1 and not math.isfinite(float(loss)):
                raise fail(f"the loss of the first train batch is {float(loss)} before any update (inputs and "
                           "labels are finite): check the loss function and the model's output")
    finally:
        model.train(training)
