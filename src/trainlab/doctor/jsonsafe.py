"""Values made strict-JSON safe (no NaN or Inf), without importing numpy: the dashboard answers its first
requests before anything has needed numpy."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["json_safe"]


def json_safe(value: Any) -> Any:
    """`value` with every NaN/Inf float (numpy's scalars too) turned into None, through dicts, lists and tuples:
    strict JSON, and PostgreSQL's JSON type, have no NaN.

    >>> json_safe({"a": [1.0, float("nan")], "b": (2, float("inf"))})
    {'a': [1.0, None], 'b': [2, None]}
    """
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy scalar as the Python number it holds
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
