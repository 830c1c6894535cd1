"""`Finding`, the one diagnosis every rule of the learning-curve doctor returns, and what the curve rules
(`rules`) and the schedule rules (`schedule_rules`) share; a module of its own so neither imports the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from trainlab.doctor.jsonsafe import json_safe

__all__ = ["Finding", "MIN_STEPS", "LOW_ACC"]

# Thresholds both rule modules use.
MIN_STEPS = 50               # per-step rules need at least this many steps
LOW_ACC = 0.90               # underfitting: train accuracy below 90% (and no gap); lr_too_low: at or above it
                             #     the run already fits its training data


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


def _g(x: float) -> str:
    return f"{x:.3g}"
