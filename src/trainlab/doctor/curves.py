"""Learning curves as plain arrays: smoothing, trends and JSON-safe numbers. No torch: every
function takes lists or numpy arrays.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from trainlab.doctor.jsonsafe import json_safe  # noqa: F401  (kept importable from here)

__all__ = ["moving_average", "ema_smooth", "smoothing_window", "json_safe", "slope_rise", "loss_trend"]

def moving_average(values, window: int) -> np.ndarray:
    """Trailing moving average; the first points average what exists so far (no lag-free cheating).

    NaN/Inf values are skipped in each window, so one bad step does not blank the curve.

    >>> moving_average([1, 2, 3, 4], 2).tolist()
    [1.0, 1.5, 2.5, 3.5]
    """
    v = np.asarray(values, dtype=float)
    if window < 1:
        raise ValueError(f"window must be at least 1, but got window={window}.")
    ok = np.isfinite(v)
    sums = np.cumsum(np.where(ok, v, 0.0))
    counts = np.cumsum(ok)
    sums = np.concatenate([[0.0], sums])
    counts = np.concatenate([[0], counts])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    n = counts[idx] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[idx] - sums[lo]) / np.maximum(n, 1), np.nan)


def ema_smooth(values, beta: float = 0.98) -> np.ndarray:
    """Exponential moving average with bias correction (as in Adam), skipping NaN/Inf."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), but got beta={beta}.")
    out = np.empty(len(values))
    avg, weight = 0.0, 0.0
    for i, x in enumerate(np.asarray(values, dtype=float)):
        if np.isfinite(x):
            avg = beta * avg + (1 - beta) * x
            weight = beta * weight + (1 - beta)
        out[i] = avg / weight if weight > 0 else np.nan
    return out


def smoothing_window(n_points: int) -> int:
    """Moving-average window for a per-step loss curve: about 2% of the run, between 5 and 200 steps."""
    return int(min(200, max(5, n_points // 50)))


def slope_rise(values: np.ndarray) -> float:
    """Least-squares rise over the points given (slope x (n - 1)): a trend robust to one noisy epoch."""
    n = len(values)
    if n < 2:
        return 0.0
    t = np.arange(n, dtype=float)
    return float(np.polyfit(t, values, 1)[0] * (n - 1))


def loss_trend(losses: Sequence[float]) -> dict[str, float]:
    """Start, end and minimum of a noisy per-step loss, judged on its moving average.

    start: mean of the first window; end: mean of the last window; min: minimum of the moving average
    after the first window; window: the moving-average window (`smoothing_window`). NaN/Inf are skipped.

    >>> t = loss_trend([2.3] * 50 + [1.0] * 50)
    >>> round(t["start"], 2), round(t["end"], 2)
    (2.3, 1.0)
    """
    v = np.asarray(losses, dtype=float)
    w = smoothing_window(len(v))
    smooth = moving_average(v, w)
    head, tail = v[:w][np.isfinite(v[:w])], v[-w:][np.isfinite(v[-w:])]
    after = smooth[w:] if len(smooth) > w else smooth
    return {"start": float(head.mean()) if head.size else math.nan,
            "end": float(tail.mean()) if tail.size else math.nan,
            "min": float(np.nanmin(after)) if np.isfinite(after).any() else math.nan,
            "window": w}
