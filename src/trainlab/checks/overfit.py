"""Overfit a small sample: a model that cannot memorize a few batches has a bug, not a tuning problem."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from trainlab.config import DEFAULT_RUNS_DIR, Config
from trainlab.doctor.curves import loss_trend
from trainlab.doctor.schedule_rules import FLAT_DROP
from trainlab.store import Store
from trainlab.tasks import Task, load_task
from trainlab.checks.common import CheckResult, first_examples, fresh_model, override, record, rng_kept, stored_losses
from trainlab.train.callbacks import Stop
from trainlab.train.data import Feed
from trainlab.train.evaluate import dataset_tensors
from trainlab.train.loop import fit

__all__ = ["check_overfit", "OVERFIT_REGRESSION_FRACTION"]


OVERFIT_REGRESSION_FRACTION = 0.05  # a regression has memorized its sample at a loss of 5% of its target variance (R^2 >= 0.95)



class _StopAtFullAccuracy:
    """Ends the run at the first epoch whose accuracy on the small sample (held as `val`) is 100%; for a
    regression (`max_loss` given), the first whose loss on the sample is at most `max_loss` (memorized)."""

    def __init__(self, max_loss: float | None = None) -> None:
        self.reached_at: int | None = None
        self.max_loss = max_loss

    def on_step_end(self, state) -> None:
        return None

    def on_epoch_end(self, state) -> Stop | None:
        if self.max_loss is not None:
            if state.metrics.get("val/loss", float("inf")) <= self.max_loss:
                self.reached_at = state.step
                return Stop("completed", f"memorized the sample (loss <= {self.max_loss:.3g}) at step {state.step}")
            return None
        if state.metrics.get("val/acc", 0.0) >= 1.0:
            self.reached_at = state.step
            return Stop("completed", f"reached 100% training accuracy at step {state.step}")
        return None

    def on_fit_end(self, state) -> None:
        return None


def check_overfit(task: Task | None, hp: Config, store: Store | None = None, *, batches: int = 5,
                  max_steps: int = 1000, model: nn.Module | None = None, study: str | None = None,
                  runs_dir: str = DEFAULT_RUNS_DIR) -> CheckResult:
    """Train on a small sample (`batches` minibatches of hp.batch_size) with regularization off (no weight
    decay, dropout or label smoothing; constant learning rate hp.lr) until 100% training accuracy.

    Passes when accuracy on the sample (eval mode, checked after every pass over it) reaches 100% within
    `max_steps` updates; the evidence holds the steps it took. A failure names the lecture's cause that
    fits the curve: the loss exploding to Inf/NaN (learning rate too high, or bad initialization), the
    loss not going down (learning rate too low, or bad initialization), or a loss that falls too slowly.
    The curve is stored with the run (train/loss per step, val/acc = accuracy on the sample per epoch).
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1, but got batches={batches!r}.")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, but got max_steps={max_steps!r}.")
    hp_o = override(hp, weight_decay=0.0, dropout=0.0, label_smoothing=0.0, schedule="constant", warmup_steps=0,
                     warmup_epochs=0.0, steps=max_steps, patience=None, early_stop_metric="val/acc",
                     early_stop_mode="max", ema=None, snapshots=False)
    task = task or load_task(hp_o)
    n = min(len(task.train), batches * hp.batch_size)
    sample = first_examples(task.train, n, hp.seed)
    small = replace(task, train=sample, val=sample)
    target = store if store is not None else Store("sqlite://")
    max_loss = None
    if task.kind == "regression":  # memorized: the sample's loss at most 5% of its target variance (R^2 >= 0.95)
        ys = dataset_tensors(sample, feed=Feed.for_task(task, hp, torch.device("cpu")))[1].float()
        max_loss = OVERFIT_REGRESSION_FRACTION * max(float(ys.var(unbiased=False)), 1e-12)
    stopper = _StopAtFullAccuracy(max_loss)
    with rng_kept():
        net = fresh_model(task, hp, model)
        for m in net.modules():   # regularization off, whatever the task's model factory built in
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.p = 0.0
        result = fit(small, hp_o, store=target, study=study, name="check-overfit", kind="check",
                     callbacks=[stopper], quiet=True, evaluate_test=False, model=net, checkpoints=False,
                     runs_dir=runs_dir)
    losses, lrs = stored_losses(target, result.run_id)
    accs = result.history.get("val/acc", [])
    evidence: dict[str, Any] = {"examples": n, "batches": math.ceil(n / hp.batch_size), "max_steps": max_steps,
                                "steps": result.steps, "epochs": result.epochs, "lr": hp.lr,
                                "final_accuracy": accs[-1] if accs else None, "training_status": result.status,
                                "regularization": "off (weight_decay 0, dropout 0, label_smoothing 0)"}
    if max_loss is not None:
        evidence["target_loss"] = max_loss   # a regression memorizes the sample when its loss falls this low
    if losses:
        trend = loss_trend(losses)
        evidence.update({"loss_start": losses[0], "loss_end": trend["end"]})
    if stopper.reached_at is not None and max_loss is not None:
        verdict = "pass"
        message = (f"memorized {n} examples (regression: loss {losses[-1]:.3g} on them, at most "
                   f"{OVERFIT_REGRESSION_FRACTION:.0%} of their target variance) in {stopper.reached_at} steps")
        evidence["steps_to_100"] = stopper.reached_at
    elif stopper.reached_at is not None:
        verdict = "pass"
        message = (f"reached 100% training accuracy on {n} examples ({evidence['batches']} minibatches) in "
                   f"{stopper.reached_at} steps, loss {losses[0]:.3g} -> {losses[-1]:.3g}")
        evidence["steps_to_100"] = stopper.reached_at
    else:
        verdict = "fail"
        acc = f"{evidence['final_accuracy']:.1%}" if evidence["final_accuracy"] is not None else "no"
        # how far it got: a regression by its loss against the memorized level, a classifier by its accuracy
        got = (f"loss {trend['end']:.3g}, memorized at {max_loss:.3g}" if max_loss is not None and losses
               else f"{acc} training accuracy")
        if result.status == "diverged" or any(not math.isfinite(v) for v in losses):
            cause = "loss exploding"
            message = (f"the loss exploded ({result.reason or 'NaN/Inf'}): learning rate too high "
                       f"(lr {hp.lr:g}), or bad initialization")
        elif (trend["start"] - trend["end"]) / trend["start"] < FLAT_DROP:
            cause = "loss not going down"
            message = (f"the loss is not going down ({trend['start']:.3g} -> {trend['end']:.3g} over "
                       f"{result.steps} steps, {got}): learning rate too low (lr {hp.lr:g}), "
                       "or bad initialization")
        else:
            cause = "too slow"
            short = (f"stayed above {max_loss:.3g}, the level of a memorized sample," if max_loss is not None
                     else f"training accuracy reached only {acc}")
            message = (f"the loss fell ({trend['start']:.3g} -> {trend['end']:.3g}) but {short} "
                       f"on {n} examples in {result.steps} steps: raise max_steps or the learning "
                       f"rate (lr {hp.lr:g}); a model that cannot memorize {n} examples may be too small")
        evidence["cause"] = cause
    summary = {"check": "overfit", "verdict": verdict, "message": message, **evidence}
    run_id = record(store, "overfit", hp_o, summary, study, run_id=result.run_id) if store is not None else None
    return CheckResult("overfit", verdict, message, evidence, run_id)
