"""The learning-rate range test's analysis, on plain arrays: the lecture's discrete trial (each rate
for ~100 steps from the same start) and the exponential sweep (Smith 2015), each with its documented
rule, and whether the two agree. The trainings themselves are `checks.check_lr`'s.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from trainlab.doctor.curves import ema_smooth, moving_average

__all__ = ["lr_trial_summary", "pick_discrete_lr", "pick_moving_lr", "MOVED_Z", "WIDER_LRS", "WIDER_SWEEP_RANGE", "analyze_lr_sweep", "lrs_agree", "LECTURE_LRS", "LR_TEST_WEIGHT_DECAY",
           "SWEEP_RANGE", "SWEEP_STEPS", "TRIAL_STEPS", "SIGNIFICANT_DROP", "TRIAL_SPIKE", "SWEEP_BETA", "SWEEP_SKIP",
           "SWEEP_DIVERGE", "SWEEP_RULE", "AGREE_DECADES"]


# The LR range test's settings (used by checks.py and the command line, which must not import torch).
LECTURE_LRS = (1e-1, 1e-2, 1e-3, 1e-4)   # the lecture's discrete trial
LR_TEST_WEIGHT_DECAY = 1e-4              # "a small weight decay" during the LR test
SWEEP_RANGE = (1e-6, 10.0)               # the exponential sweep's first and last learning rate (7 decades)
SWEEP_STEPS = 200
WIDER_LRS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)   # the widened test's grid, when the lecture's saw no drop
WIDER_SWEEP_RANGE = (1e-7, 100.0)
TRIAL_STEPS = 100
SIGNIFICANT_DROP = 0.10   # a trial's loss "drops significantly": its end is >= 10% below the initial loss
TRIAL_SPIKE = 2.0         # a trial whose smoothed loss ever exceeded 2x the initial loss is unstable, even if it came back
SWEEP_BETA = 0.95         # EMA of the sweep's loss (fastai's 0.98 lags so much on 200 steps that on mnist1d mlp
                          # the drop before the blow-up never shows; 0.9 leaves the minimum noisy)
SWEEP_SKIP = 10           # the first sweep points are skipped: the EMA is still warming up on few values
SWEEP_DIVERGE = 4.0       # the sweep is cut where the smoothed loss exceeds 4x its minimum so far
SWEEP_RULE = "lr at the minimum of the smoothed loss, divided by 10"
AGREE_DECADES = 1.0       # two suggestions agree when less than one decade apart (one step of the lecture's grid);
                          # min/10 is conservative by design and measured 0.0-0.6 decade below the discrete pick


def lr_trial_summary(losses: Sequence[float], stopped: str | None = None) -> dict[str, Any]:
    """One discrete trial (a constant learning rate for ~100 steps from the shared initialization).

    start: the first step's loss (the same for every trial: same weights, same first batch); end: mean of
    the last 20% of the steps (at least 5), which smooths minibatch noise; status: "diverged" (NaN/Inf,
    or stopped by the loop's divergence check: `stopped`), "unstable" (the smoothed loss went above
    TRIAL_SPIKE x start at some point, even if it came back down), "no drop" (end less than
    SIGNIFICANT_DROP below start), else "ok". Only "ok" trials can be picked.

    >>> lr_trial_summary([2.3] * 10 + [1.0] * 90)["status"]
    'ok'
    """
    v = np.asarray(losses, dtype=float)
    if v.size == 0:
        return {"start": math.nan, "end": math.nan, "drop": math.nan, "status": "diverged", "why": "no steps"}
    w = max(5, len(v) // 5)
    start = float(v[0])
    tail = v[-w:]
    end = float(tail.mean()) if np.isfinite(tail).all() else math.nan
    drop = (start - end) / start if math.isfinite(end) and start > 0 else math.nan
    spike = float(np.nanmax(moving_average(v, 5))) if np.isfinite(v).any() else math.nan
    head = v[:w]
    # how surely the loss moved: the first 20% against the last 20%, in standard errors (a slow but real
    # drop on a noisy task is small next to SIGNIFICANT_DROP, yet many standard errors)
    z = math.nan
    if np.isfinite(head).all() and np.isfinite(tail).all() and len(v) >= 10:
        se = math.sqrt(float(head.var(ddof=1)) / len(head) + float(tail.var(ddof=1)) / len(tail))
        z = (float(head.mean()) - float(tail.mean())) / se if se > 0 else math.inf * np.sign(head.mean() - tail.mean())
    if not np.isfinite(v).all():
        status, why = "diverged", f"loss became {v[~np.isfinite(v)][0]} at step {int(np.argmax(~np.isfinite(v)))}"
    elif stopped:
        status, why = "diverged", stopped
    elif spike > TRIAL_SPIKE * start:
        status, why = "unstable", f"smoothed loss reached {spike:.3g}, over {TRIAL_SPIKE:g}x the initial {start:.3g}"
    elif not drop >= SIGNIFICANT_DROP:
        status, why = "no drop", f"loss {start:.3g} -> {end:.3g} ({drop:.0%} lower; {SIGNIFICANT_DROP:.0%} needed)"
    else:
        status, why = "ok", f"loss {start:.3g} -> {end:.3g} ({drop:.0%} lower)"
    return {"start": start, "end": end, "drop": drop, "max_smoothed": spike, "status": status, "why": why,
            "z": z}


MOVED_Z = 4.0   # a trial "moved the loss" when its last 20% sits >= 4 standard errors below its first 20%


def pick_moving_lr(rows: Sequence[Mapping[str, Any]], z: float = MOVED_Z) -> float | None:
    """The fallback pick when no trial dropped SIGNIFICANT_DROP: among trials that neither diverged nor
    spiked, the rate whose loss moved most surely (largest z, at least `z` standard errors): slow learning
    is learning. None when no rate moved the loss: the evidence that no rate trains the model.

    >>> pick_moving_lr([{"lr": 0.1, "status": "no drop", "z": 6.0}, {"lr": 0.01, "status": "no drop", "z": 1.0}])
    0.1
    """
    ok = [r for r in rows if r["status"] == "no drop" and r.get("z") is not None and math.isfinite(r["z"])
          and r["z"] >= z]
    return float(max(ok, key=lambda r: r["z"])["lr"]) if ok else None


def pick_discrete_lr(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The lecture's pick: among trials with status "ok", the learning rate whose loss ends lowest (all
    start from the same loss, so this is the largest drop). None when no trial dropped without diverging.

    >>> pick_discrete_lr([{"lr": 0.1, "status": "diverged", "end": 9.0}, {"lr": 0.01, "status": "ok", "end": 0.5},
    ...                   {"lr": 0.001, "status": "ok", "end": 1.2}])
    0.01
    """
    ok = [r for r in rows if r["status"] == "ok" and math.isfinite(r["end"])]
    return float(min(ok, key=lambda r: r["end"])["lr"]) if ok else None


