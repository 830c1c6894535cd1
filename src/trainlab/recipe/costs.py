"""The recipe's cost model: how many seconds a training, a search and a phase's least useful work take,
from what the steps so far measured (seconds per update in the checks; seconds per epoch, start-up
per training and overhead per search in each search's runs). Pure arithmetic; `plan.py` sizes the
searches with it, and `steps.py` feeds it the measurements.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from trainlab.recipe.plan import FOLDS, search_rounds

__all__ = ["CostModel", "measure_search", "PARALLEL_SLOWDOWN", "THREAD_GAIN", "thread_speedup"]


# A worker's epoch beside another against this process's alone (both at the threads a worker gets): a guess
# until a search measures it. shapes32/resnet: 50-55 s beside another, 0.176 s x 282 updates = 49.5 s alone
# (training only); 1.3 before, which sized a 264 s final model to 2-3 epochs where 4 fit.
PARALLEL_SLOWDOWN = 1.1
# Each torch thread beyond the first adds this much of one thread's speed to a training (shapes32/resnet on
# an idle 2-core machine: 171 ms an update at 1 thread, 93 at 2, a 1.84x speed-up).
THREAD_GAIN = 0.85


def thread_speedup(threads: int) -> float:
    """A training's speed at `threads` torch threads against one (cores to spare assumed)."""
    return 1.0 + THREAD_GAIN * (max(1, threads) - 1)


@dataclass(frozen=True)
class CostModel:
    """Seconds that trainings and searches take, from what the steps so far measured.

    `evidence`: (step key, evidence) of the steps done, in order; the latest measurement of each kind wins.
    `updates_per_epoch`: optimizer updates per epoch of a search's training (its RunPlan), which turns the
    checks' seconds per update into seconds per epoch before any search has run. `warmup_s`: what torch's
    first optimizer cost this process (a worker process pays it again). `threads`: this process's torch
    threads (its checks were timed at them); `worker_threads`: each worker process's; `speedup`: an update at
    `threads` against one, as the recipe measured it.
    """

    workers: int
    updates_per_epoch: int
    warmup_s: float = 0.0
    evidence: tuple[tuple[str, dict], ...] = ()
    threads: int = 1
    worker_threads: int = 1
    speedup: float | None = None   # an update at `threads` against one, measured; else `thread_speedup`'s guess

    def _of(self, key: str) -> dict:
        for k, ev in reversed(self.evidence):
            if k == key:
                return ev
        return {}

    def epoch_seconds(self, parallel: bool | None = None) -> float:
        """Seconds per epoch of one training, in worker processes side by side (`parallel`) or in this
        process: as last measured on a search run that way; else, in this process, from step 2's training
        seconds per update (its check run's epoch times; the LR test's seconds per step, which carry its
        trials' set-up and validations, only without them), and x PARALLEL_SLOWDOWN for workers side by
        side (they share memory bandwidth; on a machine that other jobs load, much more: then the
        measurement after the first search says so), and by the threads: a worker's against this process's."""
        parallel = self.workers > 1 if parallel is None else parallel
        for _, ev in reversed(self.evidence):
            measured = ev.get("epoch_s")
            if measured and (ev.get("workers", 1) > 1) == parallel:
                return float(measured)
        step_s = (self._of("overfit").get("train_step_s") or self._of("lr").get("step_s")
                  or self._of("overfit").get("step_s") or 0.01)
        here = float(step_s) * self.updates_per_epoch * 1.15
        if not parallel:
            return here
        here_speedup = self.speedup if self.speedup and self.worker_threads == 1 else thread_speedup(self.threads)
        return here * PARALLEL_SLOWDOWN * here_speedup / thread_speedup(self.worker_threads)

    def run_seconds(self) -> float:
        """Start-up seconds of one training in a search (task, model, first validation), as last measured."""
        for _, ev in reversed(self.evidence):
            if "run_s" in ev:
                return float(ev["run_s"])
        return 0.0

    def overhead(self, parallel: bool | None = None) -> float:
        """A search's own seconds (worker processes starting, Optuna) with worker processes (`parallel`) or
        in this process: as last measured that way; before that, guessed (workers: from this process's
        warm-up, which a worker pays again along with importing torch)."""
        parallel = self.workers > 1 if parallel is None else parallel
        for _, ev in reversed(self.evidence):
            if "overhead_s" in ev and (ev.get("workers", 1) > 1) == parallel:
                return min(float(ev["overhead_s"]), 60.0)
        if not parallel:
            return 1.0
        return 2.0 + 3.0 * self.warmup_s if self.warmup_s > 0.2 else 5.0

    def training_cost(self, trainings: int, epochs: int) -> float:
        """Seconds for `trainings` of `epochs` each, the cheaper way (workers side by side, or here)."""
        run_s = self.run_seconds()
        modes = [(self.workers, True), (1, False)] if self.workers > 1 else [(1, False)]
        return min(self.overhead(p) + search_rounds(trainings, w) * (run_s + epochs * self.epoch_seconds(p))
                   for w, p in modes)

    def min_work(self, phase: str) -> float:
        """Seconds of the least useful work of a phase: two epochs of one training (both folds in refine)."""
        if phase == "checks":
            return 0.0
        trainings = len(FOLDS) if phase == "refine" else 1
        return self.training_cost(trainings, 2)

    def sized(self, seconds: float, sizer: Callable[..., dict], count: Callable[[dict], int]) -> tuple[dict, int]:
        """(size, workers) of a search: sized both for the worker processes and for this process alone,
        each with its own measured (or estimated) seconds per epoch and overhead, and the way that trains
        more (trainings x epochs) is taken, this process on a tie. Workers lose when their start-up is
        long next to the search (small models) or when other jobs leave them less than a core each.
        `sizer(seconds, epoch_s, workers, run_s)` is one of the size_* functions; `count` its trainings."""
        run_s = self.run_seconds()
        here = sizer(seconds - self.overhead(False), self.epoch_seconds(False), 1, run_s)
        if self.workers <= 1:
            return here, 1
        there = sizer(seconds - self.overhead(True), self.epoch_seconds(True), self.workers, run_s)
        w = min(self.workers, count(there))
        if w > 1 and count(there) * there["epochs"] > count(here) * here["epochs"]:
            cost_there = self.cost(count(there), there["epochs"], w, True)
            if cost_there <= seconds or cost_there <= self.cost(count(here), here["epochs"], 1, False):
                return there, w
            # neither fits (both at their floors): the cheaper way, not the one that would train more
        return here, 1

    def cost(self, trainings: int, epochs: int, workers: int, parallel: bool) -> float:
        """Seconds of a search of `trainings` x `epochs` on `workers` (worker processes when `parallel`)."""
        return self.overhead(parallel) + search_rounds(trainings, workers) * (self.run_seconds()
                                                                             + epochs * self.epoch_seconds(parallel))


