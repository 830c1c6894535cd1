"""Transfer learning: a pretrained backbone, a new head, and five ways to train it on a target task.

The backbone (its stages, head, weights, freezing and stage features) is `backbone.py`; the source and
the target model built from it are `source.py`; this module trains the strategies through the one loop
`fit()`, and compares them:

- `linear`: the backbone frozen; the head's input features are computed once (cached) and a linear
  classifier is trained on them; the result is the backbone with that classifier as its head.
- `probe`: a linear classifier on each stage's pooled features, one row per stage (the lecture's "try a
  linear classifier from different stages"); the stage with the best validation accuracy is the result.
- `finetune:K`: the last K stages and the head trainable, the stages at `backbone_lr_mult` x lr; frozen
  stages get no gradients and stay in eval mode (BatchNorm keeps and uses its running statistics);
  with `unfreeze_every_epochs` the K stages are unfrozen one at a time, top down (Howard & Ruder 2018).
- `full`: everything trainable with discriminative learning rates: `backbone_lr_mult` x lr at the first
  stage, rising geometrically to lr at the head.
- `scratch`: the same architecture from random initialization; the baseline the others must beat.

References: Yosinski et al. 2014 (how transferable are features, by layer); Howard &
Ruder 2018 (discriminative learning rates, gradual unfreezing); Kornblith et al. 2019 (linear evaluation).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainlab.checkpoint import load_checkpoint, save_checkpoint
from trainlab.config import DEFAULT_RUNS_DIR, Config, ConfigError
from trainlab.metrics import for_task
from trainlab.optim import build_optimizer
from trainlab.store import Store
from trainlab.tasks import Task
from trainlab.train.evaluate import dataset_tensors
from trainlab.train.loop import FitResult, fit
from trainlab.transfer.backbone import (
    MAX_PROBE_FEATURES,
    FrozenStages,
    backbone_stages,
    capture,
    head_linear,
    head_name,
    pool_features,
    stage_features,
)
from trainlab.transfer.source import Source, output_size, prepare_target, study_name, target_hparams, target_model

__all__ = ["STRATEGIES", "StrategyResult", "Plan", "GradualUnfreeze", "FeatureCache", "parse_strategy",
           "default_strategies", "plan_strategy", "train_strategy", "compare", "judged_by"]

STRATEGIES = ("linear", "probe", "finetune:K", "full", "scratch")
_STRATEGY = re.compile(r"^(linear|probe|full|scratch|finetune:(\d+))$")


# --- strategies by name -----------------------------------------------------------------------------

def parse_strategy(strategy: str, n_stages: int | None = None) -> tuple[str, int | None]:
    """'finetune:2' -> ('finetune', 2); 'linear' -> ('linear', None). K must be 1..n_stages when known.

    >>> parse_strategy("finetune:2")
    ('finetune', 2)
    """
    m = _STRATEGY.match(strategy.strip()) if isinstance(strategy, str) else None
    if m is None:
        raise ConfigError(f"strategy: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if m.group(2) is None:
        return m.group(1), None
    k = int(m.group(2))
    if k < 1 or (n_stages is not None and k > n_stages):
        most = f"{n_stages}" if n_stages is not None else "the number of stages"
        raise ConfigError(f"strategy: finetune:K needs 1 <= K <= {most} (this backbone's stages), got {strategy!r}")
    return "finetune", k


def default_strategies(model: nn.Module) -> list[str]:
    """Every strategy once: linear, probe, finetune of the last stage and of the top half, full, scratch."""
    n = len(backbone_stages(model))
    ks = sorted({1, max(1, n // 2)} - {n})
    return ["linear", "probe", *[f"finetune:{k}" for k in ks], "full", "scratch"]


# --- gradual unfreezing ---------------------------------------------------------------------------------

class GradualUnfreeze:
    """A callback: unfreeze `stages` one at a time (in the order given, top first) every `every_epochs`
    epochs (Howard & Ruder 2018). Records `transfer/unfrozen` (stages unfrozen so far) each epoch."""

    def __init__(self, model: FrozenStages, stages: Sequence[str], every_epochs: int):
        if every_epochs < 1:
            raise ValueError(f"every_epochs must be at least 1, but got every_epochs={every_epochs}.")
        self.model, self.stages, self.every = model, list(stages), every_epochs
        self.unfrozen = 0

    def on_step_end(self, state) -> None:
        return None

    def on_epoch_end(self, state) -> None:
        state.metrics["transfer/unfrozen"] = float(self.unfrozen)
        while self.unfrozen < len(self.stages) and state.epoch + 1 >= (self.unfrozen + 1) * self.every:
            self.model.unfreeze(self.stages[self.unfrozen])
            self.unfrozen += 1

    def on_fit_end(self, state) -> None:
        return None

    def state_dict(self) -> dict[str, int]:
        return {"unfrozen": self.unfrozen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        while self.unfrozen < state["unfrozen"]:
            self.model.unfreeze(self.stages[self.unfrozen])
            self.unfrozen += 1


# --- features -----------------------------------------------------------------------------------------

class FeatureCache:
    """A backbone's features on a task's train/val/test splits, computed once (eval mode) and shared by
    the linear strategy, the probes and the advisor."""

    SPLITS = ("train", "val", "test")

    def __init__(self, model: nn.Module, task: Task, max_features: int = MAX_PROBE_FEATURES):
        self.model, self.task, self.max_features = model, task, max_features
        self.data = {s: dataset_tensors(getattr(task, s)) for s in self.SPLITS}
        self._head: dict[str, torch.Tensor] | None = None
        self._stages: dict[str, dict[str, torch.Tensor]] | None = None

    def labels(self, split: str) -> torch.Tensor:
        return self.data[split][1]

    def head_inputs(self) -> dict[str, torch.Tensor]:
        """{split: (N, D)}: what the head's classifier sees."""
        if self._head is None:
            point = {"head": (self.model.get_submodule(head_linear(self.model)), "in")}
            self._head = {s: capture(self.model, self.data[s][0], point, lambda t: t.flatten(1))["head"]
                          for s in self.SPLITS}
        return self._head

    def stages(self) -> dict[str, dict[str, torch.Tensor]]:
        """{stage: {split: (N, D)}} for every backbone stage, D <= max_features."""
        if self._stages is None:
            names = backbone_stages(self.model)
            per_split = {s: stage_features(self.model, self.data[s][0], names, self.max_features) for s in self.SPLITS}
            self._stages = {n: {s: per_split[s][n] for s in self.SPLITS} for n in names}
        return self._stages

    def inputs(self) -> dict[str, torch.Tensor]:
        """{split: (N, D)}: the raw inputs, pooled like a stage (the no-transfer baseline for probes)."""
        return {s: pool_features(self.data[s][0].float(), self.max_features) for s in self.SPLITS}


