"""The final model's schedule, from the recipe's own evidence: where step 5's constant-rate curves stalled
(the decay's length), the time that leaves over (more members, a longer decay), step-decay milestones for a
config that trains with step decay, and the peak rate the decay starts from. Pure arithmetic, like plan.py.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Sequence

from trainlab.recipe.plan import FINAL_SAFETY, FOLDS, MAX_FINAL_EPOCHS, better_first

__all__ = ["stall_epoch", "place_decay", "STEP_DECAYS", "step_milestones", "shaped", "described", "spend_final",
           "MAX_SPENT_MEMBERS", "MAX_STRETCH", "PEAK_FACTORS", "pick_peak"]

MAX_SPENT_MEMBERS = 4   # the final ensemble may grow to this when the placed decay leaves time over
MAX_STRETCH = 2.0       # ... and the placed decay to this many times its length (4 x the stall epoch)

STALL_SHARE = 0.9     # progress has stalled once the smoothed validation metric has made 90% of its gain
DECAY_FACTOR = 2.0    # cosine over 2x the stall epoch: about as long at a high rate as the constant rate needed


def stall_epoch(values: Sequence[float], share: float = STALL_SHARE, mode: str = "max") -> int | None:
    """The epoch (1-based) at which a constant-rate run's validation metric stopped gaining (accuracy
    rising, or with `mode` "min" a loss falling): the first whose 3-epoch centred mean reaches `share` of
    the run's gain (from its first epoch to its best mean); None when it had not stalled (the gain was
    still coming in the last two epochs) or made no gain.

    >>> stall_epoch([0.5, 0.8, 0.9, 0.91, 0.91, 0.92, 0.91, 0.92])
    4
    >>> stall_epoch([0.5, 0.6, 0.7, 0.8, 0.9]) is None
    True
    >>> stall_epoch([1.0, 0.5, 0.4, 0.39, 0.39, 0.38, 0.39, 0.38], mode="min")
    4
    """
    sign = -better_first(mode)   # the gain is measured upwards
    v = [sign * x for x in values if x is not None and math.isfinite(x)]
    n = len(v)
    if n < 3:
        return None
    sm = [statistics.fmean(v[max(0, i - 1):i + 2]) for i in range(n)]
    gain = max(sm) - sm[0]
    if not gain > 0:
        return None
    first = next(i for i in range(n) if sm[i] >= sm[0] + share * gain)
    if first >= n - 2:
        return None
    return first + 1


def place_decay(stalls: Sequence[int | None], constant_epochs: int, fit_epochs: int,
                factor: float = DECAY_FACTOR) -> dict[str, Any]:
    """The final model's decay from step 5's constant-rate curves: {"schedule", "epochs", "patience",
    "stall_epoch", "reason"}. `stalls`: each chosen run's `stall_epoch`; `constant_epochs`: their length;
    `fit_epochs`: the most epochs the final phase's time allows.

    Where the constant rate stalled at epoch S (the mean over the folds), the schedule runs `factor` x S
    epochs: its first half near the peak rate covers what the constant rate needed, its second half is the
    decay (the lecture: decay when the loss plateaus); `spend_final` spends the time left over. Where no run
    stalled, progress was still coming: the longest schedule that fits. A cosine; `shaped` turns it into
    step decay for a config that trains with one.

    >>> place_decay([4, 5], 12, 60)["epochs"], place_decay([None, 5], 12, 60)["epochs"]
    (9, 60)
    """
    found = [s for s in stalls if s is not None]
    if found and len(found) == len(stalls):
        stall = statistics.fmean(found)
        epochs = max(2, min(fit_epochs, math.ceil(factor * stall)))
        reason = (f"at a constant rate validation stopped gaining at epoch {stall:.3g} of {constant_epochs} "
                  f"(step 5, mean over {len(found)} fold{'s' if len(found) > 1 else ''}): decay over "
                  f"{factor:g} x that = {epochs} epochs" + (" (all that fits)" if epochs == fit_epochs else ""))
    else:
        stall, epochs = None, max(1, fit_epochs)
        reason = (f"at a constant rate validation was still gaining after {constant_epochs} epochs (step 5): "
                  f"the longest schedule that fits, {epochs} epochs")
    return {"schedule": "cosine", "epochs": epochs, "patience": max(5, epochs // 2), "stall_epoch": stall,
            "reason": reason}


STEP_DECAYS = ("step", "multistep")   # a config with one of these gets its final decay as milestones


def step_milestones(epochs: int) -> list[float]:
    """Step decay's milestones for a placed length of `epochs` = 2 x the stall epoch S: at S (where the
    constant rate stopped gaining) and halfway through the rest (1.5 S), as a cosine is at half and a
    quarter of its rate there.

    >>> step_milestones(10), step_milestones(9), step_milestones(2)
    ([5.0, 8.0], [5.0, 7.0], [1.0, 2.0])
    """
    first = max(1, math.floor(epochs / 2 + 0.5))
    return [float(first), float(max(first + 1, math.floor(0.75 * epochs + 0.5)))]


def shaped(decay: dict[str, Any], kind: str, gamma: float) -> dict[str, Any]:
    """`decay` (from `place_decay`, after `spend_final`) as the schedule the final model trains: a cosine,
    or, when the config trains with step decay (`kind` in STEP_DECAYS), milestones placed by
    `step_milestones` with the config's `gamma`; "described" names it for the report."""
    epochs = int(decay["epochs"])
    if kind not in STEP_DECAYS:
        return {**decay, "schedule": "cosine", "described": f"cosine over {epochs} epochs"}
    marks = step_milestones(epochs)
    said = " and ".join(f"{m:g}" for m in marks)
    return {**decay, "schedule": "multistep", "milestones_epochs": marks, "gamma": gamma,
            "described": f"step decay over {epochs} epochs (lr x{gamma:g} at epochs {said}: "
                         f"the stall and halfway through the rest, scaled to the length)"}


