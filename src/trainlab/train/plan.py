"""`RunPlan`: a run's length and learning rate, resolved once from the hyperparameters and the data size.

Updates per epoch, the total, the warmup, the lr scaling for the global batch, the schedule's factor and
where its cycles end all follow from `hp`, the number of training examples and the number of processes.
They are derived here and nowhere else: the loop, the averaging callbacks (snapshots at cycle ends), the
recipe's cost model and the printed start line all read the one plan, which is also stored with the run.
A run with `minutes` resolves it once more after its first epoch, with the length fitted to its time
(`timefit.py`; `updates_that_fit`, `fitted_config`), and stores that plan instead.

    plan = RunPlan.resolve(Config(epochs=10, batch_size=32), examples=3600)
    plan.updates_per_epoch, plan.total_updates, plan.lr(0)      # (113, 1130, 0.003)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from trainlab.config import Config, ConfigError
from trainlab.parallel.ddp import LrScaling, scale_lr, shard_size
from trainlab.schedules import cycle_ends, from_config

__all__ = ["RunPlan", "lr_schedule", "updates_that_fit", "fitted_config", "FIT_SAFETY"]

FIT_SAFETY = 0.95  # `minutes`: the schedule is fitted to 95% of the time left (the run also stops at 100%)


@dataclass(frozen=True)
class RunPlan:
    """Everything about a run's length and learning rate; `factor(step)` multiplies `hp.lr`."""

    examples: int                  # training examples, all processes together
    world_size: int
    micro_batches_per_epoch: int   # batches of `batch_size` one process sees per epoch (its shard)
    accum_steps: int
    updates_per_epoch: int         # optimizer updates per epoch
    total_updates: int
    epochs: int                    # epochs started (the last may be cut by `steps`)
    warmup_updates: int
    scaling: LrScaling             # the lr for the global batch, and the warmup it may add
    schedule: str
    cycle_period: int | None       # cyclic_cosine: updates in the first cycle
    cycle_ends: tuple[int, ...]    # cyclic_cosine: 0-based updates that end a cycle (snapshots save there)
    base_lr: float
    factor: Callable[[int], float] = field(repr=False, compare=False)
    execution: Any = field(default=None, compare=False)  # precision.Execution: how the model computes, or None

    @classmethod
    def resolve(cls, hp: Config, examples: int, world_size: int = 1, *,
                factor: Callable[[int], float] | None = None, execution: Any = None) -> RunPlan:
        """The plan for `hp` on `examples` training examples over `world_size` processes.

        `factor` replaces the schedule `hp` names (the learning-rate test's exponential sweep). `execution`
        (a `precision.Execution`) is printed and stored with the plan.
        """
        if examples < 1:
            raise ConfigError(f"task: the training set is empty, got {examples} examples")
        micro = math.ceil(shard_size(examples, world_size) / hp.batch_size)
        updates = math.ceil(micro / hp.accum_steps)
        scheduled, total, warmup, period = _schedule(hp, updates, world_size)
        ends: tuple[int, ...] = ()
        if hp.schedule == "cyclic_cosine" and factor is None:
            ends = tuple(cycle_ends(total, warmup_steps=warmup, period=period, period_mult=hp.restart_mult))
        return cls(examples=examples, world_size=world_size, micro_batches_per_epoch=micro,
                   accum_steps=hp.accum_steps, updates_per_epoch=updates, total_updates=total,
                   epochs=math.ceil(total / updates), warmup_updates=warmup,
                   scaling=scale_lr(hp, world_size, updates), schedule="custom" if factor else hp.schedule,
                   cycle_period=period if hp.schedule == "cyclic_cosine" else None, cycle_ends=ends,
                   base_lr=hp.lr, factor=factor or scheduled, execution=execution)

    @property
    def global_batch(self) -> int:
        return self.scaling.global_batch_size

    def lr(self, step: int) -> float:
        """The learning rate of update `step` (0-based)."""
        return self.base_lr * self.factor(step)

    def summary(self) -> dict[str, Any]:
        """What the run stores: the numbers (the lr scaling's keys at the top level, as before, and "plan")."""
        plan = {"examples": self.examples, "world_size": self.world_size, "updates_per_epoch": self.updates_per_epoch,
                "micro_batches_per_epoch": self.micro_batches_per_epoch, "accum_steps": self.accum_steps,
                "total_updates": self.total_updates, "epochs": self.epochs, "warmup_updates": self.warmup_updates,
                "schedule": self.schedule, "cycle_period": self.cycle_period, "cycle_ends": list(self.cycle_ends)}
        out = {**self.scaling.summary(), "plan": plan}
        if self.execution is not None:
            out["execution"] = self.execution.summary()
        return out

    def describe(self, hp: Config, who: str, task_name: str, model_name: str | None = None) -> list[str]:
        """The lines printed when the run starts: the schedule and the resolved lr at a few steps."""
        total, warmup = self.total_updates, self.warmup_updates
        points = sorted({0, warmup, total // 4, total // 2, 3 * total // 4, total - 1})
        lines = [f"{who}: {task_name}/{model_name or hp.model}, {hp.optimizer} lr {hp.lr:g}, {self.schedule} schedule over {total} "
                 f"optimizer updates ({self.updates_per_epoch} per epoch, batch {hp.batch_size}); "
                 f"warmup {warmup} updates",
                 "  lr at step " + ", ".join(f"{s}: {self.lr(s):.3g}" for s in points)]
        if self.world_size > 1 or hp.lr_scaling != "none" or hp.accum_steps > 1:
            lines.append(f"  {self.scaling.describe()}")
        if self.execution is not None:
            lines.append(self.execution.describe())
        return lines


def updates_that_fit(seconds: float, step: int, cap: int, updates_per_epoch: int, update_s: float,
                     validation_s: float) -> int:
    """The run's new total of optimizer updates when `seconds` are left after update `step`: the most, up to
    `cap`, whose updates (`update_s` each) and validations (`validation_s` at each epoch's end, a cut last
    epoch included) fit. `step` when not one more update fits.

    >>> updates_that_fit(100, 10, 1000, 10, 1.0, 5.0)   # 6 epochs x (10 + 5) = 90, then 5 updates + 5
    75
    >>> updates_that_fit(100, 10, 40, 10, 1.0, 5.0), updates_that_fit(3, 10, 40, 10, 1.0, 5.0)
    (40, 10)
    """
    epoch_s = updates_per_epoch * update_s + validation_s
    if epoch_s <= 0:
        return cap
    full = int(max(0.0, seconds) // epoch_s)
    rest = max(0.0, seconds) - full * epoch_s - validation_s
    extra = int(rest // update_s) if rest > 0 and update_s > 0 else 0
    return max(step, min(cap, step + full * updates_per_epoch + min(extra, updates_per_epoch - 1)))


def fitted_config(hp: Config, total: int, planned: int) -> Config:
    """`hp` with its schedule's length set to `total` optimizer updates (from `planned`): `steps`, and the
    step-decay milestones and step size scaled with it, so the decay keeps its shape; `minutes` cleared
    (the fit is done: a resumed run trains this schedule to its end)."""
    r = total / planned
    return hp.model_copy(update={
        "steps": total, "minutes": None,
        "milestones_epochs": [m * r for m in hp.milestones_epochs], "step_size_epochs": hp.step_size_epochs * r})


def lr_schedule(hp: Config, steps_per_epoch: int, world_size: int = 1) -> tuple[Callable[[int], float], int, int]:
    """(factor(step), total optimizer updates, warmup updates) for `hp` with `steps_per_epoch` updates.

    With `hp.lr_scaling` on, `hp.lr * factor(step)` is the scaled lr for `world_size` processes and a
    warmup is added unless `hp` sets one (see `parallel.ddp.scale_lr`). `RunPlan.resolve` is the usual
    entry; this is the same arithmetic for a given number of updates per epoch.
    """
    factor, total, warmup, _ = _schedule(hp, steps_per_epoch, world_size)
    return factor, total, warmup


def _schedule(hp: Config, steps_per_epoch: int, world_size: int) -> tuple[Callable[[int], float], int, int, int]:
    """(factor, total, warmup, cycle period): epochs in `hp` converted to optimizer updates."""
    total = hp.steps or hp.epochs * steps_per_epoch
    scaling = scale_lr(hp, world_size, steps_per_epoch)
    warmup = scaling.warmup_steps
    if warmup >= total and scaling.warmup_added:
        raise ConfigError(f"scaling_warmup_epochs: the warmup that lr_scaling={hp.lr_scaling} adds is {warmup} updates, "
                          f"not fewer than the run's {total}; set it lower (0: none) or train longer, "
                          f"got {hp.scaling_warmup_epochs}")
    if warmup >= total:
        raise ConfigError(f"warmup_steps: must be fewer than the run's {total} optimizer updates, got {warmup}")
    factor, period = from_config(hp, steps_per_epoch, total, warmup)
    if scaling.lr_scale != 1.0:
        factor = _scaled(factor, scaling.lr_scale)
    return factor, total, warmup, period


def _scaled(factor: Callable[[int], float], scale: float) -> Callable[[int], float]:
    return lambda step: scale * factor(step)