# --- re-initializing and grouping ---------------------------------------------------------------------------

def _reinitialize(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


def _discriminative(stages: Sequence[str], mult: float, prefix: str = "") -> dict[str, float]:
    """lr factors rising geometrically from `mult` at the first stage to 1 at the head (ULMFiT-style)."""
    n = len(stages)
    return {f"{prefix}{s}": mult ** ((n - i) / n) for i, s in enumerate(stages)}


# --- running a strategy ---------------------------------------------------------------------------------

@dataclass
class StrategyResult:
    """One strategy on one target: the task's metric on validation (its best epoch) and test, seconds, the run.

    `val_acc` holds the value of `metric` (val/acc for a classifier; a regression's val/loss, its direction
    `mode`), `test_acc` the test value of the task's headline metric `test_metric` (test/acc, test/mse)."""

    strategy: str
    val_acc: float | None
    test_acc: float | None
    seconds: float
    run_id: int | None
    trainable_params: int
    model: nn.Module | None = field(default=None, repr=False)
    probes: list[dict] | None = None
    detail: str = ""
    metric: str = "val/acc"
    mode: str = "max"
    test_metric: str = "test/acc"

    def row(self) -> dict:
        return {"strategy": self.strategy, "val_acc": self.val_acc, "test_acc": self.test_acc,
                "seconds": round(self.seconds, 2), "run": self.run_id, "trainable": self.trainable_params,
                "detail": self.detail, "metric": self.metric, "mode": self.mode, "test_metric": self.test_metric}


def _val_of(result: FitResult, key: str = "val/acc") -> float | None:
    values = result.history.get(key) or []
    if not values:
        return None
    return values[result.best_epoch - 1] if result.best_epoch else values[-1]


def judged_by(task: Task, hp: Config) -> tuple[str, str, str]:
    """(metric, mode, test metric) the strategies on `task` are compared by: val/acc (max) and test/acc for a
    classifier; a regression's val/loss (min) and its headline test metric (test/mse); the Config's
    early-stopping metric when it names another (`metrics.for_task`)."""
    tm = task.task_metrics
    hp = for_task(hp, tm)[0]
    return hp.early_stop_metric, hp.mode, f"test/{tm.headline.name if tm.headline else 'loss'}"


def _test_of(result: FitResult, test_metric: str) -> float | None:
    return result.test.get(test_metric.split("/", 1)[1]) if result.test else None


def _feature_task(task: Task, label: str, feats: dict[str, torch.Tensor], cache: FeatureCache) -> Task:
    """A linear model on `feats`: a classifier of the task's classes, or a regression onto its outputs, with the
    task's loss and metrics."""
    dim, outputs = feats["train"].shape[1], output_size(task, cache.labels("train"))
    data = {s: TensorDataset(feats[s], cache.labels(s)) for s in FeatureCache.SPLITS}
    return Task(name=f"{task.name}[{label}]", build_model=lambda: nn.Linear(dim, outputs),
                train=data["train"], val=data["val"], test=data["test"], num_classes=task.num_classes,
                loss=task.loss, kind=task.kind, metrics=task.metrics, info={"features": label, "dim": dim})


def _standardize(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Features standardized by the training split's statistics; a feature constant on train (a ReLU unit dead on
    every training example) is set to 0 everywhere: dividing by its near-zero spread would blow its rare nonzero
    test values up a million-fold (a regression probe's test mse went to 5e4 that way)."""
    mean, std = feats["train"].mean(0), feats["train"].std(0)
    scale = torch.where(std > 1e-6, 1.0 / std.clamp_min(1e-6), torch.zeros_like(std))
    return {s: (f - mean) * scale for s, f in feats.items()}


@dataclass
class Plan:
    """What `fit` trains for a weight-training strategy: the model (a FrozenStages for finetune), its
    optimizer with per-group learning rates, callbacks, and a one-line description."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    callbacks: list
    detail: str


def plan_strategy(model: nn.Module, strategy: str, hp: Config) -> Plan:
    """Freeze, group and (for scratch) re-initialize `model` for `finetune:K`, `full` or `scratch`.

    finetune:K: stages before the last K frozen (no gradients, eval mode); the K stages at
    `hp.backbone_lr_mult` x lr, the head at lr. full: discriminative rates (see `_discriminative`).
    scratch: every parameter re-initialized (seeded by `hp.seed`), one learning rate.
    """
    stages = backbone_stages(model)
    kind, k = parse_strategy(strategy, len(stages))
    callbacks: list = []
    if kind == "finetune":
        trainable = stages[-k:]
        wrapped = FrozenStages(model, [s for s in stages if s not in trainable])
        optimizer = build_optimizer(hp, wrapped, lr_mult={"module": hp.backbone_lr_mult,
                                                          f"module.{head_name(model)}": 1.0})
        if hp.unfreeze_every_epochs:
            for s in trainable:  # in the optimizer from the start, frozen until their epoch comes
                wrapped.freeze(s)
            callbacks.append(GradualUnfreeze(wrapped, trainable[::-1], hp.unfreeze_every_epochs))
        frozen = ", ".join(s for s in stages if s not in trainable) or "none"
        detail = (f"{', '.join(trainable)} at lr x{hp.backbone_lr_mult:g}, head x1; frozen: {frozen}"
                  + (f"; unfreezing one stage every {hp.unfreeze_every_epochs} epochs" if hp.unfreeze_every_epochs
                     else ""))
        return Plan(wrapped, optimizer, callbacks, detail)
    if kind == "full":
        mults = _discriminative(stages, hp.backbone_lr_mult)
        detail = "all stages; lr x" + ", x".join(f"{m:.2g}" for m in mults.values()) + ", head x1"
        return Plan(model, build_optimizer(hp, model, lr_mult=mults), callbacks, detail)
    if kind == "scratch":
        _reinitialize(model, hp.seed)
        return Plan(model, build_optimizer(hp, model), callbacks, "same architecture, random initialization")
    raise ConfigError(f"strategy: {strategy!r} trains no backbone weights; plan_strategy takes finetune:K, full or scratch")


def train_strategy(source: Source, task: Task, strategy: str, hp: Config | None = None, *,
                   store: Store | None = None, study: str | None = None, quiet: bool = True,
                   runs_dir: str | Path = DEFAULT_RUNS_DIR, cache: FeatureCache | None = None) -> StrategyResult:
    """Train `strategy` from `source` on `task` with `hp` (default: the source's hyperparameters).

    Each fit is a run in `store` (kind "train", study `study` or "transfer-<source>-<target>", named after
    the strategy; probes one run per stage). For `linear`, the run's best checkpoint holds the assembled
    model (backbone + trained classifier), so it can be a source itself.

    >>> r = train_strategy(src, task, "finetune:1", hp)   # doctest: +SKIP
    >>> r.test_acc, r.trainable_params
    """
    hp = target_hparams(source, task, hp)
    task = prepare_target(task, hp)
    model = target_model(source, task)
    stages = backbone_stages(model)
    kind, k = parse_strategy(strategy, len(stages))
    metric, mode, test_metric = judged_by(task, hp)
    judged = dict(metric=metric, mode=mode, test_metric=test_metric)
    study = study or study_name(source, task)
    common = dict(store=store, study=study, quiet=quiet, runs_dir=runs_dir)

    def tag(result: FitResult, detail: str) -> None:
        if store is not None and result.run_id is not None:
            store.update_run(result.run_id, summary={"transfer/strategy": strategy, "transfer/source": source.origin,
                                                     "transfer/detail": detail})

    if kind in ("linear", "probe"):
        cache = cache or FeatureCache(source.model, task)
        if kind == "linear":
            name = head_linear(model)
            clf = copy.deepcopy(model.get_submodule(name))
            res = fit(_feature_task(task, "head", cache.head_inputs(), cache), hp, model=clf, name=strategy, **common)
            model.get_submodule(name).load_state_dict(res.model.state_dict())
            if res.checkpoint:  # the run's model is the whole network, usable as a source
                ckpt = load_checkpoint(res.checkpoint)
                save_checkpoint({**ckpt, "model": model.state_dict()}, res.checkpoint)
            detail = (f"{'classifier' if task.kind == 'classification' else 'linear regression'} on "
                      f"{clf.in_features} features of the frozen backbone")
            tag(res, detail)
            return StrategyResult(strategy, _val_of(res, metric), _test_of(res, test_metric), res.seconds, res.run_id,
                                  sum(p.numel() for p in clf.parameters()), model, detail=detail, **judged)
        rows, seconds = [], 0.0
        for stage, feats in cache.stages().items():
            res = fit(_feature_task(task, stage, _standardize(feats), cache), hp, name=f"probe:{stage}", **common)
            tag(res, f"probe on {stage}")
            seconds += res.seconds
            rows.append({"stage": stage, "dim": feats["train"].shape[1], "val_acc": _val_of(res, metric),
                         "val_loss": _val_of(res, "val/loss"), "test_acc": _test_of(res, test_metric),
                         "run": res.run_id, "seconds": round(res.seconds, 2)})
        sign = 1.0 if mode == "max" else -1.0   # best first by the metric's direction, then the lower loss
        best = max(rows, key=lambda r: (sign * r["val_acc"] if r["val_acc"] is not None else float("-inf"),
                                        -(r["val_loss"] or 0.0)))
        outputs = output_size(task, cache.labels("train"))
        return StrategyResult(strategy, best["val_acc"], best["test_acc"], seconds, best["run"],
                              best["dim"] * outputs + outputs, None, rows,
                              detail=f"best stage {best['stage']}", **judged)

    plan = plan_strategy(model, strategy, hp)
    n_trainable = sum(p.numel() for g in plan.optimizer.param_groups for p in g["params"])
    res = fit(task, hp, model=plan.model, optimizer=plan.optimizer, callbacks=plan.callbacks, name=strategy, **common)
    tag(res, plan.detail)
    final = res.model.module if isinstance(res.model, FrozenStages) else res.model
    return StrategyResult(strategy, _val_of(res, metric), _test_of(res, test_metric), res.seconds, res.run_id,
                          n_trainable, final, detail=plan.detail, **judged)


def compare(source: Source, task: Task, hp: Config | None = None, strategies: Sequence[str] | None = None, *,
            store: Store | None = None, study: str | None = None, quiet: bool = True,
            runs_dir: str | Path = DEFAULT_RUNS_DIR, cache: FeatureCache | None = None,
            report: Callable[[StrategyResult], None] | None = None) -> list[StrategyResult]:
    """Every strategy (default: `default_strategies`) on one target, features computed once for all.

    Every name is checked before anything trains; `report` is called with each result as it finishes.
    """
    hp = target_hparams(source, task, hp)
    task = prepare_target(task, hp)
    strategies = list(strategies or default_strategies(source.model))
    for s in strategies:
        parse_strategy(s, len(backbone_stages(source.model)))
    cache = cache or FeatureCache(source.model, task)
    results = []
    for s in strategies:
        results.append(train_strategy(source, task, s, hp, store=store, study=study, quiet=quiet, runs_dir=runs_dir,
                                      cache=cache))
        if report is not None:
            report(results[-1])
    return results
