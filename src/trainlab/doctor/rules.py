"""The learning-curve doctor's rules: each a pure function of curves (lists or numpy arrays) that returns a
`Finding` or nothing, and the precedence that settles findings that contradict each other. No torch here.
The initial-loss verdicts live in `init_loss`, the update/weight-ratio rule in `ratio`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from trainlab.doctor.curves import json_safe, loss_trend, moving_average, slope_rise, smoothing_window
from trainlab.doctor.init_loss import INIT_LOSS_TOLERANCE, init_loss_verdict

__all__ = ["Finding", "diagnose", "resolve", "PRECEDENCE"]

# --- the learning-curve doctor ---------------------------------------------------------------------
# Thresholds. Each was checked on real runs built to show one fault (tests/test_doctor.py) and on
# healthy runs (mnist1d resnet, digits mlp), where none of them fires.
EXPLODE_FACTOR = 10.0        # a loss above 10x max(initial loss, log C) has exploded (the loop stops there too)
GROWTH_FACTOR = 1.5          # the smoothed loss ends 1.5x above where it began: a slow divergence
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
RISE_ACC = 0.01              # still rising: val acc up >= 1 point (train acc >= 0.5 point) over the last epochs
GAP_ACC = 0.10               # overfitting: train acc - val acc >= 10 points ...
VAL_LOSS_RISE = 0.10         # ... or val loss (last 3 epochs) >= 10% above its smoothed minimum, >= 2 epochs
VAL_LOSS_NOISE = 3.0         #     later, by >= 3x its epoch-to-epoch noise, while train loss fell (on the default
                             #     mnist1d resnet run the val loss wanders 0.04-0.057 late: noise, not a rise)
NO_GAP_ACC = 0.05            # underfitting: gap below 5 points ...
LOW_ACC = 0.90               # ... and train accuracy below 90%
MIN_STEPS = 50               # per-step rules need at least this many steps


@dataclass(frozen=True)
class Finding:
    """One diagnosis of a learning curve.

    `name` is a stable identifier (diverged, initial_loss, slow_start, lr_too_low, overfitting,
    underfitting, train_longer, update_ratio); `diagnosis` the lecture's cause; `evidence` a line with
    the numbers and the step or epoch range they come from (also in `numbers`, machine-readable);
    `action` what to try next; `confidence` "high", "medium" or "low".
    """

    name: str
    diagnosis: str
    evidence: str
    action: str
    confidence: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def __str__(self) -> str:
        return f"{self.name} ({self.confidence}): {self.diagnosis}. {self.evidence}. Try: {self.action}."


def _series(curves: Mapping[str, Any], key: str, axis: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, values) of one curve: a store-style {"step"/"epoch": [...], "value": [...]} or a plain sequence.

    A plain sequence is indexed from 0 for steps and from 1 for epochs (the store's epochs are 1-based).
    """
    raw = curves.get(key)
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        values = np.asarray(raw.get("value", ()), dtype=float)
        x = raw.get(axis)
    else:
        values, x = np.asarray(raw, dtype=float), None
    if values.size == 0:
        return None
    if x is None or len(x) != len(values) or any(v is None for v in x):
        x = np.arange(len(values)) + (1 if axis == "epoch" else 0)
    return np.asarray(x, dtype=float), values


def _at(series: tuple[np.ndarray, np.ndarray] | None, x: float) -> float | None:
    """The value of `series` at (or just before) position x."""
    if series is None:
        return None
    xs, vs = series
    i = int(np.searchsorted(xs, x, side="right")) - 1
    return float(vs[max(i, 0)])


def _g(x: float) -> str:
    return f"{x:.3g}"