def measure_search(runs: Sequence[dict], search_seconds: float, n_workers: int) -> dict[str, float]:
    """What a search's runs measured: seconds per epoch (the mean of a run's full epochs' times, +10% for
    the validation after each; the median over runs), start-up seconds per training (the rest of a run's
    time) and the search's own overhead (its wall time beyond the trainings' time per worker: process
    start-up, Optuna). `runs`: {"seconds", "epochs", "epoch_times", "completed"}; {} when none trained.

    >>> measure_search([{"seconds": 25.0, "epochs": 2, "epoch_times": [10.0, 10.0], "completed": True}], 30.0, 1)
    {'epoch_s': 11.0, 'run_s': 3.0, 'overhead_s': 5.0}
    """
    per_epoch, fixed, busy = [], [], 0.0
    for r in runs:
        secs, epochs = r.get("seconds"), r.get("epochs")
        if not secs or not epochs:
            continue
        busy += secs
        times = list(r.get("epoch_times") or [])
        if not r.get("completed"):
            times = times[:-1]   # the last epoch of a run stopped early is partial
        if times:
            epoch_s = 1.1 * statistics.fmean(times)
            per_epoch.append(epoch_s)
            fixed.append(max(0.0, secs - epoch_s * epochs))
    if not per_epoch:
        return {}
    return {"epoch_s": statistics.median(per_epoch), "run_s": statistics.median(fixed),
            "overhead_s": max(0.0, search_seconds - busy / max(1, n_workers))}