def analyze_lr_sweep(lrs: Sequence[float], losses: Sequence[float], beta: float = SWEEP_BETA,
                     skip: int = SWEEP_SKIP, diverge: float = SWEEP_DIVERGE) -> dict[str, Any]:
    """Read an exponential learning-rate sweep (Smith 2017): the suggested lr and how it was found.

    Steps: the loss is smoothed with a bias-corrected EMA (`ema_smooth`, `beta`); the first `skip` points
    are ignored; the curve is cut at divergence (the first NaN/Inf, or the first smoothed loss above
    `diverge` x the minimum so far); the suggestion is SWEEP_RULE. Why that rule: the minimum of a
    smoothed curve is stable under noise, while the steepest-slope point needs a derivative of a noisy
    curve (the source of the confidently wrong picks users report from other finders); and a tenth of
    the rate where the loss stops improving is still a rate at which it falls fast. No suggestion (None)
    when the smoothed loss never falls SIGNIFICANT_DROP below its value after the skipped points.

    Returns lrs/raw/smoothed (the finite points), skip, cut (index after the last kept point), cut_reason,
    min_index, lr_at_min, loss_at_min, suggested_lr, rule and note.
    """
    lr = np.asarray(lrs, dtype=float)
    v = np.asarray(losses, dtype=float)
    if lr.shape != v.shape:
        raise ValueError(f"lrs and losses must have the same length, but got {lr.size} and {v.size}.")
    bad = np.nonzero(~np.isfinite(v))[0]
    n_finite = int(bad[0]) if bad.size else v.size
    dropped = int(v.size - np.isfinite(v).sum())
    lr, v = lr[:n_finite], v[:n_finite]
    out: dict[str, Any] = {"lrs": lr.tolist(), "raw": v.tolist(), "skip": skip, "rule": SWEEP_RULE,
                           "dropped_nonfinite": dropped, "suggested_lr": None, "lr_at_min": None,
                           "loss_at_min": None, "min_index": None, "cut": n_finite,
                           "cut_reason": f"loss became NaN/Inf at step {n_finite}" if bad.size else None, "note": None}
    if v.size <= skip + 2:
        out["smoothed"] = ema_smooth(v, beta).tolist() if v.size else []
        out["note"] = f"too few finite points ({v.size}) after skipping {skip}: the loss diverged at once"
        return out
    smooth = ema_smooth(v, beta)
    out["smoothed"] = smooth.tolist()
    running_min = np.minimum.accumulate(smooth[skip:])
    over = np.nonzero(smooth[skip:] > diverge * running_min)[0]
    cut = skip + int(over[0]) if over.size else v.size
    if over.size:
        out["cut"], out["cut_reason"] = cut, (f"smoothed loss {smooth[cut]:.3g} over {diverge:g}x its minimum "
                                              f"{running_min[over[0]]:.3g} at lr {lr[cut]:.3g}")
    else:
        out["cut"] = cut
    seg = smooth[skip:cut]
    i = skip + int(np.argmin(seg))
    out.update({"min_index": i, "lr_at_min": float(lr[i]), "loss_at_min": float(smooth[i])})
    if not smooth[i] <= (1 - SIGNIFICANT_DROP) * smooth[skip]:
        out["note"] = (f"the smoothed loss never fell {SIGNIFICANT_DROP:.0%} below {smooth[skip]:.3g} between lr "
                       f"{lr[skip]:.3g} and {lr[cut - 1]:.3g}: no rate trains this model; check the model and data")
        return out
    out["suggested_lr"] = float(lr[i]) / 10
    if i >= cut - 3 and out["cut_reason"] is None:
        out["note"] = (f"the loss was still falling at the largest lr tried ({lr[cut - 1]:.3g}): the suggestion "
                       "is a lower bound; extend the sweep's range")
    return out


def lrs_agree(a: float | None, b: float | None, decades: float = AGREE_DECADES) -> bool | None:
    """Whether two suggested learning rates agree: less than `decades` decades apart (default one decade,
    a factor of 10: one step of the lecture's 1e-1/1e-2/... grid). None if either is missing.

    Why one decade: the discrete pick is only known to a decade, and the sweep's rule (a tenth of the
    rate where the loss stops improving) is conservative by design; on mnist1d/digits with mlp, cnn and
    resnet, Adam and momentum SGD, it landed 0.0-0.6 decade below the discrete pick. A full decade or
    more means the two methods saw different curves: look at the plot.

    >>> lrs_agree(3e-3, 1e-2), lrs_agree(1e-3, 1e-1), lrs_agree(None, 1e-3)
    (True, False, None)
    """
    if a is None or b is None:
        return None
    return bool(abs(math.log10(a / b)) < decades)
