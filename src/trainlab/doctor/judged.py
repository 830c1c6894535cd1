"""What a stored run is judged by, read back from what `fit()` stored with it (no torch, no task to load):
the task's kind and headline metric (the summary's "metrics": acc for a classifier, mse for a regression, a
user metric's name) and the metric its early stopping and best checkpoint used (the resolved
`early_stop_metric` in its hyperparameters: val/acc, or val/loss (min) for a regression).

Figures, the recipe's report and the command line read curves and label axes through it, so a regression
run shows val/mse on its own scale instead of an empty accuracy panel.

    >>> m = run_metric({"hparams": {"early_stop_metric": "val/loss", "early_stop_mode": "min"},
    ...                 "summary": {"metrics": {"kind": "regression", "names": ["mse", "mae"],
    ...                                         "modes": {"mse": "min", "mae": "min"}, "headline": "mse"}}})
    >>> m.metric, m.mode, m.curves, m.is_accuracy
    ('val/loss', 'min', ('train/mse', 'val/mse'), False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["RunMetric", "run_metric", "metric_mode", "CLASSIFIER"]

_MIN_WORDS = ("loss", "err", "mse", "mae", "nll", "perplexity")


def metric_mode(key: str) -> str:
    """The direction a metric's name implies: "min" for losses and errors (val/loss, val/mse, test/mae), else
    "max" (val/acc, val/top5, a user metric named for what it rewards)."""
    name = key.rsplit("/", 1)[-1].lower()
    return "min" if any(w in name for w in _MIN_WORDS) else "max"


@dataclass(frozen=True)
class RunMetric:
    """A run's task metrics as stored: `kind`, `headline` (its first metric's name, "loss" when it measures
    none), `modes` (name -> "max"/"min"), and `metric`/`mode`: what early stopping and the best checkpoint used."""

    kind: str = "classification"
    headline: str = "acc"
    modes: Mapping[str, str] = field(default_factory=lambda: {"acc": "max"})
    metric: str = "val/acc"
    mode: str = "max"

    @property
    def headline_mode(self) -> str:
        return self.modes.get(self.headline) or metric_mode(self.headline)

    @property
    def curves(self) -> tuple[str, str]:
        """The per-epoch curves of the headline metric: ("train/<headline>", "val/<headline>")."""
        return f"train/{self.headline}", f"val/{self.headline}"

    @property
    def is_accuracy(self) -> bool:
        """A share of examples in [0, 1] (acc, topK): drawn on an accuracy axis, shown as a percentage."""
        h = self.headline
        return h == "acc" or (h.startswith("top") and h[3:].isdigit())

    @property
    def label(self) -> str:
        """The headline metric as an axis label: "accuracy", or its name (mse, within_0_1)."""
        return "accuracy" if self.headline == "acc" else self.headline


CLASSIFIER = RunMetric()   # a run from before fit() stored its task's metrics: a classifier judged by val/acc


def run_metric(run: Mapping[str, Any] | None) -> RunMetric:
    """The `RunMetric` of a stored run (a `Store.run` dict); `CLASSIFIER` for a run that stored none."""
    run = run or {}
    stored = ((run.get("summary") or {}).get("metrics")) or {}
    hp = run.get("hparams") or {}
    names = list(stored.get("names") or [])
    kind = stored.get("kind") or "classification"
    headline = stored.get("headline") or (names[0] if names else "acc")
    modes = dict(stored.get("modes") or {}) or {headline: metric_mode(headline)}
    metric = hp.get("early_stop_metric") or "val/acc"
    mode = hp.get("early_stop_mode")
    if mode not in ("max", "min"):
        name = metric.split("/", 1)[-1]
        mode = modes.get(name) or metric_mode(metric)
    return RunMetric(kind, headline, modes, metric, mode)
