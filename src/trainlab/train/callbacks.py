"""What `fit()` tells its callbacks and what they may answer: `LoopState`, `Stop`, the `Callback`
protocol, and `Deadline`, a callback that stops the run at the first step past a wall-clock time.

Callbacks return decisions; only the loop acts. Besides the three hooks of `Callback`, a callback may have:

- `epoch_metrics(state) -> dict[str, float]`: metrics it measures at each epoch's end (the EMA's validation
  of its averaged weights); the loop adds them to `state.metrics` before any `on_epoch_end` runs;
- `summary() -> dict`: what it wants in the run's summary (the snapshots taken); the loop stores it;
- `state_dict()` / `load_state_dict(d)`: its state, kept in the run's checkpoints for exact resume.

Deadline:

The recipe gives every step a share of its time budget; searches pass the deadline to their worker
processes (`run_search(deadline=...)`). The clock is `time.time()` (seconds since the epoch), the one
clock that processes, and machines that share a study, agree on. Reading it costs well under a
microsecond, so checking after every step is free next to a training step.

    fit(task, hp, callbacks=[Deadline(time.time() + 60)])   # at most about a minute (plus one validation)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from trainlab.config import Config
from trainlab.tasks import Task
from trainlab.train.plan import RunPlan

__all__ = ["Stop", "LoopState", "Callback", "Deadline", "BUDGET_REACHED"]

BUDGET_REACHED = "budget reached"


@dataclass(frozen=True)
class Stop:
    """A callback's request to end the run, with the status to record and why."""

    status: str
    reason: str


@dataclass
class LoopState:
    """What callbacks see. They may read anything; they return decisions instead of acting."""

    hp: Config
    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    run_id: int | None
    run_dir: Path | None
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    rank: int = 0        # under torchrun: this process's rank (only rank 0 writes; run_dir is None elsewhere)
    world_size: int = 1
    plan: RunPlan | None = None  # the run's length and learning rate, resolved once (fit always sets it)


class Callback(Protocol):
    def on_step_end(self, state: LoopState) -> Stop | None: ...
    def on_epoch_end(self, state: LoopState) -> Stop | None: ...
    def on_fit_end(self, state: LoopState) -> None: ...


class Deadline:
    """Stop("stopped", "budget reached") at the first step (or epoch end) at or past `deadline` (a run's own
    time limit, `minutes`, stops with status "completed": it did what it was configured to do).

    `deadline` is a `time.time()` timestamp. `fired` tells afterwards whether this callback ended the run
    (a run stopped by the deadline keeps its best weights and is validated on its partial last epoch,
    as for any callback's stop).
    """

    def __init__(self, deadline: float, reason: str = BUDGET_REACHED, status: str = "stopped"):
        self.deadline = float(deadline)
        self.reason, self.status = reason, status
        self.fired = False

    def _check(self) -> Stop | None:
        if time.time() >= self.deadline:
            self.fired = True
            return Stop(self.status, self.reason)
        return None

    def on_step_end(self, state) -> Stop | None:
        return self._check()

    def on_epoch_end(self, state) -> Stop | None:
        return self._check()

    def on_fit_end(self, state) -> None:
        return None