def _rule_diverged(loss, lr, num_classes) -> Finding | None:
    steps, v = loss
    bad = ~np.isfinite(v)
    first = v[np.isfinite(v)][:1]  # the loss at initialization: the loop's own reference
    ref = max(float(first[0]) if first.size else 0.0, math.log(num_classes) if num_classes else 0.0)
    over = np.zeros_like(bad) if ref <= 0 else (v > EXPLODE_FACTOR * ref)
    hit = np.nonzero(bad | over)[0]
    if hit.size:
        i = int(hit[0])
        what = "NaN" if np.isnan(v[i]) else "Inf" if np.isinf(v[i]) else f"{_g(v[i])} (over {EXPLODE_FACTOR:g}x {_g(ref)})"
        lr_i = _at(lr, steps[i])
        at_lr = f" at lr {_g(lr_i)}" if lr_i is not None else ""
        return Finding("diverged", "learning rate too high (or bad initialization)",
                       f"loss became {what} at step {int(steps[i])}{at_lr}",
                       "lower the learning rate by 3-10x, add warmup or gradient clipping; "
                       "if it explodes at any rate, check the initialization", "high",
                       {"step": int(steps[i]), "loss": float(v[i]), "lr": lr_i, "reference": ref})
    if len(v) < MIN_STEPS:
        return None
    t = loss_trend(v)
    if t["end"] > GROWTH_FACTOR * t["start"]:
        return Finding("diverged", "learning rate too high (or bad initialization)",
                       f"smoothed loss grew from {_g(t['start'])} to {_g(t['end'])} over steps "
                       f"{int(steps[0])}-{int(steps[-1])}",
                       "lower the learning rate by 3-10x", "medium",
                       {"start": t["start"], "end": t["end"], "steps": [int(steps[0]), int(steps[-1])]})
    return None


def _rule_initial_loss(loss, num_classes) -> Finding | None:
    steps, v = loss
    if not num_classes or num_classes < 2 or not np.isfinite(v[0]):
        return None
    l0 = float(v[0])  # the first step's loss, before any update (a later step may already have exploded)
    verdict = init_loss_verdict(l0, num_classes)
    if verdict["ok"]:
        return None
    return Finding("initial_loss", "check the initialization and the labels",
                   f"{verdict['message'].split(':')[0]} (step {int(steps[0])})",
                   "scale the output layer down (zero or small init of the last layer) and check that labels "
                   "run over 0..C-1; `trainlab check init` measures it alone",
                   "high" if abs(verdict["deviation"]) > 2 * INIT_LOSS_TOLERANCE else "medium",
                   {"initial_loss": l0, "expected": verdict["expected"], "deviation": verdict["deviation"],
                    "step": int(steps[0])})


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


