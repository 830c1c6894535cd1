"""The update/weight-ratio rule: a layer whose median update/weight ratio lies outside [1e-4, 1e-2] learns too
little or too much for its weights. Pure arithmetic on the measured (or stored "ratio/<name>") values; the
measuring is `trainlab.monitor`'s.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

__all__ = ["RATIO_BAND", "RatioWarning", "ratio_warnings"]

RATIO_BAND = (1e-4, 1e-2)  # healthy median update/weight ratio (about 1e-3)


@dataclass(frozen=True)
class RatioWarning:
    """A layer whose median update/weight ratio sits outside the band: which side, and the one-line message."""

    name: str
    median: float
    side: str      # "low" or "high"
    points: int    # measurements the median is over
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def ratio_warnings(ratios: Mapping[str, Sequence[float]], band: tuple[float, float] = RATIO_BAND,
                   min_points: int = 3) -> list[RatioWarning]:
    """Warnings for the tensors whose median update/weight ratio lies outside `band` (default [1e-4, 1e-2]).

    `ratios` maps a parameter name to its measured ratios (e.g. the stored "ratio/<name>" values); the
    median over the run is judged, so a few spiky steps do not trigger a warning. NaN/Inf are ignored;
    a tensor with fewer than `min_points` finite measurements is not judged. Pure: no torch needed.

    >>> [w.side for w in ratio_warnings({"fc.weight": [3e-2, 4e-2, 5e-2], "out.weight": [1e-3] * 3})]
    ['high']
    """
    low, high = band
    if not 0 < low < high:
        raise ValueError(f"band must be (low, high) with 0 < low < high, but got band={band!r}.")
    out = []
    for name, values in ratios.items():
        finite = [float(v) for v in values if math.isfinite(v)]
        if len(finite) < min_points:
            continue
        med = statistics.median(finite)
        if med < low:
            side = "low"
            why = (f"below {low:g}: the layer barely learns (learning rate too low for it, "
                   "or its gradient vanishes)" if med > 0 else "zero: the layer does not change at all "
                   "(no gradient reaches it, or the optimizer does not hold it)")
        elif med > high:
            side, why = "high", f"above {high:g}: its updates are too large for its weights (learning rate too high for it)"
        else:
            continue
        out.append(RatioWarning(name, med, side, len(finite),
                                f"update/weight ratio of {name}: median {med:.2g} over {len(finite)} measurements, "
                                f"{why}; want about 1e-3"))
    return out
