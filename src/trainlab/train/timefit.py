"""`minutes`: a run fitted to a wall time. A schedule cut by a deadline never decays (its last epochs run
at a high rate, where the best points of a decayed schedule come from its end), and a schedule sized from a
guess of the speed either overruns or leaves time unused. So the run trains its first epoch as planned,
measures it (the later updates' mean from `startup.Startup`, and the validation after it), and sets the
schedule's length to the optimizer updates that fit in `FIT_SAFETY` of the time left: its decay ends in
time, at the measured speed, to the update rather than to the epoch (a cut last epoch is validated like any
other). It is fitted again at each epoch's end when the rest no longer fits, or (in the first half) would
leave time unused, and at each read of the losses inside an epoch when the rest no longer fits at the
current speed (a slow model's epoch is a third of its run). The schedule is never lengthened past the
configured epochs/steps. The run also stops at the limit itself (status "completed", its reason naming the
limit). Every fit is kept in the summary's "history" as [update, new total].

The fit is stored with the run (summary "fitted", with the config fields it changed), so a resumed run
trains the fitted schedule to its end; a resumed run is not fitted again.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from trainlab.config import Config
from trainlab.train.callbacks import Deadline
from trainlab.train.plan import FIT_SAFETY, RunPlan, fitted_config, updates_that_fit

__all__ = ["TimeFit", "REFIT_BELOW"]

Decide = Callable[[Optional[int]], Optional[int]]   # every process's answer from rank 0's (DDP), or None

REFIT_BELOW = 0.9   # a fit is lengthened again (in the run's first half) when its rest needs under 90% of the time


class TimeFit:
    """The time limit of a run with `hp.minutes`, from `started` (a time.time() when fit() began)."""

    def __init__(self, minutes: float, started: float):
        self.minutes = minutes
        self.until = started + 60.0 * minutes
        self.deadline = Deadline(self.until, f"the {minutes:.3g}-minute limit reached", status="completed")
        self.train_s = self.updates = self.ends_s = 0.0
        self.epochs = 0
        self.first: tuple[Config, int] | None = None   # the config and length as planned, before any fit
        self.mark = (time.perf_counter(), 0)              # (when, update) of the last speed measurement
        self.summary: dict[str, Any] = {}

    @classmethod
    def start(cls, hp: Config, started: float, resumed: bool) -> TimeFit | None:
        """The run's time fit, or None: no `minutes`, or a resumed run (it trains the stored fit to its end)."""
        return cls(hp.minutes, started) if hp.minutes is not None and not resumed else None

    def stored(self, plan: RunPlan) -> dict[str, Any]:
        """What the run's summary keeps of the fit (none before it was made)."""
        return {"plan": plan.summary()["plan"], "fitted": self.summary} if self.summary else {}

    def epoch_starts(self, step: int) -> None:
        """An epoch's updates begin at update `step`: the window `during_epoch` measures the current speed on."""
        self.mark = (time.perf_counter(), step)

    def after_epoch(self, hp: Config, plan: RunPlan, step: int, train_s: float, updates: int, end_s: float,
                    decide: Decide | None = None) -> tuple[Config, RunPlan | None]:
        """An epoch ended at update `step`: its `updates` took `train_s` (the first update's one-off cost
        taken out) and its end (validation, checkpoints) `end_s`. After the first epoch the schedule's length
        is fitted to the time left at the mean speed so far; after a later one it is fitted again only when the
        rest no longer fits (the machine slowed down) or, in the run's first half, would leave more than
        1 - REFIT_BELOW of the time unused. Returns (hp, its new plan), or (hp, None) when the length stays.
        `decide(total or None)` makes every process agree, every epoch (rank 0's answer under DDP)."""
        self.train_s, self.updates, self.ends_s = self.train_s + train_s, self.updates + updates, self.ends_s + end_s
        self.epochs += 1
        update_s, end_mean = self.train_s / max(1.0, self.updates), self.ends_s / self.epochs
        if self.first is None:
            self.first = (hp, plan.total_updates)
        left = self.until - time.time()
        need = self._need(plan, step, update_s, end_mean)
        early = left > 30.0 * self.minutes   # more than half of the time is left
        grow = early and plan.total_updates < self.first[1] and need < REFIT_BELOW * FIT_SAFETY * left
        refit = self.epochs == 1 or need > left or grow   # the first fit; the rest overruns; it leaves time unused
        return self._refit(hp, plan, step, update_s, end_mean, left, refit, decide)

    def during_epoch(self, hp: Config, plan: RunPlan, step: int,
                     decide: Decide | None = None) -> tuple[Config, RunPlan | None]:
        """At a read of the losses inside an epoch (every few dozen updates), after the first fit: when the
        rest no longer fits at the speed of the updates since the last read (the machine slowed down
        mid-epoch; on a slow model an epoch is a third of the run), the schedule is shortened now rather than
        cut at the limit. Same answer as `after_epoch`."""
        t, at = self.mark
        now = time.perf_counter()
        self.mark = (now, step)
        if self.first is None or step <= at:
            if decide is not None:
                decide(None)
            return hp, None
        update_s = (now - t) / (step - at)
        end_mean = self.ends_s / max(1, self.epochs)
        left = self.until - time.time()
        refit = self._need(plan, step, update_s, end_mean) > left
        return self._refit(hp, plan, step, update_s, end_mean, left, refit, decide)

    @staticmethod
    def _need(plan: RunPlan, step: int, update_s: float, end_s: float) -> float:
        """Seconds the plan's rest takes: its updates and an epoch's end for each epoch it still begins or ends."""
        rest = plan.total_updates - step
        return rest * update_s + -(-rest // plan.updates_per_epoch) * end_s

    def _refit(self, hp: Config, plan: RunPlan, step: int, update_s: float, end_s: float, left: float,
               refit: bool, decide: Decide | None) -> tuple[Config, RunPlan | None]:
        hp0, planned = self.first
        total: int | None = None
        if refit:
            total = updates_that_fit(FIT_SAFETY * left, step, planned, plan.updates_per_epoch, update_s, end_s)
            total = max(total, plan.warmup_updates + 1)  # a schedule needs an update after its warmup
        if decide is not None:  # at every check, refit or not: no rank may skip the collective another makes
            total = decide(total)
        if total is None:
            return hp, None
        if not self.summary or total != plan.total_updates:
            self.summary = {"minutes": self.minutes, "at_update": step, "after_epochs": self.epochs,
                            "seconds_left": round(left, 3), "update_s": round(update_s, 6),
                            "epoch_end_s": round(end_s, 4), "planned_updates": planned, "updates": total,
                            "epochs": round(total / plan.updates_per_epoch, 3),
                            "refits": self.summary.get("refits", -1) + 1,
                            "history": [*self.summary.get("history", [])[-49:], [step, total]]}
        if total == plan.total_updates:
            self.summary.setdefault("config", {})
            return hp, None
        fitted = fitted_config(hp0, total, planned)
        self.summary["config"] = {k: getattr(fitted, k) for k in ("steps", "milestones_epochs", "step_size_epochs")}
        return fitted, RunPlan.resolve(fitted, plan.examples, plan.world_size, execution=plan.execution)

    def said(self) -> str:
        """The fit in a line, for the run's printed output."""
        s = self.summary
        if not s:
            return ""
        ends = (f"the schedule now ends at update {s['updates']} ({s['epochs']:g} epochs; {s['planned_updates']} "
                f"planned)" if s["updates"] < s["planned_updates"] else f"the planned {s['planned_updates']} updates fit")
        return (f"  time fit ({s['minutes']:.3g} minutes): {s['seconds_left']:.0f} s left after epoch {s['after_epochs']} "
                f"at {s['update_s'] * 1e3:.1f} ms an update and {s['epoch_end_s']:.2f} s an epoch's end: {ends}")
