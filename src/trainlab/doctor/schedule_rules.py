"""The doctor's schedule-aware rules (slow_start, plateau, decayed_too_early, lr_too_low): the per-step loss read
against the learning rate. Kept apart from the curve rules; `rules.diagnose` applies both. No torch here.
"""

from __future__ import annotations

import math

import numpy as np

from trainlab.doctor.curves import loss_trend, moving_average, smoothing_window
from trainlab.doctor.finding import LOW_ACC, MIN_STEPS, Finding, _g

__all__: list[str] = []   # the rules are applied by `rules.diagnose`; their thresholds are read from here

# Thresholds, checked like the curve rules' (`rules`) on runs built to show one fault and on healthy ones.
START_DROP = 0.05            # slow start: steps until the smoothed loss is 5% below its start (the "start") ...
NEXT_DROP = 0.25             # ... against steps from there to 25% below it (the descent that follows);
SLOW_START_RATIO = 1.5       # ... a start >= 1.5x as long as that descent is a flat start (an exponential-like
                             #     healthy curve measures 0.2-0.5: its fastest fall is at the beginning).
                             #     Fractions of the start loss and a ratio of step counts: no run length in it.
MIN_DROP = 0.2               # plateau: the loss fell >= 20% of its start before the plateau
PLATEAU_TOL = 0.05           # plateau: from its first step on, the smoothed loss improves < 5% of the drop so far ...
PLATEAU_MIN_SHARE = 0.25     # ... for >= 25% of the steps it took to get there (and >= 3 smoothing windows) ...
CONSTANT_LR = 0.01           # ... at a constant lr (within 1%), and one not yet decayed (>= half the peak),
FLAT_SLOPE = 0.25            # ... its slope under 1/4 of the slope over as many steps before it (near zero)
LR_DROP = 0.5                # decayed too early: the lr falls to <= half within one smoothing window ...
STEEP = 0.3                  # ... while the loss still fell >= 0.3x its average pace so far (significantly:
                             #     a slope >= 3 standard errors), ...
SLOWER = 0.5                 # ... and the descent after it (past the jump) is < half as fast as before
FLAT_DROP = 0.1              # barely moving: the smoothed loss ends less than 10% below where it began


