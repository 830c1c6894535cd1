"""Checkpoints: written atomically, loaded with `weights_only=True`, never with an unsafe fallback.

A checkpoint holds everything exact resume needs: model, optimizer, step, epoch, position in the
epoch, early-stopping state and the random number generators (numpy's as plain lists, so the safe
loader accepts it).
"""

from __future__ import annotations

import io
import os
import random
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "CheckpointError", "AsyncCheckpointer",
           "plain_module", "plain_state_dict", "state_for", "COMPILED_PREFIX"]

COMPILED_PREFIX = "_orig_mod."  # what torch.compile's OptimizedModule puts before every state_dict key


class CheckpointError(ValueError):
    """A checkpoint file is missing or cannot be loaded safely."""


def _write_atomic(data: memoryview | bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _serialize(state: dict[str, Any]) -> memoryview:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer()


def _write_copies(data: memoryview, path: Path, more: list[Path]) -> None:
    """Write `path`, then give each of `more` the same file as a hard link (atomically, by rename): one
    write and fsync, not several. A later checkpoint replaces `path` by rename, so the links keep theirs."""
    _write_atomic(data, path)
    for target in more:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
        try:
            os.link(path, tmp)
            os.replace(tmp, target)
        except OSError:  # a file system without hard links
            if tmp.exists():
                tmp.unlink()
            _write_atomic(data, target)
        else:
            _fsync_dir(target.parent)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, flush, fsync, `os.replace`.

    A process killed during the write leaves the previous file at `path` intact and loadable.
    """
    return _write_atomic(_serialize(state), Path(path))


class AsyncCheckpointer:
    """Serializes a checkpoint at once (a consistent snapshot of the training state) and writes it,
    atomically as `save_checkpoint` does, on one background thread in submission order, so fsync never
    stalls training. A kill before a write lands leaves the previous checkpoint, from which resume is
    just as exact. Call `wait()` before relying on the files."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def save(self, state: dict[str, Any], path: str | os.PathLike, *more: str | os.PathLike) -> Path:
        """Write `state` to `path` (and to each of `more`: serialized once, e.g. last.pt and best.pt)."""
        data = _serialize(state)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending = [f for f in self._pending if not f.done() or f.exception()]
        self._pending.append(self._pool.submit(_write_copies, data, Path(path), [Path(m) for m in more]))
        return Path(path)

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def plain_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside torch.compile's wrapper (`OptimizedModule._orig_mod`), or `model` itself.

    Checkpoints hold the plain module's state_dict, so a compiled model's weights load into an uncompiled
    one (ensembles, transfer) and back.
    """
    while hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
        model = model._orig_mod
    return model


def plain_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with torch.compile's `_orig_mod.` removed from every key (a compiled submodule puts it
    mid-key: "stage1._orig_mod.0.weight"), for checkpoints written from a compiled model's own state_dict.

    >>> list(plain_state_dict({"_orig_mod.head.weight": 0, "a._orig_mod.b": 1}))
    ['head.weight', 'a.b']
    """
    if not any(COMPILED_PREFIX in k for k in state):
        return state
    return {k.replace(COMPILED_PREFIX, ""): v for k, v in state.items()}


def state_for(model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """`state` (plain keys, or keys with `_orig_mod.`) renamed to the keys `model` itself uses, so a checkpoint
    loads into a plain model, a compiled one, or one with compiled submodules alike."""
    own = {k.replace(COMPILED_PREFIX, ""): k for k in model.state_dict()}
    renamed = {}
    for k, v in state.items():
        plain = k.replace(COMPILED_PREFIX, "")
        renamed[own.get(plain, plain)] = v
    return renamed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; a missing or unsafe file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: no such file {str(path)!r}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint: cannot load {str(path)!r} safely: {first}") from None


def rng_state() -> dict[str, Any]:
    """The state of every generator the loop draws from: torch (CPU and CUDA), numpy, Python."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
