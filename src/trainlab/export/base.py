"""What the exporters share: the missing-extra error, run names, the summary's numbers."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["MissingExtra", "need", "run_label", "scalars", "EXTRA"]

EXTRA = "pip install 'trainlab[export]'"


class MissingExtra(ValueError):
    """A library an exporter needs is not installed (one line: which, and the extra to install)."""


def need(module: str, fmt: str):
    """Import `module` for format `fmt`, or raise MissingExtra naming the extra."""
    from importlib import import_module

    try:
        return import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise MissingExtra(f"{fmt}: needs the {package} package, which is not installed; {EXTRA}") from None


def run_label(run: dict[str, Any]) -> str:
    """A file-system-safe name for a run: run-<id>-<name> (without a store: the name alone)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(run.get("name") or "run"))[:80]
    return f"run-{run['id']}-{name}" if run.get("id") is not None else name


def scalars(summary: dict[str, Any] | None) -> dict[str, float]:
    """The plain numbers of a run's summary (test/acc, seconds, ...), for the formats' final values."""
    out = {}
    for key, value in (summary or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out