def _tail(n: int) -> int:
    """Epochs judged as 'the end of the run': the last quarter, at least 3 (all when fewer)."""
    return min(n, max(3, n // 4))


def _rule_train_longer(tr_acc, va_acc, va_loss) -> Finding | None:
    (ep, va), tr = va_acc, tr_acc[1]
    n = min(len(va), len(tr))
    if n < 2:
        return None
    k = _tail(n)
    rise_va, rise_tr = slope_rise(va[n - k:n]), slope_rise(tr[n - k:n])
    if not (rise_va >= RISE_ACC and rise_tr >= RISE_ACC / 2 and va[n - 1] >= np.nanmax(va[:n]) - RISE_ACC):
        return None
    e0, e1 = int(ep[n - k]), int(ep[n - 1])
    loss_note = ""
    if va_loss is not None and len(va_loss[1]) >= n:
        vl = va_loss[1]
        loss_note = f"; val/loss {_g(vl[n - k])} -> {_g(vl[n - 1])}"
    return Finding("train_longer", "still learning at the end of the run",
                   f"val/acc rose {va[n - k]:.3f} -> {va[n - 1]:.3f} and train/acc {tr[n - k]:.3f} -> "
                   f"{tr[n - 1]:.3f} over epochs {e0}-{e1}{loss_note}",
                   "train longer (more epochs), keeping the learning-rate decay at the end",
                   "high" if min(rise_va, rise_tr) >= 3 * RISE_ACC else "medium",
                   {"epochs": [e0, e1], "val_acc_rise": rise_va, "train_acc_rise": rise_tr,
                    "val_acc": float(va[n - 1]), "train_acc": float(tr[n - 1])})


def _rule_overfitting(tr_acc, va_acc, va_loss, tr_loss) -> Finding | None:
    """The accuracy gap (when accuracy is measured) and a rising val/loss (any task: a regression has no
    accuracy, so only its loss curves are judged)."""
    reasons, numbers, gap = [], {}, 0.0
    if tr_acc is not None and va_acc is not None:
        (ep, va), tr = va_acc, tr_acc[1]
        n = min(len(va), len(tr))
        if n < 1:
            return None
        k = min(n, 3)
        gap = float(np.nanmean(tr[n - k:n] - va[n - k:n]))
        numbers = {"gap": gap, "epochs": [int(ep[n - k]), int(ep[n - 1])]}
    if gap >= GAP_ACC:
        reasons.append(f"train/acc {np.nanmean(tr[n - k:n]):.3f} vs val/acc {np.nanmean(va[n - k:n]):.3f} "
                       f"(gap {gap * 100:.0f} points) over epochs {int(ep[n - k])}-{int(ep[n - 1])}")
    if va_loss is not None and np.isfinite(va_loss[1]).all() and len(va_loss[1]) >= 4:
        lep, vl = va_loss
        m = len(vl)
        # centered 3-epoch average: one lucky epoch is not the minimum
        smooth = np.array([vl[max(0, j - 1):j + 2].mean() for j in range(m)])
        i = int(np.argmin(smooth))
        end = float(vl[-3:].mean())
        diffs = np.diff(vl[i:])
        noise = float(diffs.std() / math.sqrt(2)) if diffs.size >= 2 else math.inf
        train_fell = True
        if tr_loss is not None and len(tr_loss[1]) == m:
            train_fell = tr_loss[1][-1] < tr_loss[1][i]
        rise = end - smooth[i]
        if (m - 1 - i >= 2 and end >= smooth[i] * (1 + VAL_LOSS_RISE) and rise >= VAL_LOSS_NOISE * noise
                and train_fell):
            tl = (f" while training loss fell {_g(tr_loss[1][i])} -> {_g(tr_loss[1][-1])}"
                  if tr_loss is not None and len(tr_loss[1]) == m else "")
            reasons.append(f"val/loss rose from {_g(smooth[i])} (epoch {int(lep[i])}, 3-epoch mean) to {_g(end)} "
                           f"(epochs {int(lep[-3])}-{int(lep[-1])}), {rise / noise:.0f}x its epoch-to-epoch noise{tl}"
                           if noise > 0 else
                           f"val/loss rose from {_g(smooth[i])} (epoch {int(lep[i])}) to {_g(end)} (epoch {int(lep[-1])}){tl}")
            numbers.update({"val_loss_min": float(smooth[i]), "val_loss_min_epoch": int(lep[i]), "val_loss_end": end,
                            "val_loss_noise": noise})
    if not reasons:
        return None
    confidence = "high" if len(reasons) == 2 or gap >= 2 * GAP_ACC else "medium"
    best = f" (best val/loss at epoch {numbers['val_loss_min_epoch']})" if "val_loss_min_epoch" in numbers else ""
    return Finding("overfitting", "overfitting (the model fits the training set much better than new data)",
                   "; ".join(reasons),
                   f"increase regularization (weight decay, dropout, augmentation), stop earlier{best}, "
                   "or get more data", confidence, numbers)


def _rule_underfitting(tr_acc, va_acc) -> Finding | None:
    (ep, va), tr = va_acc, tr_acc[1]
    n = min(len(va), len(tr))
    if n < 1:
        return None
    k = min(n, 3)
    tr_end, va_end = float(np.nanmean(tr[n - k:n])), float(np.nanmean(va[n - k:n]))
    gap = tr_end - va_end
    if not (gap < NO_GAP_ACC and tr_end < LOW_ACC):
        return None
    return Finding("underfitting", "underfitting (no gap, but low accuracy: the model cannot fit the training set)",
                   f"train/acc {tr_end:.3f} and val/acc {va_end:.3f} (gap {gap * 100:.1f} points) over epochs "
                   f"{int(ep[n - k])}-{int(ep[n - 1])}, flat at the end",
                   "train longer or use a bigger model (more width or depth); less regularization",
                   "high" if tr_end < LOW_ACC - 0.2 else "medium",
                   {"train_acc": tr_end, "val_acc": va_end, "gap": gap, "epochs": [int(ep[n - k]), int(ep[n - 1])]})


# Precedence: a finding named on the left, when found, silences those on the right (they contradict it, or
# its action comes first). Judged on what was found, not in order, so the result does not depend on the
# order rules run in. A divergence silences every other curve rule (they would describe its aftermath).
PRECEDENCE: dict[str, tuple[str, ...]] = {
    "lr_too_low": ("plateau", "train_longer", "underfitting"),       # raise the rate first
    "overfitting": ("train_longer", "underfitting"),                 # "stop earlier" beats "more epochs"
    "plateau": ("train_longer", "underfitting"),                     # decay, not more epochs or a bigger model
    "decayed_too_early": ("train_longer", "underfitting"),           # decay later, not more epochs
    "slow_start": ("underfitting",),
    "train_longer": ("underfitting",),
}


def resolve(findings: Sequence[Finding]) -> list[Finding]:
    """The findings that survive PRECEDENCE; a silencer lists what it silenced in numbers["silences"].

    >>> f = lambda n: Finding(n, "", "", "", "medium")
    >>> [x.name for x in resolve([f("train_longer"), f("overfitting")])]
    ['overfitting']
    """
    found = {f.name for f in findings}
    silenced = {s: name for name in found for s in PRECEDENCE.get(name, ()) if s in found}
    out = []
    for f in findings:
        if f.name in silenced:
            continue
        mine = sorted(s for s, by in silenced.items() if by == f.name)
        out.append(replace(f, numbers={**f.numbers, "silences": mine}) if mine else f)
    return out


def diagnose(curves: Mapping[str, Any], num_classes: int | None = None) -> list[Finding]:
    """The learning-curve doctor: the lecture's rules applied to one run's curves; [] means healthy.

    `curves` maps metric keys to store-style dicts ({"step": [...], "epoch": [...], "value": [...]}) or
    plain sequences: "train/loss" and "lr" per step; "train/acc", "val/acc", "val/loss",
    "train/loss_eval" per epoch (any may be missing: its rules are skipped; a regression task has no accuracy
    curves, so only the loss rules judge it, overfitting by its val/loss). `num_classes` enables the
    initial-loss rule. Noisy per-step losses are judged on a moving average (`loss_trend`).

    Rules (thresholds are the module constants above):
    diverged (NaN/Inf, or > EXPLODE_FACTOR x the initial loss; or smoothed loss ending GROWTH_FACTOR x
    above its start), initial_loss (|L0 - log C| > INIT_LOSS_TOLERANCE log C), slow_start (the steps to
    START_DROP below the start >= SLOW_START_RATIO x the steps from there to NEXT_DROP), lr_too_low (less
    than FLAT_DROP lower at the end), plateau (the smoothed loss improving < PLATEAU_TOL of its drop for
    PLATEAU_MIN_SHARE of the run so far at a constant, undecayed lr), decayed_too_early (an lr drop while
    the loss still fell at STEEP x its average pace, then a descent SLOWER x as fast), overfitting
    (gap >= GAP_ACC, or val loss rising VAL_LOSS_RISE above its smoothed minimum, and by VAL_LOSS_NOISE x
    its epoch-to-epoch noise, while training loss falls), underfitting (gap < NO_GAP_ACC and train acc <
    LOW_ACC, curves flat), train_longer (val and train accuracy still rising over the last epochs).
    Contradictions are resolved by PRECEDENCE (`resolve`).

    >>> [f.name for f in diagnose({"train/loss": [2.3] * 60 + [float("nan")]})]
    ['diverged']
    """
    loss = _series(curves, "train/loss", "step")
    lr = _series(curves, "lr", "step")
    tr_acc = _series(curves, "train/acc", "epoch")
    va_acc = _series(curves, "val/acc", "epoch")
    va_loss = _series(curves, "val/loss", "epoch")
    tr_loss = _series(curves, "train/loss_eval", "epoch")
    findings: list[Finding | None] = []
    if loss is not None:
        init = _rule_initial_loss(loss, num_classes)
        diverged = _rule_diverged(loss, lr, num_classes)
        if diverged is not None:
            return [f for f in (diverged, init) if f is not None]
        train_end = float(tr_acc[1][-1]) if tr_acc is not None else None
        findings += [init, _rule_slow_start(loss, lr), _rule_lr_too_low(loss, lr, train_end, num_classes),
                     _rule_plateau(loss, lr), _rule_decayed_too_early(loss, lr)]
    if (tr_acc is None or va_acc is None) and va_loss is not None:  # no accuracy (regression): the loss rule only
        findings.append(_rule_overfitting(None, None, va_loss, tr_loss))
    if tr_acc is not None and va_acc is not None:
        findings += [_rule_overfitting(tr_acc, va_acc, va_loss, tr_loss), _rule_underfitting(tr_acc, va_acc),
                     _rule_train_longer(tr_acc, va_acc, va_loss)]
    return resolve([f for f in findings if f is not None])
