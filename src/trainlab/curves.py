"""Learning curves as plain arrays: smoothing, and (later) the diagnosis rules. No torch here."""

from __future__ import annotations

import numpy as np

__all__ = ["moving_average", "ema_smooth"]


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
