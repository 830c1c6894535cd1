"""What a task is judged by: its kind (classification or regression) and its metrics.

A metric is a mean over examples of `fn(outputs, targets)`, so it can be measured batch by batch (each batch's
mean weighted by its examples) and gives the same number as on the whole split at once. Built-ins:

| name        | kind           | what                                                   | better |
|-------------|----------------|--------------------------------------------------------|--------|
| `acc`       | classification | share of examples whose largest output is the target   | max    |
| `top5`      | classification | share whose target is among the 5 largest outputs (`topK` for any K) | max |
| `mse`       | regression     | mean squared error (mean over each example's outputs)  | min    |
| `mae`       | regression     | mean absolute error                                    | min    |

A user metric is `Metric(name, fn, mode)` or a plain function `fn(outputs, targets) -> batch mean`, named by its
`__name__` and maximized unless that name says it is an error or a loss (`loss`, `err`, `mse`, `mae`, `rmse`).

    metrics = resolve_metrics("regression", None)       # (mse, mae)
    scores(outputs, targets, loss_fn, metrics)            # {"loss": ..., "mse": ..., "mae": ...}

Each epoch stores `val/<name>` and `train/<name>` for every metric, and the test result `test/<name>`. Early
stopping follows the task: `val/acc` (max) for classification, `val/loss` (min) for regression
(`for_task(hp, task_metrics)` resolves it once and says why).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from trainlab.config import Config, ConfigError

__all__ = ["Metric", "KINDS", "TaskMetrics", "resolve_metrics", "scores", "accuracy", "top_k", "mse", "mae",
           "regression_loss", "for_task"]

KINDS = ("classification", "regression")
_MIN_WORDS = ("loss", "err", "mse", "mae", "rmse", "nll", "perplexity")


@dataclass(frozen=True)
class Metric:
    """`fn(outputs, targets) -> the mean over the batch` (a 0-d tensor or a float); `mode` "max" or "min"."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], Any]
    mode: str = "max"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.name or ""):
            raise ConfigError(f"metrics: a metric name is letters, digits and _, got {self.name!r}")
        if self.name == "loss":
            raise ConfigError("metrics: 'loss' is measured always (the task's loss); name the metric otherwise, got 'loss'")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"metrics: mode of {self.name!r} must be 'max' or 'min', got {self.mode!r}")


