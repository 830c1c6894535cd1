"""Helpers shared by the command modules: the store from --db, JSON and table output, usage errors."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["UsageError", "open_store", "print_json", "table"]


class UsageError(ValueError):
    """A command-line value is wrong; printed as one line, exit status 2."""


def open_store(args):
    from trainlab.store import Store

    lost_after = getattr(args, "lost_after", None)  # `runs --lost-after S`: when a silent run shows as lost
    return Store(args.db) if lost_after is None else Store(args.db, lost_after_s=lost_after)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain text table; floats shown with 4 decimals."""
    cells = [[("" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r[c]))
              for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def add_db(p):
    p.add_argument("--db", default=None, help="store URL or SQLite file (default: ./trainlab.db)")
    return p
