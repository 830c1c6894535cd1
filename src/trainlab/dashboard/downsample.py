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

from ..curves import moving_average

__all__ = ["MAX_POINTS", "SMOOTH_FRACTION", "json_safe", "plot_series"]

MAX_POINTS = 2000       # buckets per series at most, whatever a client asks for
SMOOTH_FRACTION = 0.05  # the moving average spans this fraction of the series' buckets


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _rounded(digits: int | None):
    if digits is None:
        return _finite
    spec = f".{digits}g"
    return lambda v: float(format(v, spec)) if v is not None and math.isfinite(v) else None


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
    keep = _rounded(digits)
    out: dict[str, Any] = {
        "x": list(buckets["first"]),
        "lo": [keep(v) for v in buckets["min"]],
        "hi": [keep(v) for v in buckets["max"]],
        "mean": [keep(v) for v in buckets["mean"]],
        "n": sum(buckets["count"]),
        "nan": sum(buckets["nan"]),
        "width": buckets["width"],
    }
    if smooth:
        window = max(1, round(SMOOTH_FRACTION * len(out["x"])))
        means = [math.nan if v is None else v for v in buckets["mean"]]
        out["avg"] = [keep(float(v)) for v in moving_average(means, window)] if means else []
    return out


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/Inf float replaced by None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