def _aligned(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression outputs of shape (N, 1) against targets (N,) (or the reverse): compared element by element,
    never broadcast to (N, N), which is what `F.mse_loss` would silently do."""
    if outputs.shape != targets.shape and outputs.numel() == targets.numel():
        outputs = outputs.reshape(targets.shape)
    return outputs.float(), targets.float()


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of examples whose largest output is the target."""
    return (outputs.argmax(1) == targets).float().mean()


def top_k(k: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Share of examples whose target is among the `k` largest outputs (k at most the number of classes)."""
    def fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        top = outputs.topk(min(k, outputs.shape[1]), dim=1).indices
        return (top == targets.unsqueeze(1)).any(1).float().mean()
    fn.__name__ = f"top{k}"
    return fn


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every output of every example."""
    o, t = _aligned(outputs, targets)
    return (o - t).pow(2).mean()


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every output of every example."""
    o, t = _aligned(outputs, targets)
    return (o - t).abs().mean()


def regression_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default loss of a regression task: mean squared error, outputs (N, 1) against targets (N,) aligned."""
    o, t = _aligned(outputs, targets)
    return F.mse_loss(o, t)


_BUILTIN = {"acc": ("acc", accuracy, "max"), "accuracy": ("acc", accuracy, "max"),
            "mse": ("mse", mse, "min"), "mae": ("mae", mae, "min")}
DEFAULTS = {"classification": ("acc",), "regression": ("mse", "mae")}


def _metric(item: str | Metric | Callable) -> Metric:
    if isinstance(item, Metric):
        return item
    if isinstance(item, str):
        key = item.strip().lower()
        if key in _BUILTIN:
            return Metric(*_BUILTIN[key])
        m = re.fullmatch(r"top_?(\d+)", key)
        if m and int(m.group(1)) >= 1:
            return Metric(f"top{int(m.group(1))}", top_k(int(m.group(1))), "max")
        raise ConfigError(f"metrics: unknown metric {item!r}; use acc, topK (e.g. top5), mse, mae, a Metric or a function")
    if callable(item):
        name = getattr(item, "__name__", "")
        if not name or name == "<lambda>":
            raise ConfigError(f"metrics: a metric function needs a name; wrap it as Metric('name', fn, 'max'), got {item!r}")
        return Metric(name, item, "min" if any(w in name.lower() for w in _MIN_WORDS) else "max")
    raise ConfigError(f"metrics: expected a name, a Metric or a function, got {type(item).__name__}")


def resolve_metrics(kind: str, spec: Sequence[str | Metric | Callable] | None) -> tuple[Metric, ...]:
    """The metrics of a task of `kind` ("classification" or "regression"): `spec` (names, Metrics or
    functions), or the kind's defaults (acc; mse and mae). The first one is the task's headline metric."""
    if kind not in KINDS:
        raise ConfigError(f"task: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    items = DEFAULTS[kind] if spec is None else ([spec] if isinstance(spec, (str, Metric)) or callable(spec) else spec)
    for item in items:   # a built-in classification metric of a regression's outputs would be a silent 0
        key = item.strip().lower() if isinstance(item, str) else None
        if kind == "regression" and key is not None and (key in ("acc", "accuracy") or re.fullmatch(r"top_?\d+", key)):
            raise ConfigError(f"metrics: {item!r} measures a classifier (predicted classes); a regression task "
                              f"measures mse, mae or a metric function, got {item!r}")
    metrics = tuple(_metric(i) for i in items)
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise ConfigError(f"metrics: each metric needs its own name, got {names}")
    return metrics


@dataclass(frozen=True)
class TaskMetrics:
    """A task's kind and metrics, and what early stopping uses by default. `summary()` is what a run stores
    (under "metrics"), so the store, the doctor and the dashboard know the task without importing torch."""

    kind: str
    metrics: tuple[Metric, ...]

    @property
    def headline(self) -> Metric | None:
        return self.metrics[0] if self.metrics else None

    @property
    def early_stop(self) -> tuple[str, str]:
        """(metric, mode) early stopping uses unless told: val/acc for classification (the headline metric when
        acc is not measured), val/loss for regression."""
        if self.kind == "regression":
            return "val/loss", "min"
        names = {m.name: m for m in self.metrics}
        if "acc" in names:
            return "val/acc", "max"
        if self.headline is not None:
            return f"val/{self.headline.name}", self.headline.mode
        return "val/loss", "min"

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "names": [m.name for m in self.metrics],
                "modes": {m.name: m.mode for m in self.metrics},
                "headline": self.headline.name if self.headline else "loss"}


def scores(outputs: torch.Tensor, targets: torch.Tensor, loss_fn: Callable, metrics: Iterable[Metric]) -> dict[str, float]:
    """{"loss": ..., name: ...}: the loss and each metric's mean over the examples of `outputs`/`targets`
    (one synchronization for all of them)."""
    vals = [loss_fn(outputs, targets)] + [m.fn(outputs, targets) for m in metrics]
    names = ["loss"] + [m.name for m in metrics]
    t = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=outputs.device).reshape(()) for v in vals])
    return dict(zip(names, t.tolist()))


def for_task(hp: Config, tm: TaskMetrics) -> tuple[Config, str | None]:
    """`hp` with early stopping on a metric the task measures: `val/acc` (the default), when the task does not
    measure accuracy, becomes the task's own (`val/loss`, min, for regression; the headline metric with its mode
    otherwise), and the reason is returned to be printed; any other metric is kept as given."""
    ema = hp.early_stop_metric == "val/acc_ema"   # the EMA's accuracy: the task's metric of the averaged weights
    if hp.early_stop_metric not in ("val/acc", "val/acc_ema") or tm.early_stop[0] == "val/acc":
        return hp, None
    metric, mode = tm.early_stop
    metric += "_ema" if ema else ""
    why = (f"early stopping and the best checkpoint on {metric} ({mode}): a {tm.kind} task"
           + ("" if tm.kind == "regression" else " that does not measure acc"))
    # the mode went with val/acc (max); the task's metric brings its own
    return hp.model_copy(update={"early_stop_metric": metric, "early_stop_mode": mode}), why
