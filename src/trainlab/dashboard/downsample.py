"""Metric series short enough to draw, spikes kept: min/max per bucket of steps, plus a moving average.

The buckets themselves are computed in the database by `Store.metric_buckets` (each run's steps cut
into at most N equal ranges; every range gives its min, max and mean), so a 5,000-step run travels
as at most N rows per key, not 5,000. Drawing a bucket's min and max as two points is the
"min/max decimation" of plotting libraries: the envelope of the raw series survives exactly, so a
one-step loss spike is as tall on the plot as it was in training, where averaging or striding would
hide it. This module turns buckets into the arrays the page plots, all JSON-safe (NaN and Inf
become null).
"""

from __future__ import annotations

import math
from typing import Any

from trainlab.doctor.jsonsafe import json_safe

__all__ = ["MAX_POINTS", "SMOOTH_FRACTION", "json_safe", "plot_series"]

MAX_POINTS = 2000       # buckets per series at most, whatever a client asks for
SMOOTH_FRACTION = 0.05  # the moving average spans this fraction of the series' buckets


def _plain(values, digits: int | None) -> list[float | None]:
    """Floats for JSON: non-finite (and None) as None, rounded to ``digits`` significant digits, in numpy."""
    import numpy as np  # on the first chart, not at the dashboard's start

    a = np.array([math.nan if v is None else v for v in values], dtype=float)
    ok = np.isfinite(a)
    if digits is not None and ok.any():
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            exp = digits - 1 - np.floor(np.log10(np.abs(np.where(ok & (a != 0), a, 1.0))))
            up = 10.0 ** np.maximum(exp, 0)     # x * 10^e, rounded, / 10^e: exact powers either way,
            down = 10.0 ** np.maximum(-exp, 0)  # so 0.123456 prints as 0.12346, 123456 as 123460
            rounded = np.round(a * up / down) * down / up
        a = np.where(ok & np.isfinite(rounded), rounded, a)
    return [v if good else None for v, good in zip(a.tolist(), ok.tolist())]


def plot_series(buckets: dict[str, Any], *, smooth: bool = False, digits: int | None = None) -> dict[str, Any]:
    """Plot arrays from one `Store.metric_buckets` series.

    Returns {"x": first step of each bucket, "lo": min, "hi": max, "mean": mean, "n": rows,
    "nan": NaN rows, "width": steps per bucket}; with ``smooth``, also "avg": a trailing moving
    average of the bucket means over SMOOTH_FRACTION of the buckets (at least 1), which skips
    NaN buckets. Non-finite values are None; with ``digits``, values keep that many significant
    digits (JSON for a small chart need not carry 17). When every bucket holds one row, lo == hi ==
    mean is the raw series.

    >>> plot_series({"width": 1, "first": [0, 1], "last": [0, 1], "min": [2.0, None], "max": [2.0, None],
    ...              "mean": [2.0, None], "count": [1, 1], "nan": [0, 1]})["hi"]
    [2.0, None]
    """
    out: dict[str, Any] = {
        "x": list(buckets["first"]),
        "lo": _plain(buckets["min"], digits),
        "hi": _plain(buckets["max"], digits),
        "mean": _plain(buckets["mean"], digits),
        "n": sum(buckets["count"]),
        "nan": sum(buckets["nan"]),
        "width": buckets["width"],
    }
    if smooth:
        window = max(1, round(SMOOTH_FRACTION * len(out["x"])))
        means = [math.nan if v is None else v for v in buckets["mean"]]
        from trainlab.doctor.curves import moving_average

        out["avg"] = _plain(moving_average(means, window), digits) if means else []
    return out
