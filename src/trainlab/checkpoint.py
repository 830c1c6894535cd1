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
           "CheckpointWriteError", "plain_module", "plain_state_dict", "state_for", "COMPILED_PREFIX"]

COMPILED_PREFIX = "_orig_mod."  # what torch.compile's OptimizedModule puts before every state_dict key


class CheckpointError(ValueError):
    """A checkpoint file is missing or cannot be loaded safely."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written: one line naming the path and the OS error (disk full, read-only
    folder, a file where a folder should be). The previous file at that path is intact. `exit_code`: 1, a
    fault of the machine; 2 when the folder given cannot hold checkpoints at all (bad input)."""

    def __init__(self, path: str | os.PathLike, err: OSError, exit_code: int = 1):
        reason = f"[Errno {err.errno}] {err.strerror}" if err.strerror else str(err)
        super().__init__(f"checkpoint: cannot write {str(path)!r}: {reason}")
        self.path, self.errno, self.exit_code = str(path), err.errno, exit_code

    def __reduce__(self):
        return (_rebuild_write_error, (self.args[0], self.path, self.errno, self.exit_code))


def _rebuild_write_error(message: str, path: str, errno: int | None, exit_code: int) -> CheckpointWriteError:
    err = CheckpointWriteError.__new__(CheckpointWriteError)
    RuntimeError.__init__(err, message)
    err.path, err.errno, err.exit_code = path, errno, exit_code
    return err


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
    write and fsync, not several. A later checkpoint replaces `path` by rename, so the links keep theirs.
    An OSError becomes a CheckpointWriteError naming the file."""
    target = path
    try:
        _write_atomic(data, path)
        for target in more:
            _link_or_write(data, path, target)
    except OSError as err:
        raise CheckpointWriteError(target, err) from None


def _link_or_write(data: memoryview, path: Path, target: Path) -> None:
    """`target` becomes the file at `path` (a hard link, atomically by rename), or a copy of `data` where
    the file system has no hard links."""
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
    just as exact. Call `wait()` before relying on the files.

    A write that fails (disk full, read-only folder) raises its CheckpointWriteError in the caller's thread
    at the next `check()`, `save()`, `wait()` or `close()`: the loop learns of it at its next checkpoint, not
    after the last epoch. `landed` maps each path to the `meta` of the last write that reached it, so the
    caller knows what is actually on disk."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self.landed: dict[str, Any] = {}

    def save(self, state: dict[str, Any], path: str | os.PathLike, *more: str | os.PathLike, meta: Any = None) -> Path:
        """Write `state` to `path` (and to each of `more`: serialized once, e.g. last.pt and best.pt); `meta`
        (what the state is: its epoch, step...) goes into `landed` once the files are written. Raises the
        CheckpointWriteError of an earlier write that failed, before queueing this one."""
        self.check()
        data = _serialize(state)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending = [f for f in self._pending if not f.done() or f.exception()]
        paths = [Path(path), *(Path(m) for m in more)]
        future = self._pool.submit(_write_copies, data, paths[0], paths[1:])

        def landed(done: Future) -> None:
            if not done.cancelled() and done.exception() is None:
                self.landed.update({str(p): meta for p in paths})

        future.add_done_callback(landed)
        self._pending.append(future)
        return Path(path)

    def check(self) -> None:
        """Raise the error of the first write that failed, without waiting for those still running."""
        for future in self._pending:
            if future.done() and future.exception() is not None:
                self._pending.remove(future)
                raise future.exception()

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the pending writes; raise the first failure unless `raise_errors` is False (the run is
        failing already: its first error is the one to report)."""
        try:
            self.wait()
        except Exception:
            if raise_errors:
                raise
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
