"""The dashboard's series cache: a run's rendered series, read and drawn once while the run is unchanged.

Every write to a run's metrics or row moves its `updated` time, so a finished run is read from the
database, downsampled and turned into JSON once; a running one again only when it has written since.
A study page of 200 runs is then mostly string joining.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from trainlab.store import Store

__all__ = ["SeriesCache"]

_READ_THREADS = min(4, os.cpu_count() or 1)  # threads reading a cold study's series
_RUNS_PER_THREAD = 25  # fewer runs than this per thread are read in one


class SeriesCache:
    """Rendered series per (run, keys, points, render), valid while the run's `updated` time is unchanged.

    >>> cache = SeriesCache(store)
    >>> cache.get(store.runs(study="sweep"), ("train/loss",), 150, render)   # run id -> render(series)
    """

    def __init__(self, store: Store, max_entries: int = 20_000):
        self.store = store
        self.max_entries = max_entries
        self.threads = 1 if store.in_memory else _READ_THREADS
        self._entries: OrderedDict[tuple, tuple[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, runs: list[dict], keys: tuple[str, ...], points: int,
            render: Callable[[dict[str, dict]], Any]) -> dict[int, Any]:
        """run id -> render({key: Store.metric_buckets series}) for each run, from cache or the store."""
        out: dict[int, Any] = {}
        stale = []
        with self._lock:
            for run in runs:
                slot = (run["id"], keys, points, render)
                entry = self._entries.get(slot)
                if entry is not None and entry[0] == run["updated"]:
                    self._entries.move_to_end(slot)
                    out[run["id"]] = entry[1]
                else:
                    stale.append(run)
        if stale:
            # read after the runs' rows: data at least as new as `updated`, never cached as older
            fresh = self._read([r["id"] for r in stale], keys, points)
            rendered = {r["id"]: render(fresh.get(r["id"], {})) for r in stale}
            with self._lock:
                for run in stale:
                    out[run["id"]] = rendered[run["id"]]
                    self._entries[(run["id"], keys, points, render)] = (run["updated"], rendered[run["id"]])
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return out

    def _read(self, run_ids: list[int], keys: tuple[str, ...], points: int) -> dict[int, dict]:
        """Store.metric_buckets, split over threads when there are many runs: SQLite and PostgreSQL
        work without the GIL, so a cold study page uses every core (each part is its own snapshot,
        consistent per run, which is all a run's chart needs)."""
        parts = min(self.threads, len(run_ids) // _RUNS_PER_THREAD)
        if parts < 2:
            return self.store.metric_buckets(run_ids, keys, points)
        out: dict[int, dict] = {}
        with ThreadPoolExecutor(parts, thread_name_prefix="trainlab-read") as pool:
            for part in pool.map(lambda ids: self.store.metric_buckets(ids, keys, points),
                                 [run_ids[i::parts] for i in range(parts)]):
                out.update(part)
        return out
