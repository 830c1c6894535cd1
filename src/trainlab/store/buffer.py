"""MetricBuffer: metric rows collected in memory and written to a Store in batches.

The training loop adds a row per step and metric; only `flush` (at epoch ends, when full, before the run
finishes) writes, in one transaction through `Store.log_metrics`.
"""

from __future__ import annotations

from typing import Any

from trainlab.store.store import Store

__all__ = ["MetricBuffer"]


class MetricBuffer:
    """Collects metric rows in memory and writes them in batches: the training loop must never write per step.

    ``add`` only appends a tuple; values are converted to float at flush, so a
    caller may hand in anything ``float()`` accepts. Flush at epoch ends and
    before the run finishes; rows stay buffered if a flush fails.
    """

    def __init__(self, store: Store, run_id: int, max_rows: int = 2000):
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
            raise ValueError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        self.store = store
        self.run_id = run_id
        self.max_rows = max_rows
        self._rows: list[tuple] = []

    def add(self, step: int, epoch: int | None, key: str, value: float) -> None:
        """Buffer one row; writes the buffer when it holds max_rows rows."""
        self._rows.append((step, epoch, key, value))
        if len(self._rows) >= self.max_rows:
            self.flush()

    def flush(self, **run_fields: Any) -> None:
        """Write every buffered row in one transaction, with ``run_fields`` set on the run in it."""
        if self._rows or run_fields:
            self.store.log_metrics(self.run_id, self._rows, **run_fields)
            self._rows = []

    def __len__(self) -> int:
        return len(self._rows)

    def __enter__(self) -> MetricBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
