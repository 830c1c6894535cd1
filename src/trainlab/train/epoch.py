"""The per-epoch half of the loop: validation, the epoch's metrics, callbacks, early stopping, the best
weights, the epoch's rows in the store, checkpoints and the printed line.

Callbacks answer in two ways. `epoch_metrics(state) -> {name: value}` (optional: the EMA's validation of
its averaged weights) adds metrics before any callback decides; `on_epoch_end(state) -> Stop | None`
decides. `summary() -> dict` (optional: the snapshots taken) is what a callback wants in the run's
summary; the recorder stores it. Under data parallelism every rank computes the same metrics (validation
is reduced across ranks), and the first rank's stop decides for all. A `Halt` (SIGTERM during validation,
the store's memory bound) stops the run after the epoch's checkpoint: resuming starts the next epoch.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
from torch import nn

from trainlab.config import Config, ConfigError
from trainlab.parallel.ddp import Dist, first_decision, reduce_means
from trainlab.tasks import Task
from trainlab.train.callbacks import LoopState, Stop
from trainlab.train.data import TRAIN_EVAL_EXAMPLES, Feed, train_subset
from trainlab.train.early_stopping import EarlyStopping
from trainlab.train.evaluate import EvalData, eval_count, eval_data, evaluate
from trainlab.train.halt import Halt, resume_hint
from trainlab.train.record import Recorder
from trainlab.train.resume import Checkpoints, Position

__all__ = ["EpochEnd", "held_out", "callback_summary"]


def callback_summary(callbacks: Sequence) -> dict[str, Any]:
    """What the callbacks that have a `summary()` want in the run's summary, merged."""
    out: dict[str, Any] = {}
    for cb in callbacks:
        if hasattr(cb, "summary"):
            out.update(cb.summary())
    return out


def held_out(task: Task, device: torch.device, dist: Dist | None, feed: Feed) -> tuple[EvalData, EvalData]:
    """(validation, train-eval): the validation split and up to `data.TRAIN_EVAL_EXAMPLES` training examples,
    held for the whole run: in-memory tensors on `device`, other datasets read in batches at each evaluation;
    under DDP each rank's shard of them."""
    rank, world = (dist.rank, dist.world_size) if dist is not None and dist.ddp else (0, 1)
    n_val = len(task.val) if hasattr(task.val, "__len__") else TRAIN_EVAL_EXAMPLES
    val = eval_data(task.val, device, feed, rank, world)
    train_eval = eval_data(train_subset(task.train, n_val), device, feed, rank, world)
    return val, train_eval


class EpochEnd:
    """Called once per epoch, after its last update: returns the decision to stop (or None).
    `data` is `held_out(...)`: what validation and the training metrics are measured on."""

    def __init__(self, task: Task, hp: Config, model: nn.Module, device: torch.device, dist: Dist | None,
                 data: tuple[EvalData, EvalData], callbacks: Sequence, stopper: EarlyStopping, recorder: Recorder,
                 checkpoints: Checkpoints, verbose: bool, halt: Halt | None = None, autocast: Callable = nullcontext,
                 feed: Feed | None = None):
        self.task, self.hp, self.model, self.device = task, hp, model, device
        self.dist = dist if dist is not None and dist.ddp else None
        self.val, self.train_eval = data
        self.callbacks, self.stopper, self.rec, self.ckpts, self.verbose = callbacks, stopper, recorder, checkpoints, verbose
        self.measuring = [cb for cb in callbacks if hasattr(cb, "epoch_metrics")]
        self.halt = halt or Halt()
        self.autocast = autocast  # validation in the run's precision
        self.feed = feed or Feed(device=device)
        self.metrics = task.task_metrics.metrics

    def _validate(self, seen: int, seconds: float) -> dict[str, float]:
        task, model, device, ms, feed = self.task, self.model, self.device, self.metrics, self.feed
        with self.autocast():
            val = evaluate(model, task.val, loss_fn=task.loss, device=device, data=self.val, metrics=ms, feed=feed)
            tr = evaluate(model, task.train, loss_fn=task.loss, device=device, data=self.train_eval, metrics=ms,
                          feed=feed)
        world = 1
        if self.dist is not None:  # sums over every rank's shard: the same numbers on every rank, so decisions agree
            val = reduce_means(self.dist, val, eval_count(self.val))
            tr = reduce_means(self.dist, tr, eval_count(self.train_eval))
            world = self.dist.world_size
        out = {"val/loss": val["loss"]}
        out.update({f"val/{m.name}": val[m.name] for m in ms})
        out.update({f"train/{m.name}": tr[m.name] for m in ms})
        out.update({"train/loss_eval": tr["loss"], "epoch_time_s": seconds,
                    "samples_per_s": seen * world / seconds if seconds > 0 else float("nan")})
        return out

    def __call__(self, state: LoopState, pos: Position, seen: int, seconds: float, stop: Stop | None) -> Stop | None:
        """End epoch `state.epoch` at update `pos.step`, after `seen` examples in `seconds`; `stop` is what the
        step callbacks asked for during the epoch. Advances `pos` to the next epoch's start."""
        hp, epoch, step = self.hp, state.epoch, pos.step
        state.step, state.metrics = step, self._validate(seen, seconds)
        for cb in self.measuring:
            state.metrics.update(cb.epoch_metrics(state))
        for cb in self.callbacks:
            stop = cb.on_epoch_end(state) or stop
        metrics = state.metrics  # callbacks may have added to it
        for k, v in metrics.items():
            pos.history.setdefault(k, []).append(v)
        if hp.early_stop_metric not in metrics:
            raise ConfigError(f"early_stop_metric: not measured by this run, got {hp.early_stop_metric!r}; "
                              f"choose one of {', '.join(sorted(metrics))}")
        decision = self.stopper.update(metrics[hp.early_stop_metric], epoch + 1)
        if decision.improved:
            pos.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.rec.end_epoch(step, epoch, metrics, self.stopper.best, self.stopper.best_epoch,
                           callback_summary(self.callbacks))
        pos.epoch, pos.batch = epoch + 1, 0
        if decision.improved:  # best.pt lands first: a last.pt that names a best epoch always has its best.pt
            self.ckpts.save("best.pt", pos, also="last.pt")
        else:
            self.ckpts.save("last.pt", pos)
        if self.verbose:
            head = self.metrics[0].name if self.metrics else None
            shown = (f"val/{head} {metrics[f'val/{head}']:.4f}  " if head else "") + f"val/loss {metrics['val/loss']:.4f}  "
            shown += f"train/{head} {metrics[f'train/{head}']:.4f}  " if head else ""
            print(f"epoch {epoch + 1}/{state.plan.epochs}  {shown}"
                  f"lr {state.plan.lr(max(step - 1, 0)):.2e}  {metrics['samples_per_s']:.0f} samples/s")
        final = Stop("completed", decision.reason) if decision.stop else stop
        if self.halt.reason is None and (why := self.rec.halt_reason()):
            self.halt.stop(why)
        if final is None and self.halt.reason is not None and step < state.plan.total_updates:  # else: done anyway
            final = Stop("stopped", f"{self.halt.reason} after epoch {epoch + 1}" + resume_hint(
                state.run_id, self.ckpts.run_dir, state.world_size))
        if self.dist is not None:  # the lowest rank that stops (early stopping or a callback) decides for all
            final = first_decision(self.dist, final)
        return final
