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
import sys
from typing import Any

__all__ = ["UsageError", "open_store", "print_json", "out", "table", "add_out", "GLOBALS", "Streams", "choice"]


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


def print_json(data: Any) -> None:
    """The result as strict JSON on stdout (NaN and infinities as null)."""
    out(json.dumps(_strict(data), indent=2, default=str, allow_nan=False))


def open_store(args, *, read_only: bool = False):
    from trainlab.store import Store

    return Store(args.db, read_only=read_only)


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain text table; floats shown with 4 decimals."""
    cells = [[("" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r[c]))
              for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
