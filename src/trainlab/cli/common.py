"""What every command shares: the global options, the output streams, -o/--out, usage errors, tables.

The convention (docs/cli-and-export.md):

- `--db`, `--threads`, `--quiet`, `--json` are global: accepted before or after the command.
- stdout carries only the result (JSON with `--json`); progress, warnings and notes go to stderr.
  A command writes its result with `out()` / `print_json()`; while it runs, `print()` goes to stderr.
- A closed pipe (`trainlab train | head -1`) never changes a command's outcome: writes to a closed
  stream are dropped, the command finishes, and its exit status is the one it would have had.
- `-o/--out PATH` names every file or folder a command writes, with a default.

This module imports nothing heavy: `trainlab --help` and the light commands must start fast.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import math
import os
import re
import sys
from typing import Any

__all__ = ["UsageError", "open_store", "print_json", "out", "table", "add_out", "GLOBALS", "Streams", "choice",
           "printable", "loggers_from"]

# Characters a terminal acts on instead of showing: C0 and C1 controls and DEL (ESC starts the ANSI escape
# sequences that recolour, move the cursor, retitle the window or hide text), the line and paragraph
# separators, and the bidirectional overrides that reorder what is shown ("Trojan Source", CVE-2021-42574).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class UsageError(ValueError):
    """A command-line value is wrong; printed as one line, exit status 2."""


def _globals(suppress: bool) -> argparse.ArgumentParser:
    """The global options. On the top-level parser they carry the defaults; on each command they are
    declared again with SUPPRESS, so that a value given after the command overrides the one before it
    and an absent one leaves it alone."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("global options (before or after the command)")

    def d(value):
        return argparse.SUPPRESS if suppress else value

    g.add_argument("--db", default=d(None), metavar="URL",
                   help="store URL (postgresql://...) or SQLite file (default: ./trainlab.db)")
    g.add_argument("--threads", type=int, default=d(None), metavar="N",
                   help="torch CPU threads per process (default: $OMP_NUM_THREADS, else 1: the built-in models are "
                        "small, and a second thread mostly waits on a busy core)")
    g.add_argument("--quiet", action="store_true", default=d(False), help="no progress output (stderr)")
    g.add_argument("--json", action="store_true", default=d(False),
                   help="print the result as JSON on stdout (progress stays on stderr)")
    return p


GLOBALS = _globals(suppress=True)  # parents= of every command's parser


def top_level_globals(parser: argparse.ArgumentParser) -> None:
    """Declare the global options, with their defaults, on the top-level parser."""
    for action in _globals(suppress=False)._actions:
        parser._add_action(action)


def add_out(p: argparse.ArgumentParser, default: str | None, help: str, *old: str) -> None:
    """The one output option, `-o/--out PATH`; `old` spellings (--plot, --output) kept as hidden aliases."""
    p.add_argument("-o", "--out", default=default, metavar="PATH", help=help)
    for name in old:
        p.add_argument(name, dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def choice(field: str, value: str, choices) -> str:
    """`value` when it is one of `choices`, else a UsageError naming the field, the value and the choices."""
    if value not in choices:
        raise UsageError(f"{field}: expected one of {', '.join(choices)}, got {value!r}")
    return value


# --- streams --------------------------------------------------------------------------------------

class _Tolerant(io.TextIOBase):
    """A text stream that drops what it cannot write because its reader went away (EPIPE, a closed pipe),
    so that `trainlab train | head -1` finishes the run instead of failing on its next progress line."""

    def __init__(self, stream):
        self._stream = stream
        self.closed_pipe = False

    def write(self, text: str) -> int:
        if not self.closed_pipe:
            try:
                self._stream.write(text)
            except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
                self._gone()
            except OSError as err:
                if err.errno != errno.EPIPE:
                    raise
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.closed_pipe:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._gone()
            except OSError as err:
                if err.errno != errno.EPIPE:
                    raise
                self._gone()

    def _gone(self) -> None:
        self.closed_pipe = True
        try:  # the interpreter flushes stdout/stderr at exit: point the descriptor at /dev/null first
            fd = self._stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):
        return getattr(self._stream, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


class Streams:
    """For the time a command runs: its result goes to the real stdout, everything else to stderr.

    `print()` inside the library (progress lines, tables of intermediate results) lands on stderr; the
    command writes its result with `out()`. Both streams tolerate a closed pipe.
    """

    result = None  # where out() writes; set while a command runs

    def __enter__(self):
        self._saved = sys.stdout, sys.stderr
        Streams.result = _Tolerant(sys.stdout)
        sys.stderr = _Tolerant(sys.stderr)
        sys.stdout = sys.stderr
        return self

    def __exit__(self, *exc):
        try:
            Streams.result.flush()
        finally:
            sys.stdout, sys.stderr = self._saved
            Streams.result = None


def out(text: str = "") -> None:
    """Write a line of the command's result to stdout (a closed pipe is ignored)."""
    stream = Streams.result or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _strict(data: Any) -> Any:
    """NaN and infinities (not JSON: jq and browsers refuse them) as null."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _strict(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_strict(v) for v in data]
    return data


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


def loggers_from(specs: list[str]) -> list:
    """The loggers of --log-to KIND:DEST options (one per option; each is reused by every run it gets)."""
    if not specs:
        return []
    from trainlab.export import logger_from_spec

    return [logger_from_spec(spec) for spec in specs]


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
    """The result as strict JSON on stdout (NaN and infinities as null)."""
    out(json.dumps(_strict(data), indent=2, default=str, allow_nan=False))


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain text table; floats shown with 4 decimals."""
    cells = [[("" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r.get(c), float) else printable(r[c]))
              for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
