"""What an initial loss should be: log C for a C-class cross-entropy, mean(target^2) for a squared error with
outputs near 0. Used by `trainlab check init` and the doctor's initial-loss rule. Pure arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["INIT_LOSS_TOLERANCE", "init_loss_verdict", "init_regression_verdict"]

INIT_LOSS_TOLERANCE = 0.25   # initial loss within 25% of log C passes (healthy inits measured: within 5%)


def init_loss_verdict(loss: float, num_classes: int, tolerance: float = INIT_LOSS_TOLERANCE) -> dict[str, Any]:
    """Judge an initial cross-entropy loss against log(C): uniform predictions over C classes give log C.

    Returns {"ok", "expected", "deviation" (relative), "tolerance", "message"}. Too high means confident,
    wrong predictions at initialization (the output layer's scale is too large), too low means the
    labels do not match the number of classes (or the loss is not a cross-entropy over C classes).

    >>> init_loss_verdict(2.31, 10)["ok"], init_loss_verdict(9.8, 10)["ok"]
    (True, False)
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, but got num_classes={num_classes!r}.")
    expected = math.log(num_classes)
    if not math.isfinite(loss):
        return {"ok": False, "expected": expected, "deviation": math.inf, "tolerance": tolerance,
                "message": f"initial loss is {loss}: the model's output is not finite at initialization"}
    dev = (loss - expected) / expected
    ok = abs(dev) <= tolerance
    head = (f"initial loss {loss:.3g}, expected about {expected:.3g} = log({num_classes}) "
            f"(tolerance {tolerance:.0%})")
    if ok:
        why = "initialization and labels look right"
    elif dev > 0:
        why = ("the output layer's scale is too large (confident, wrong predictions at initialization), "
               "or labels do not match the number of classes")
    else:
        why = ("lower than chance: labels do not match the number of classes, the loss is not a "
               "cross-entropy over them, or the model was not freshly initialized")
    return {"ok": ok, "expected": expected, "deviation": dev, "tolerance": tolerance, "message": f"{head}: {why}"}


def init_regression_verdict(loss: float, target_mean_square: float, target_variance: float,
                            tolerance: float = INIT_LOSS_TOLERANCE) -> dict[str, Any]:
    """Judge an initial squared-error loss of a regression: outputs near 0 at initialization give mean(y^2),
    the target variance plus the square of its mean (the variance alone is the loss of predicting the mean).

    Passes when the loss is at most (1 + tolerance) x mean(y^2): above it, the outputs start too large. A mean
    far from 0 (mean^2 above the variance) is said too: standardized targets train faster.

    >>> init_regression_verdict(1.05, 1.0, 1.0)["ok"], init_regression_verdict(30.0, 1.0, 1.0)["ok"]
    (True, False)
    """
    expected = max(target_mean_square, 1e-12)
    if not math.isfinite(loss):
        return {"ok": False, "expected": expected, "deviation": math.inf, "tolerance": tolerance,
                "message": f"initial loss is {loss}: the model's output is not finite at initialization"}
    dev = (loss - expected) / expected
    ok = dev <= tolerance
    head = (f"initial loss {loss:.3g} (regression), expected about {expected:.3g} = mean(target^2) for outputs near 0 "
            f"(the target variance is {target_variance:.3g}, the loss of predicting the mean; tolerance {tolerance:.0%})")
    why = "initialization looks right" if ok else "the outputs start too large (scale down the last layer's initialization)"
    if target_mean_square - target_variance > target_variance:
        why += (f"; the targets' mean ({math.sqrt(max(target_mean_square - target_variance, 0.0)):.3g}) is far from 0: "
                "standardize them (subtract the mean, divide by the std)")
    return {"ok": ok, "expected": expected, "deviation": dev, "tolerance": tolerance, "message": f"{head}: {why}"}
