"""What the recipe returns and records: each step's `StepResult`, the whole `RecipeResult`, and the two
ways a recipe ends early (`Interrupted`: Ctrl-C; `StopRecipe`: a step's outcome leaves nothing to do)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["StepResult", "RecipeResult", "Interrupted", "StopRecipe"]


@dataclass
class StepResult:
    """One step's outcome: a verdict word, a one-line message, and the evidence behind them."""

    key: str                       # "init", "overfit", "lr", "coarse", "refine-1", "doctor-1", "loop-1", "final"
    number: int                    # 1-7; 8 is the final model
    title: str
    verdict: str                   # pass/fail (checks), done, healthy/findings (doctor), continue/stop (loop)
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    run_id: int | None = None
    status: str = "completed"      # the step run's status: completed, stopped (interrupted), failed
    skipped: bool = False          # read back from the store (a resumed recipe)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Interrupted(Exception):
    """Raised inside the recipe when Ctrl-C arrived (fit() swallows KeyboardInterrupt and returns)."""


class StopRecipe(Exception):
    """A step's outcome ends the recipe (the final model has no member to evaluate)."""


@dataclass
class RecipeResult:
    """The recipe's outcome: its study, status and reason, every step (this run's and those read back),
    the final model's evidence, the report's path, the seconds this run took, the budget and its plan."""

    study: str
    status: str                    # completed, stopped (a check failed), interrupted
    reason: str | None
    steps: list[StepResult]
    final: dict[str, Any] | None
    report: str | None
    seconds: float
    budget_s: float
    plan: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": [s.to_dict() for s in self.steps]}
