"""Loggers: what `fit(..., loggers=[...])` streams a run to (TensorBoard, MLflow, CSV: `trainlab.export`).

A logger is fed at the points where the loop already reads its numbers: every few dozen steps (when the
per-step losses are drained from the device) and at each epoch's end. It never costs anything per step.
The same rows go to the store; a logger sees them whether or not there is a store.

    fit(task, hp, store=store, loggers=[TensorBoardLogger("tb/")])

A logger has three methods:

- `start(run)`: the run begins (or resumes); `run` has id (None without a store), name, study, kind,
  hparams and status "running".
- `log(rows)`: metric rows `(step, epoch, key, value)`, in the order they were measured.
- `finish(run)`: the run ended; `run` adds status, reason, best_metric, best_epoch, epochs and summary.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from trainlab.store import MetricBuffer

__all__ = ["Logger", "LoggedBuffer"]

Row = tuple[int, "int | None", str, float]


class Logger(Protocol):
    def start(self, run: dict[str, Any]) -> None: ...
    def log(self, rows: Sequence[Row]) -> None: ...
    def finish(self, run: dict[str, Any]) -> None: ...


class LoggedBuffer:
    """The loop's metric buffer when loggers listen: rows go to the store's buffer (if any) and, at each
    `publish()` or `flush()`, to every logger. Same interface as MetricBuffer (`add`, `flush`)."""

    def __init__(self, buffer: MetricBuffer | None, loggers: Sequence[Logger]):
        self.buffer = buffer
        self.loggers = list(loggers)
        self._rows: list[Row] = []

    def add(self, step: int, epoch: int | None, key: str, value: float) -> None:
        self._rows.append((step, epoch, key, value))
        if self.buffer is not None:
            self.buffer.add(step, epoch, key, value)

    def publish(self) -> None:
        """Hand the rows added since the last call to every logger."""
        if self._rows:
            rows, self._rows = self._rows, []
            for logger in self.loggers:
                logger.log(rows)

    def flush(self, **run_fields: Any) -> None:
        if self.buffer is not None:
            self.buffer.flush(**run_fields)
        self.publish()
