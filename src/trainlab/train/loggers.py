"""Loggers: what `fit(..., loggers=[...])` streams a run to (TensorBoard, MLflow, CSV: `trainlab.export`).

A logger is fed at the points where the loop already reads its numbers: every few dozen steps (when the
per-step losses are drained from the device) and at each epoch's end. It never costs anything per step.
The same rows go to the store; a logger sees them whether or not there is a store.

    fit(task, hp, store=store, loggers=[TensorBoardLogger("tb/")])

A logger has three methods:

- `start(run)`: the run begins (or resumes); `run` has id (None without a store), name, study, kind,
  hparams and status "running"; a resumed run adds `resume_step`, the first update it trains again (rows
  from that step on were written by the process that stopped, and are written again now).
- `log(rows)`: metric rows `(step, epoch, key, value)`, in the order they were measured.
- `finish(run)`: the run ended; `run` adds status, reason, best_metric, best_epoch, epochs and summary.

A logger is a guest: when one of its methods raises (its folder unwritable, the disk full, its tracking
store gone), it is dropped with one warning line on stderr and the run goes on as if it had none. The store
still has every row (`trainlab export FORMAT RUN` writes them out again later); the run's summary lists the
dropped loggers under "logger_faults".
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, Sequence

from trainlab.store import MetricBuffer

__all__ = ["Logger", "LoggedBuffer", "describe"]

Row = tuple[int, "int | None", str, float]


class Logger(Protocol):
    def start(self, run: dict[str, Any]) -> None: ...
    def log(self, rows: Sequence[Row]) -> None: ...
    def finish(self, run: dict[str, Any]) -> None: ...


def describe(logger: Any) -> str:
    """A logger in a few words: its format (or class) and where it writes."""
    kind = getattr(logger, "fmt", None) or type(logger).__name__
    where = getattr(logger, "where", None) or getattr(logger, "root", None) or getattr(logger, "uri", None)
    return f"{kind} logger" + (f" ({where})" if where else "")


def _one_line(err: BaseException) -> str:
    """The error and, when it wraps another (MLflow wraps SQLAlchemy's, which wraps sqlite3's), the root
    cause: one line. An OSError says what it is itself (what it was handling, e.g. mkdir's first try, is not
    the cause)."""
    root, seen = err, {id(err)}
    while not isinstance(root, OSError) and (root.__cause__ or root.__context__) is not None \
            and id(root.__cause__ or root.__context__) not in seen:
        root = root.__cause__ or root.__context__
        seen.add(id(root))
    text = (str(root).strip().splitlines() or [""])[0]
    head = type(err).__name__ + (f": {type(root).__module__}.{type(root).__name__}" if root is not err else "")
    return f"{head}: {text}"[:300]


class LoggedBuffer:
    """The loop's metric buffer when loggers listen: rows go to the store's buffer (if any) and, at each
    `publish()` or `flush()`, to every logger. Same interface as MetricBuffer (`add`, `flush`).

    Every call to a logger goes through `call`: a logger that raises is dropped (one warning line on
    stderr, the fault kept in `faults`), never the run."""

    def __init__(self, buffer: MetricBuffer | None, loggers: Sequence[Logger], run_id: int | None = None):
        self.buffer = buffer
        self.loggers = list(loggers)
        self.run_id = run_id
        self.faults: list[str] = []  # one line per dropped logger
        self._rows: list[Row] = []
        self._step: int | None = None  # the last step handed over, for the warning

    def call(self, method: str, *args: Any) -> None:
        """`logger.method(*args)` on every logger still listening; one that raises is dropped."""
        for logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as err:  # a guest's fault: it leaves, the run goes on
                self.loggers.remove(logger)
                self._fault(logger, method, err)

    def _fault(self, logger: Any, method: str, err: Exception) -> None:
        when = {"start": "at the start", "finish": "at the end"}.get(method, f"writing rows up to step {self._step}")
        fault = f"{describe(logger)} failed {when}: {_one_line(err)}"
        self.faults.append(fault)
        again = ""
        fmt = getattr(logger, "fmt", None)
        if self.run_id is not None and self.buffer is not None and fmt:
            again = f" (write it out later: trainlab export {fmt} {self.run_id})"
        print(f"warning: {fault}; the run goes on without it, the store keeps every row{again}",
              file=sys.stderr, flush=True)

    def add(self, step: int, epoch: int | None, key: str, value: float) -> None:
        self._rows.append((step, epoch, key, value))
        if self.buffer is not None:
            self.buffer.add(step, epoch, key, value)

    def publish(self) -> None:
        """Hand the rows added since the last call to every logger."""
        if self._rows:
            rows, self._rows = self._rows, []
            self._step = rows[-1][0]
            self.call("log", rows)

    def flush(self, **run_fields: Any) -> None:
        if self.buffer is not None:
            self.buffer.flush(**run_fields)
        self.publish()