def _centered(v: np.ndarray, w: int) -> np.ndarray:
    """Moving average centred on each step (the trailing one shifted back by half a window): no lag, so a
    step count read off it is the curve's own, whatever the window."""
    ma = moving_average(v, w)
    idx = np.minimum(np.arange(len(v)) + w // 2, len(v) - 1)
    return ma[idx]


def _lr_per_step(lr, steps: np.ndarray) -> np.ndarray | None:
    """The lr at each of `steps` (the stored lr rows are per step too; missing ones take the one before)."""
    if lr is None or not np.isfinite(lr[1]).any():
        return None
    xs, vs = lr
    i = np.clip(np.searchsorted(xs, steps, side="right") - 1, 0, len(vs) - 1)
    return np.asarray(vs, dtype=float)[i]


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The least-squares fall per step of y over x (positive: falling) and its standard error."""
    x = np.asarray(x, dtype=float)
    (m, c), res = np.polyfit(x, y, 1), None
    res = y - (m * x + c)
    sxx = float(((x - x.mean()) ** 2).sum())
    err = math.sqrt(float((res ** 2).sum()) / max(1, len(x) - 2) / sxx) if sxx > 0 else math.inf
    return -float(m), err


def _per_kilostep(slope: float) -> str:
    return f"{slope * 1000:.3g}/1000 steps"


def _rule_slow_start(loss, lr) -> Finding | None:
    """A flat start, judged on the curve's own shape in units of the start loss: the steps until the
    smoothed loss is START_DROP below its start, against the steps of the descent that follows (to
    NEXT_DROP below). A healthy curve falls fastest at first (ratio 0.2-0.5); a start that takes
    SLOW_START_RATIO x as long as the descent after it is a flat start, in a 2-epoch run as in a 60-epoch one."""
    steps, v = loss
    n = len(v)
    if n < MIN_STEPS:
        return None
    w = smoothing_window(n)
    smooth = _centered(v, w)
    head = v[:5][np.isfinite(v[:5])]
    if not head.size:
        return None
    start = float(head.mean())
    below5 = np.nonzero(smooth <= start * (1 - START_DROP))[0]
    below25 = np.nonzero(smooth <= start * (1 - NEXT_DROP))[0]
    if not below25.size or not below5.size:
        return None  # never fell far enough to judge its start (lr_too_low speaks for a flat curve)
    s5, s25 = int(below5[0]), int(below25[0])
    descent = max(1, s25 - s5)
    ratio = s5 / descent
    if ratio < SLOW_START_RATIO or s5 < max(20, 2 * w):
        return None
    confidence = "high" if ratio >= 2 * SLOW_START_RATIO else "medium"
    lr_v = _lr_per_step(lr, steps)
    lr_flat = float(np.nanmedian(lr_v[:s5 + 1])) if lr_v is not None else None
    note, action = "", ("confirm it first: `trainlab.checks.check_start` re-runs these first steps from a fresh "
                        "default initialization and says whether that starts faster; if it does, a better "
                        "initialization (He/Kaiming for ReLU, Xavier for tanh; not too small) or normalization "
                        "layers (BatchNorm)")
    if lr_v is not None and lr_flat < 0.75 * float(np.nanmax(lr_v)):  # still ramping up during the flat start
        confidence, note = "low", (f"; the learning rate was still low then (median {_g(lr_flat)}, "
                                   f"peak {_g(float(np.nanmax(lr_v)))}: warmup?)")
        action = "a shorter warmup; if the flat start stays, " + action
    at_lr = f" at lr {_g(lr_flat)}" if lr_flat is not None else ""
    return Finding("slow_start", "slow start: the loss is flat for a long start, then drops (bad initialization?)",
                   f"smoothed loss stayed within {START_DROP:.0%} of its start {_g(start)} for steps "
                   f"{int(steps[0])}-{int(steps[s5])}{at_lr}, then fell to {NEXT_DROP:.0%} below it in {descent} "
                   f"steps (to step {int(steps[s25])}): the start took {ratio:.1f}x as long as the descent "
                   f"after it (healthy: under {SLOW_START_RATIO:g}x){note}",
                   action, confidence,
                   {"plateau_steps": [int(steps[0]), int(steps[s5])], "plateau_fraction": s5 / n,
                    "descent_steps": [int(steps[s5]), int(steps[s25])], "ratio": ratio, "lr": lr_flat,
                    "start": start, "min": float(np.nanmin(smooth))})


def _rule_plateau(loss, lr) -> Finding | None:
    """The loss has stopped improving at a constant, not yet decayed, learning rate: decay now.

    Plateau start: the first step (in the final constant-lr stretch) from which the smoothed loss improves
    by less than PLATEAU_TOL of the drop so far, once the loss has fallen MIN_DROP of its start; the
    stretch from there must last PLATEAU_MIN_SHARE of the steps before it and 3 smoothing windows, and its
    least-squares slope be under FLAT_SLOPE x the slope over as many steps before it."""
    steps, v = loss
    n = len(v)
    lr_v = _lr_per_step(lr, steps)
    if lr_v is None or n < 4 * MIN_STEPS:
        return None
    peak, lr_end = float(np.nanmax(lr_v)), float(lr_v[-1])
    if not lr_end >= 0.5 * peak:
        return None  # decayed already: the flattening is the decay's end, not a plateau
    w = max(2 * smoothing_window(n), 10)
    smooth = _centered(v, w)
    head = v[:5][np.isfinite(v[:5])]
    if not head.size or not np.isfinite(smooth).all():
        return None
    start = float(head.mean())
    const = np.abs(lr_v - lr_end) <= CONSTANT_LR * lr_end
    c = int(n - np.argmax(~const[::-1])) if (~const).any() else 0
    later_min = np.minimum.accumulate(smooth[::-1])[::-1]
    drop = start - smooth
    ok = ((smooth - later_min) < PLATEAU_TOL * drop) & (drop >= MIN_DROP * start)
    hits = np.nonzero(ok[c:])[0]
    if not hits.size:
        return None
    t = c + int(hits[0])
    length = n - t
    if length < max(3 * w, PLATEAU_MIN_SHARE * t):
        return None
    k = min(t, length)
    slope = float(np.polyfit(steps[t:], v[t:], 1)[0])
    before = float(np.polyfit(steps[t - k:t], v[t - k:t], 1)[0]) if k >= 10 else math.nan
    if not (k >= 10 and slope > -FLAT_SLOPE * max(-before, 0.0)):
        return None  # still falling at a good share of its earlier pace (a log-like curve): not flat yet
    improved = float(smooth[t] - later_min[t])
    confidence = "high" if length >= max(6 * w, 0.5 * t) else "medium"
    return Finding("plateau", "the loss has plateaued at a constant learning rate",
                   f"from step {int(steps[t])} (lr {_g(lr_end)}, constant since step {int(steps[c])}) the smoothed "
                   f"loss improved only {_g(improved)} over {length} steps ({improved / drop[t]:.1%} of its drop "
                   f"from {_g(start)} to {_g(smooth[t])}); slope {_per_kilostep(-slope)} there, "
                   f"{_per_kilostep(-before)} before it",
                   f"decay the learning rate now (x0.1 from step {int(steps[t])}, or a cosine/step schedule that "
                   "ends there): a constant rate has given what it can", confidence,
                   {"step": int(steps[t]), "lr": lr_end, "constant_since": int(steps[c]), "steps": length,
                    "improved": improved, "drop": float(drop[t]), "slope": -slope, "slope_before": -before})


def _rule_decayed_too_early(loss, lr) -> Finding | None:
    """A sharp lr drop (to LR_DROP or less within a step, from near the peak) while the loss still fell
    steeply (STEEP x its average pace so far, over the last quarter before the drop, and significantly),
    after which (past the drop's own jump) it fell less than SLOWER x as fast: the decay cut the descent short."""
    steps, v = loss
    n = len(v)
    lr_v = _lr_per_step(lr, steps)
    if lr_v is None or n < 2 * MIN_STEPS:
        return None
    peak = float(np.nanmax(lr_v))
    drops = np.nonzero((lr_v[1:] <= LR_DROP * lr_v[:-1]) & (lr_v[:-1] >= 0.5 * peak))[0]
    if not drops.size:
        return None
    d = int(drops[0]) + 1
    w = smoothing_window(n)
    span = min(max(3 * w, d // 4), d - 5)
    skip = max(w, span // 2)   # the jump right after a decay is its benefit, not the descent that follows
    lo, a, b = d - span, d + skip, min(n, d + skip + span)
    if span < 10 or b - a < max(10, span // 2) or not np.isfinite(v[:b]).all():
        return None
    so_far = float(np.mean(v[:5])) - float(np.mean(v[d - w:d]))
    before, err = _slope(steps[lo:d], v[lo:d])
    after, _ = _slope(steps[a:b], v[a:b])
    if not so_far > 0 or before < 3 * err:
        return None  # no drop yet, or a slope the noise could make: nothing to judge
    steep = before / (so_far / d)   # the pace before the decay against the average pace so far
    if steep < STEEP or not after < SLOWER * before:
        return None
    share = before * span / so_far
    return Finding("decayed_too_early", "the learning rate was decayed too early (the loss was still falling fast)",
                   f"lr fell {_g(lr_v[d - 1])} -> {_g(lr_v[d])} at step {int(steps[d])} while the loss still fell "
                   f"{_per_kilostep(before)} over the {span} steps before ({steep:.2g}x its average pace so far); after it "
                   f"(steps {int(steps[a])}-{int(steps[b - 1])}) only {_per_kilostep(after)}",
                   "decay later: keep the higher rate until the loss plateaus (the doctor's plateau finding says "
                   "when), or stretch the schedule (later milestones, a longer cosine)",
                   "high" if after < 0.25 * before else "medium",
                   {"step": int(steps[d]), "lr_before": float(lr_v[d - 1]), "lr_after": float(lr_v[d]),
                    "slope_before": before, "slope_after": after, "share_before": share, "steepness": steep,
                    "span": span})


def _rule_lr_too_low(loss, lr, train_acc_end, num_classes) -> Finding | None:
    steps, v = loss
    if len(v) < MIN_STEPS:
        return None
    t = loss_trend(v)
    rel = (t["start"] - t["end"]) / t["start"] if t["start"] > 0 else math.nan
    if not rel < FLAT_DROP:
        return None
    if train_acc_end is not None and train_acc_end >= LOW_ACC:
        return None  # already fits the training data (fine-tuning a converged model): nothing to move
    if num_classes and t["start"] < 0.3 * math.log(num_classes):
        return None
    lr_note = ""
    if lr is not None and np.isfinite(lr[1]).any():
        lr_note = f" (lr {_g(float(np.nanmax(lr[1])))} at most)"
    return Finding("lr_too_low", "learning rate too low (the loss is barely moving)",
                   f"smoothed loss went from {_g(t['start'])} to {_g(t['end'])} ({rel:.1%} lower) over steps "
                   f"{int(steps[0])}-{int(steps[-1])}{lr_note}",
                   "raise the learning rate by 10x (`trainlab check lr` finds one); if no rate moves it, "
                   "check the initialization and that gradients reach every layer",
                   "high" if rel < 0.3 * FLAT_DROP else "medium",
                   {"start": t["start"], "end": t["end"], "relative_drop": rel,
                    "steps": [int(steps[0]), int(steps[-1])]})
