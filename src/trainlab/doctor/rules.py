"""The learning-curve doctor's curve rules: each a pure function of curves (lists or numpy arrays) that returns a
`Finding` or nothing, and the precedence that settles findings that contradict each other. No torch here.
The schedule-aware rules live in `schedule_rules`, the initial-loss verdicts in `init_loss`, the
update/weight-ratio rule in `ratio`; `diagnose` applies them all.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np

from trainlab.doctor.curves import loss_trend, slope_rise
from trainlab.doctor.finding import LOW_ACC, MIN_STEPS, Finding, _g
from trainlab.doctor.init_loss import INIT_LOSS_TOLERANCE, init_loss_verdict
from trainlab.doctor.schedule_rules import _rule_decayed_too_early, _rule_lr_too_low, _rule_plateau, _rule_slow_start

__all__ = ["diagnose", "resolve", "PRECEDENCE"]

# --- the learning-curve doctor ---------------------------------------------------------------------
# Thresholds. Each was checked on real runs built to show one fault (tests/doctor/test_rules.py) and on
# healthy runs (mnist1d resnet, digits mlp), where none of them fires.
EXPLODE_FACTOR = 10.0        # a loss above 10x max(initial loss, log C) has exploded (the loop stops there too)
GROWTH_FACTOR = 1.5          # the smoothed loss ends 1.5x above where it began: a slow divergence
RISE_ACC = 0.01              # still rising: val acc up >= 1 point (train acc >= 0.5 point) over the last epochs
GAP_ACC = 0.10               # overfitting: train acc - val acc >= 10 points ...
VAL_LOSS_RISE = 0.10         # ... or val loss (last 3 epochs) >= 10% above its smoothed minimum, >= 2 epochs
VAL_LOSS_NOISE = 3.0         #     later, by >= 3x its epoch-to-epoch noise, while train loss fell (on the default
                             #     mnist1d resnet run the val loss wanders 0.04-0.057 late: noise, not a rise)
NO_GAP_ACC = 0.05            # underfitting: gap below 5 points (and train accuracy below LOW_ACC)
# The schedule rules' thresholds are in `schedule_rules`; MIN_STEPS and LOW_ACC, which both use, in `finding`.


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

    Rules (thresholds are module constants: here, in `schedule_rules` and in `finding`):
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
