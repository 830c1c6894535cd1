"""A wall-clock deadline for `fit()`: a callback that stops the run at the first step past a given time.

The recipe gives every step a share of its time budget; searches pass the deadline to their worker
processes (`run_search(deadline=...)`). The clock is `time.time()` (seconds since the epoch), the one
clock that processes, and machines that share a study, agree on. Reading it costs well under a
microsecond, so checking after every step is free next to a training step.

    fit(task, hp, callbacks=[Deadline(time.time() + 60)])   # at most about a minute (plus one validation)
"""

from __future__ import annotations

import time

from .loop import Stop

__all__ = ["Deadline", "BUDGET_REACHED"]

BUDGET_REACHED = "budget reached"


class Deadline:
    """Stop("stopped", "budget reached") at the first step (or epoch end) at or past `deadline`.

    `deadline` is a `time.time()` timestamp. `fired` tells afterwards whether this callback ended the run
    (a run stopped by the deadline keeps its best weights and is validated on its partial last epoch,
    as for any callback's stop).
    """

    def __init__(self, deadline: float, reason: str = BUDGET_REACHED):
        self.deadline = float(deadline)
        self.reason = reason
        self.fired = False

    def _check(self) -> Stop | None:
        if time.time() >= self.deadline:
            self.fired = True
            return Stop("stopped", self.reason)
        return None

    def on_step_end(self, state) -> Stop | None:
        return self._check()

    def on_epoch_end(self, state) -> Stop | None:
        return self._check()

    def on_fit_end(self, state) -> None:
        return None
