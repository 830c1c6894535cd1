"""Generated datasets cached on disk as .npz, so a built-in task is generated once per machine.

The cache lives in ``$XDG_CACHE_HOME/trainlab`` (``~/.cache/trainlab``). A file is written whole to a temporary
name and renamed, so a second process never reads half of one; a cache that cannot be read or written (a full
disk, a read-only home) only costs the generation again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["cache_dir", "cached_arrays"]


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "trainlab"


def cached_arrays(name: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays cached as ``<name>.npz``; made by ``make()`` and cached when missing or unreadable."""
    path = cache_dir() / f"{name}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError):
            pass
    arrays = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass
    return arrays
