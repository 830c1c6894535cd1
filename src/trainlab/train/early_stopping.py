"""Early stopping: a rule that reads validation values and returns a decision; only the loop acts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["EarlyStopping", "Decision"]


@dataclass(frozen=True)
class Decision:
    improved: bool
    stop: bool
    reason: str | None = None


class EarlyStopping:
    """Stop after `patience` validation checks without an improvement of more than `min_delta`.

    Patience counts validation checks (one per epoch), not steps. `patience=None` never stops but
    still tracks the best value, so the best checkpoint works without early stopping.

    >>> es = EarlyStopping("val/acc", "max", patience=2)
    >>> [es.update(v).stop for v in (0.5, 0.6, 0.6, 0.59)]
    [False, False, False, True]
    """

    def __init__(self, metric: str, mode: str, patience: int | None = None, min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', but got mode={mode!r}.")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be at least 1 (or None), but got patience={patience}.")
        if min_delta < 0:
            raise ValueError(f"min_delta must be non-negative, but got min_delta={min_delta}.")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_checks = 0

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float, epoch: int | None = None) -> Decision:
        if not math.isnan(value) and self._better(value):
            self.best, self.best_epoch, self.bad_checks = value, epoch, 0
            return Decision(improved=True, stop=False)
        self.bad_checks += 1
        if self.patience is not None and self.bad_checks >= self.patience:
            return Decision(False, True, f"stopped early: {self.metric} did not improve for {self.bad_checks} "
                                         f"validations (best {self.best:.4g} at epoch {self.best_epoch})")
        return Decision(improved=False, stop=False)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_checks": self.bad_checks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_checks = state["best"], state["best_epoch"], state["bad_checks"]
