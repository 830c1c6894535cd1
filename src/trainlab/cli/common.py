"""Helpers shared by the command modules: the store from --db, JSON and table output, usage errors."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["UsageError", "open_store", "print_json", "table", "printable"]

# Characters a terminal acts on instead of showing: C0 and C1 controls and DEL (ESC starts the ANSI escape
# sequences that recolour, move the cursor, retitle the window or hide text), the line and paragraph
# separators, and the bidirectional overrides that reorder what is shown ("Trojan Source", CVE-2021-42574).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class UsageError(ValueError):
    """A command-line value is wrong; printed as one line, exit status 2."""


def printable(value: Any) -> str:
    r"""`str(value)` safe to print on a terminal: every control character escaped as Python writes it
    (ESC as \x1b, a newline as \n, U+202E as \u202e), everything else as it is. Every table and
    message of the command line that shows a stored or user-given string goes through it.

    >>> print(printable("run\x1b[2J"))
    run\x1b[2J
    """
    text = value if isinstance(value, str) else str(value)
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    ch = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if ch in named:
        return named[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def open_store(args, read_only: bool = False):
    """The store --db names. `read_only` (runs, plot, diagnose, ensemble, search report): opened so that it
    cannot write, never creating, migrating or switching the journal mode of the file; a missing file or
    one that is not a trainlab store is a ValueError of one line (exit 2)."""
    from trainlab.store import Store

    lost_after = getattr(args, "lost_after", None)  # `runs --lost-after S`: when a silent run shows as lost
    if lost_after is None:
        return Store(args.db, read_only=read_only)
    return Store(args.db, read_only=read_only, lost_after_s=lost_after)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain text table; floats shown with 4 decimals."""
    cells = [[("" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r.get(c), float) else printable(r[c]))
              for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def add_db(p):
    p.add_argument("--db", default=None, help="store URL or SQLite file (default: ./trainlab.db)")
    return p
