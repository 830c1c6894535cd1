"""Torch threads that other jobs turned into a burden. A process training alone may take every idle core
(the recipe does), but torch's threads wait for each other at every operation: when another job takes a
core, a 2-thread training was 10x slower on a 2-core machine, where one thread keeps its speed. So a run
with more than one thread drops to one when its updates, timed between reads of the losses, slow down
SLOWDOWN x against its fastest stretch twice in a row. The drop is kept in the run's summary ("threads");
the thread count is restored when the run ends.
"""

from __future__ import annotations

import math
import time

import torch

__all__ = ["ThreadGuard", "SLOWDOWN"]

SLOWDOWN = 2.0   # per-update time against the run's fastest stretch that counts as a lost core


class ThreadGuard:
    """Watches one run's update speed at the loop's reads of the losses (no per-step work)."""

    def __init__(self, step: int):
        self.threads = torch.get_num_threads()
        self.fastest = math.inf
        self.slow = 0                               # stretches in a row slower than SLOWDOWN x the fastest
        self.mark = (time.perf_counter(), step)     # (when, update) the current stretch began
        self.summary: dict = {}

    @classmethod
    def start(cls, step: int, distributed: bool) -> ThreadGuard | None:
        """A guard for a run at more than one thread in one process (not under DDP: ranks keep their threads)."""
        return cls(step) if torch.get_num_threads() > 1 and not distributed else None

    def epoch_starts(self, step: int) -> None:
        """A stretch never spans an epoch's end (validation, checkpoints)."""
        self.mark = (time.perf_counter(), step)

    def check(self, step: int) -> None:
        """At a read of the losses after update `step`: time the stretch since the last; drop to one thread
        after two stretches in a row slower than SLOWDOWN x the fastest (one may hold a checkpoint's save)."""
        t, at = self.mark
        now = time.perf_counter()
        self.mark = (now, step)
        if step <= at or self.summary:
            return
        per_update = (now - t) / (step - at)
        self.slow = self.slow + 1 if per_update > SLOWDOWN * self.fastest else 0
        if self.slow >= 2:
            torch.set_num_threads(1)
            self.summary = {"from": self.threads, "to": 1, "at_update": step,
                            "slowdown": round(per_update / self.fastest, 2)}
        self.fastest = min(self.fastest, per_update)

    def said(self) -> str:
        s = self.summary
        return (f"  threads: {s['from']} -> {s['to']} at update {s['at_update']}: updates took {s['slowdown']:g}x "
                f"longer than the run's fastest stretch (another job took a core)") if s else ""

    def restore(self) -> None:
        torch.set_num_threads(self.threads)
