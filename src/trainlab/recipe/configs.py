"""The configs the recipe trains: its searches' (a constant rate, steps 4-5) and the final model's (the
chosen point with its placed decay). Config in, config out; nothing trains here."""

from __future__ import annotations

from typing import Any

from trainlab.config import Config, apply_overrides
from trainlab.recipe.plan import FOLDS

__all__ = ["search_base", "final_config"]


def search_base(hp: Config, **changes: Any) -> Config:
    """The config the recipe's searches train (steps 4 and 5): a constant rate, no warmup, no early stop,
    no averaging, one seed, epochs rather than steps; `changes` on top."""
    return apply_overrides(hp, {"schedule": "constant", "warmup_steps": 0, "warmup_epochs": 0.0,
                                "patience": None, "ema": None, "snapshots": False, "seeds": 1,
                                "steps": None, **changes})


def final_config(hp: Config, point: dict, epochs: int, patience: int, split_seed: int = FOLDS[0],
                 metric: tuple[str, str] = ("val/acc", "max"), decay: dict | None = None) -> Config:
    """The final model's config: the chosen point with its decay (`decay`: a `final_plan.shaped` schedule; a
    cosine when None) and early stopping on validation (`metric`: the (name, mode) the recipe judges by:
    val/acc, or the task's own, e.g. val/loss, min)."""
    schedule = {"schedule": "cosine"}
    if decay and decay.get("schedule") == "multistep":
        schedule = {"schedule": "multistep", "milestones_epochs": decay["milestones_epochs"], "gamma": decay["gamma"]}
    return apply_overrides(hp, {"lr": point["lr"], "weight_decay": point["weight_decay"],
                                "width": point.get("width"), "dropout": point.get("dropout") or 0.0,
                                **schedule, "epochs": epochs, "patience": patience,
                                "early_stop_metric": metric[0], "early_stop_mode": metric[1], "steps": None,
                                "split_seed": split_seed, "seeds": 1})
