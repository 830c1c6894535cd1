"""Learning-rate schedules as pure functions of the optimizer step.

Convention: ``step`` is the number of optimizer updates already done (0-based), and
the learning rate used for update ``t`` is ``base_lr * factor(t)``. Schedules count
optimizer updates, never epochs or batches. The training loop owns the counter and
passes the step in; there is no hidden state and nothing like ``last_epoch``, so
resuming a run is just ``factor(resumed_step)``.

Any schedule may start with a linear warmup (see :func:`make_schedule`). The loop applies
a factor with :func:`apply_lr`::

    factor = make_schedule("cosine", total_steps, warmup_steps=500)
    for step in range(start_step, total_steps):
        apply_lr(optimizer, factor(step))
        ...  # forward, backward, optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only a type: `trainlab schedule` must not import torch
    import torch

__all__ = ["KINDS", "CONFIG_FIELDS", "apply_lr", "cycle_ends", "exponential_ramp", "from_config", "make_schedule"]

KINDS = ("constant", "step", "multistep", "cosine", "linear", "inverse_sqrt", "cyclic_cosine")


def _is_int(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_positive_int(name: str, value: object, suffix: str = "") -> None:
    if not _is_int(value, 1):
        raise ValueError(f"{name} must be a positive integer{suffix}, but got {name}={value!r}.")


def _check_common(total_steps: int, warmup_steps: int, period: int, period_mult: float) -> None:
    _check_positive_int("total_steps", total_steps)
    if not (_is_int(warmup_steps, 0) and warmup_steps < total_steps):
        raise ValueError(
            "warmup_steps must be an integer in [0, total_steps), but got "
            f"warmup_steps={warmup_steps!r} with total_steps={total_steps}."
        )
    _check_positive_int("period", period)
    if not period_mult >= 1:  # also rejects NaN
        raise ValueError(f"period_mult must be >= 1, but got period_mult={period_mult!r}.")


def _cosine(x: float, m: float) -> float:
    """Half a cosine from 1 at x=0 down to m at x=1."""
    return m + (1 - m) * (1 + math.cos(math.pi * x)) / 2


def _cycle_start(i: int, period: int, mult: float) -> float:
    """Steps after warmup at which SGDR cycle i starts (cycle lengths period * mult**i)."""
    return float(period * i) if mult == 1 else period * (mult**i - 1) / (mult - 1)


def _cyclic_cosine(t: int, period: int, mult: float, m: float) -> float:
    """SGDR (Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts")."""
    if mult == 1:
        return _cosine((t % period) / period, m)
    i = int(math.log1p(t * (mult - 1) / period) / math.log(mult))
    # log() may land one cycle off right at a boundary; settle on start(i) <= t < start(i+1).
    while _cycle_start(i + 1, period, mult) <= t:
        i += 1
    while i > 0 and _cycle_start(i, period, mult) > t:
        i -= 1
    return _cosine((t - _cycle_start(i, period, mult)) / (period * mult**i), m)


def make_schedule(kind: str, total_steps: int, *, warmup_steps: int = 0, min_factor: float = 0.0,
                  step_size: int | None = None, milestones: Sequence[int] = (), gamma: float = 0.1,
                  period: int | None = None, period_mult: float = 1.0, timescale: int | None = None,
                  ) -> Callable[[int], float]:
    """Return ``factor(step) -> float``, the multiplier of the base learning rate at that step.

    With ``T = total_steps - warmup_steps``, ``t = step - warmup_steps`` and ``m = min_factor``:

    - ``constant``: 1.
    - ``step``: ``gamma ** (t // step_size)`` (torch ``StepLR``).
    - ``multistep``: ``gamma ** (number of milestones <= t)`` (torch ``MultiStepLR``);
      milestones count steps from the end of warmup.
    - ``cosine``: ``m + (1 - m) * (1 + cos(pi * t / T)) / 2``, then ``m`` from ``t = T`` on
      (torch ``CosineAnnealingLR`` with ``T_max=T``, ``eta_min=m * base_lr``).
    - ``linear``: ``max(m, 1 - t / T)``.
    - ``inverse_sqrt``: ``1 / sqrt(max(t, s) / s)`` with ``s = timescale``, by default
      ``max(1, warmup_steps)``: flat for ``s`` steps after warmup, then ``sqrt(s / t)``
      (Vaswani et al. 2017, "Attention Is All You Need").
    - ``cyclic_cosine``: SGDR (Loshchilov & Hutter 2017): cosine cycles from 1 down to
      ``m`` of lengths ``period, period * period_mult, ...`` (``period`` defaults to ``T``),
      restarting forever, also past ``total_steps`` (torch ``CosineAnnealingWarmRestarts``).
      :func:`cycle_ends` gives the last step of each cycle.

    Linear warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): for
    ``step < warmup_steps``, ``factor = main(0) * (step + 1) / warmup_steps``, so the last
    warmup update already runs at the full rate; the main schedule then runs on ``t``.
    Parameters a kind does not use are validated but ignored. A negative step raises
    ``ValueError``.

    Example:
        >>> f = make_schedule("cosine", total_steps=6, warmup_steps=2)
        >>> [round(f(step), 3) for step in range(7)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, but got kind={kind!r}.")
    _check_common(total_steps, warmup_steps, 1 if period is None else period, period_mult)
    T = total_steps - warmup_steps
    period = T if period is None else period
    if not 0 <= min_factor < 1:
        raise ValueError(f"min_factor must be in [0, 1), but got min_factor={min_factor!r}.")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], but got gamma={gamma!r}.")
    if kind == "step" or step_size is not None:
        _check_positive_int("step_size", step_size, " for kind='step'" if kind == "step" else "")
    milestones = list(milestones)
    if not all(_is_int(x, 0) for x in milestones) or milestones != sorted(milestones):
        raise ValueError(
            "milestones must be non-negative integers in non-decreasing order, "
            f"but got milestones={milestones!r}."
        )
    s = max(1, warmup_steps) if timescale is None else timescale
    _check_positive_int("timescale", s)
    m = min_factor

    main: Callable[[int], float] = {
        "constant": lambda t: 1.0,
        "step": lambda t: gamma ** (t // step_size),
        "multistep": lambda t: gamma ** sum(1 for x in milestones if x <= t),
        "cosine": lambda t: _cosine(t / T, m) if t < T else m,
        "linear": lambda t: max(m, 1 - t / T),
        "inverse_sqrt": lambda t: 1 / math.sqrt(max(t, s) / s),
        "cyclic_cosine": lambda t: _cyclic_cosine(t, period, period_mult, m),
    }[kind]
    peak = float(main(0))

    def factor(step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be a non-negative integer, but got step={step!r}.")
        if step < warmup_steps:
            return peak * (step + 1) / warmup_steps
        return float(main(step - warmup_steps))

    return factor


def cycle_ends(
    total_steps: int, *, warmup_steps: int = 0, period: int, period_mult: float = 1.0
) -> list[int]:
    """Steps (0-based index of the last update of each cycle) at which each cosine cycle of
    ``cyclic_cosine`` ends: the snapshot points of a snapshot ensemble (Huang et al. 2017,
    "Snapshot Ensembles: Train 1, Get M for Free"). Includes the last cycle if it
    completes within ``total_steps``; a cycle cut off by ``total_steps`` is left out.

    Example:
        >>> cycle_ends(100, warmup_steps=5, period=10, period_mult=2)
        [14, 34, 74]
    """
    _check_common(total_steps, warmup_steps, period, period_mult)
    ends, i = [], 0
    while True:
        # The cycle holds the integer t with start(i) <= t < start(i + 1).
        end = warmup_steps + math.ceil(_cycle_start(i + 1, period, period_mult)) - 1
        if end >= total_steps:
            return ends
        ends.append(end)
        i += 1


def exponential_ramp(total_steps: int, start_factor: float) -> Callable[[int], float]:
    """``factor(step)`` rising geometrically from ``start_factor`` at step 0 to 1 at step
    ``total_steps - 1`` (and on past it): the learning-rate range test's sweep (Smith 2017,
    "Cyclical Learning Rates for Training Neural Networks", with the exponential spacing of
    fastai's ``lr_find``). It is torch's ``ExponentialLR`` with ``gamma = start_factor ** (-1 / (total_steps - 1))``.
    Not a training schedule: ``fit(..., schedule=exponential_ramp(...))`` runs the sweep.

    Example:
        >>> f = exponential_ramp(5, 1e-4)
        >>> [f"{f(s):.0e}" for s in range(5)]
        ['1e-04', '1e-03', '1e-02', '1e-01', '1e+00']
    """
    if not _is_int(total_steps, 2):
        raise ValueError(f"total_steps must be an integer >= 2, but got total_steps={total_steps!r}.")
    if not 0 < start_factor < 1:
        raise ValueError(f"start_factor must be in (0, 1), but got start_factor={start_factor!r}.")
    log_start = math.log(start_factor)

    def factor(step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be a non-negative integer, but got step={step!r}.")
        return math.exp(log_start * (1 - step / (total_steps - 1)))

    return factor


CONFIG_FIELDS = ("schedule", "warmup_steps", "warmup_epochs", "min_lr_factor", "step_size_epochs", "milestones_epochs",
                 "gamma", "cycles", "restart_period_epochs", "restart_mult")  # the config's names for a schedule


def from_config(hp: Any, steps_per_epoch: int, total_steps: int, warmup_steps: int) -> tuple[Callable[[int], float], int]:
    """(factor, cycle period in updates) of the schedule a config names (`hp.schedule`, `hp.min_lr_factor`, ...,
    the names in CONFIG_FIELDS), its epochs converted to optimizer updates at `steps_per_epoch`.

    Milestones count epochs from the start of the run (those that fall inside the warmup are dropped).
    ``cyclic_cosine`` without ``restart_period_epochs`` makes ``cycles`` equal cycles; when they do not
    divide the run, the last cycle's final rate is held over the few steps left instead of starting a
    new cycle at full rate just before the end. The training loop and `trainlab schedule` both use this.

    >>> from trainlab.config import Config
    >>> f, _ = from_config(Config(schedule="multistep", milestones_epochs=[1, 2], gamma=0.5), 10, 30, 0)
    >>> [f(s) for s in (9, 10, 20)]
    [1.0, 0.5, 0.25]
    """
    main = total_steps - warmup_steps
    period = (round(hp.restart_period_epochs * steps_per_epoch) if hp.restart_period_epochs
              else max(1, main // hp.cycles))
    factor = make_schedule(
        hp.schedule, total_steps, warmup_steps=warmup_steps, min_factor=hp.min_lr_factor,
        step_size=max(1, round(hp.step_size_epochs * steps_per_epoch)),
        milestones=[s for s in (round(m * steps_per_epoch) - warmup_steps for m in hp.milestones_epochs) if s >= 0],
        gamma=hp.gamma, period=period, period_mult=hp.restart_mult,
    )
    if hp.schedule == "cyclic_cosine" and not hp.restart_period_epochs and main % period:
        last = warmup_steps + hp.cycles * period - 1
        held = factor
        factor = lambda step: held(min(step, last))  # noqa: E731
    return factor, period


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every param group's lr to ``group["base_lr"] * factor``.

    Groups carry their own ``base_lr`` (e.g. a lower rate for a fine-tuned backbone). A
    group without ``"base_lr"`` first records its current ``lr`` as its ``base_lr``, so call
    this before changing any lr by hand.
    """
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * factor
