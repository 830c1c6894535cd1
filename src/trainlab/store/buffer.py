"""MetricBuffer: metric rows collected in memory and written to a Store in batches.

The training loop adds a row per step and metric; only `flush` (at epoch ends, when full, before the run
finishes) writes, in one transaction through `Store.log_metrics`.

With ``retry=True`` (what a training run uses) a database outage does not raise: the rows (and the run
fields that go with them) stay in memory and the next flushes retry with exponential backoff (1 s, 2 s,
4 s ... at most `MAX_BACKOFF_S` between tries); when the database is back they land in one transaction, as
if nothing happened. `over_limit` says when the rows held reach ``limit``: the caller then stops (memory is
bounded). Only transient faults are retried (`errors.classify`): a bug still raises at once.
"""

from __future__ import annotations

import time
from typing import Any

from trainlab.store.errors import StoreFault, classify
from trainlab.store.store import Store

__all__ = ["MetricBuffer", "MAX_BACKOFF_S"]

MAX_BACKOFF_S = 30.0  # the longest wait between two tries during an outage


class MetricBuffer:
    """Collects metric rows in memory and writes them in batches: the training loop must never write per step.

    ``add`` only appends a tuple; values are converted to float at flush, so a
    caller may hand in anything ``float()`` accepts. Flush at epoch ends and
    before the run finishes; rows stay buffered if a flush fails.
    ``beat``: each write also sets the run's heartbeat. ``retry``/``limit``: see the module docstring.
    """

    def __init__(self, store: Store, run_id: int, max_rows: int = 2000, *, retry: bool = False,
                 limit: int | None = None, beat: bool = False):
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
            raise ValueError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        self.store = store
        self.run_id = run_id
        self.max_rows = max_rows
        self.retry, self.limit, self.beat = retry, limit, beat
        self._rows: list[tuple] = []
        self._fields: dict[str, Any] = {}  # run fields waiting for the next write (latest wins)
        self.outage_since: float | None = None  # time.monotonic() of the first failed write of an outage
        self.error: StoreFault | None = None    # the last write's fault, during an outage
        self._backoff = 0.0
        self._retry_at = 0.0

    def add(self, step: int, epoch: int | None, key: str, value: float) -> None:
        """Buffer one row; writes the buffer when it holds max_rows rows (during an outage, when a retry is due)."""
        self._rows.append((step, epoch, key, value))
        if len(self._rows) >= self.max_rows:
            self.flush()

    def flush(self, *, wait: bool = False, **run_fields: Any) -> bool:
        """Write every buffered row in one transaction, with ``run_fields`` set on the run in it; whether they
        were written. During an outage (``retry``) a flush before the next try is due only keeps them
        (``wait``: tries now); a transient fault keeps them and schedules the next try."""
        self._fields.update(run_fields)
        if not self._rows and not self._fields:
            return True
        if self.outage_since is not None and not wait and time.monotonic() < self._retry_at:
            return False
        try:
            self.store.log_metrics(self.run_id, self._rows, beat=self.beat, **self._fields)
        except Exception as err:
            fault = classify(err, self.store.url) if self.retry else None
            if fault is None or not fault.transient:
                raise
            self.error = fault
            self.outage_since = self.outage_since or time.monotonic()
            self._backoff = min(max(1.0, 2 * self._backoff), MAX_BACKOFF_S)
            self._retry_at = time.monotonic() + self._backoff
            return False
        self._rows, self._fields = [], {}
        self.outage_since, self.error, self._backoff = None, None, 0.0
        return True

    def drain(self, timeout_s: float) -> bool:
        """Flush, retrying through an outage with backoff for up to ``timeout_s`` seconds; whether it landed."""
        deadline = time.monotonic() + timeout_s
        while not self.flush(wait=True):
            pause = min(self._backoff, deadline - time.monotonic())
            if pause <= 0:
                return False
            time.sleep(pause)
        return True

    @property
    def outage_s(self) -> float:
        """Seconds since the first failed write of the current outage (0 when the store answers)."""
        return 0.0 if self.outage_since is None else time.monotonic() - self.outage_since

    @property
    def over_limit(self) -> bool:
        """Whether the rows held reached ``limit`` (never without one)."""
        return self.limit is not None and len(self._rows) >= self.limit

    def __len__(self) -> int:
        return len(self._rows)

    def __enter__(self) -> MetricBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