def described(decay: dict[str, Any] | None, epochs: int) -> str:
    """The final schedule in words: `shaped`'s "described", or for a plan stored before it existed, a cosine."""
    return (decay or {}).get("described") or f"cosine over {epochs} epochs"


def spend_final(seconds: float, decay: dict[str, Any], members: int, cost: Callable[[int, int], float],
                max_members: int = MAX_SPENT_MEMBERS, stretch: float = MAX_STRETCH,
                max_epochs: int = MAX_FINAL_EPOCHS, safety: float = FINAL_SAFETY) -> dict[str, Any]:
    """The final model's time, spent: when the placed cosine (`decay`, from `place_decay`) is shorter than
    what `seconds` hold, more members first (an ensemble of more folds: less variance, the surest gain),
    up to `max_members`, then a longer cosine for them, up to `stretch` x the placed length (the stall
    epoch measured on a short constant-rate run is a lower bound: the same decay, later). `cost(members,
    epochs)`: seconds of that final search. Returns `decay` with "epochs", "patience" and "members" set,
    "placed_epochs" the length before, and the reason extended; unchanged when nothing more fits.

    >>> d = spend_final(100, {"epochs": 10, "patience": 5, "stall_epoch": 5, "reason": "r"}, 2,
    ...                 lambda m, e: math.ceil(m / 2) * (2 + e * 2))
    >>> d["members"], d["epochs"], d["placed_epochs"], d["reason"]
    (4, 20, 10, 'r; time left over: 4 members instead of 2, 20 epochs instead of 10')
    """
    placed = int(decay["epochs"])
    out = {**decay, "members": members, "placed_epochs": placed}
    if decay.get("stall_epoch") is None:   # already the longest cosine that fits
        return out
    limit = safety * seconds
    m = members
    while m < max_members and cost(m + 1, placed) <= limit:
        m += 1
    epochs, longest = placed, min(max_epochs, math.ceil(stretch * placed))
    while epochs < longest and cost(m, epochs + 1) <= limit:
        epochs += 1
    if (m, epochs) == (members, placed):
        return out
    said = ([f"{m} members instead of {members}"] if m != members else []) + (
        [f"{epochs} epochs instead of {placed}"] if epochs != placed else [])
    return {**out, "members": m, "epochs": epochs, "patience": max(5, epochs // 2),
            "reason": f"{decay['reason']}; time left over: {', '.join(said)}"}


PEAK_FACTORS = (1.0, 2.0, 4.0)   # the final decay's peak rate tried at the chosen constant rate and above it


def pick_peak(rows: Sequence[dict], lr: float, mode: str = "max", folds: Sequence[int] = FOLDS) -> dict[str, Any]:
    """The final schedule's peak rate from the peak check's runs: the best constant rate of steps 4-5 is not
    the best peak of a decayed schedule (a rate too high to hold is fine to start a decay from), so the final
    decay is tried from `lr` x each of PEAK_FACTORS on the validation folds. `rows`: leaderboard rows with
    params lr and split_seed and their value. Returns {"factor", "lr", "means"}: the factor whose mean over
    `folds` is best, among those with a finite value on every fold; the lower factor on a tie, x1 when none
    is complete. `means`: {factor: mean or None}.

    >>> rows = [{"params": {"lr": lr, "split_seed": f}, "value": v} for lr, f, v in
    ...         [(0.01, 0, 0.90), (0.01, 1, 0.92), (0.02, 0, 0.95), (0.02, 1, 0.93), (0.04, 0, 0.94), (0.04, 1, None)]]
    >>> pick_peak(rows, 0.01)
    {'factor': 2.0, 'lr': 0.02, 'means': {1.0: 0.91, 2.0: 0.94, 4.0: None}}
    """
    sign = better_first(mode)
    means: dict[float, float | None] = {}
    for factor in PEAK_FACTORS:
        vals = {}
        for r in rows:
            if math.isclose(r["params"]["lr"], lr * factor, rel_tol=1e-6) and r.get("value") is not None:
                vals[r["params"]["split_seed"]] = float(r["value"])
        ok = len(vals) == len(folds) and all(math.isfinite(v) for v in vals.values())
        means[factor] = round(statistics.fmean(vals.values()), 10) if ok else None
    done = [(sign * m, f) for f, m in means.items() if m is not None]
    factor = min(done)[1] if done else 1.0
    return {"factor": factor, "lr": lr * factor, "means": means}
