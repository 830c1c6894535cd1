"""Weight averaging inside the loop: an exponential moving average of the weights (EMA, Polyak
averaging) and snapshots at the end of each cycle of the cyclic cosine schedule (snapshot ensembles).

Both are fit callbacks, and `fit()` builds them from the hyperparameters with `callbacks_for(hp)`:

- `ema: 0.999` adds `EMA`: an averaged copy of the weights (`torch.optim.swa_utils.AveragedModel`),
  updated after every optimizer step and validated every epoch as `val/acc_ema` and `val/loss_ema`
  next to the raw weights' `val/acc` and `val/loss`. `ema_warmup: true` ramps the decay up for short
  runs (see `ema_decay`).
- `snapshots: true` (with `schedule: cyclic_cosine`) adds `Snapshots`: the weights at the last update
  of each cosine cycle go to `<run dir>/snapshot-<k>.pt`, and the run's summary lists them under
  "snapshots" (Huang et al. 2017, "Snapshot Ensembles: Train 1, Get M for Free").

BatchNorm: running statistics that belong to other weights are the known trap of weight averaging
(near-chance accuracy). The averaged model averages the parameters only; before every evaluation
(each epoch) its BatchNorm statistics are recomputed for the averaged weights with
`torch.optim.swa_utils.update_bn` on a fixed random subset of at most `BN_EXAMPLES` training examples,
in eval-sized chunks without gradients (a forward pass over them; nothing for models without BatchNorm).
Averaging the running statistics instead (`AveragedModel(use_buffers=True)`) costs nothing, but it
fails when the average still holds early weights: resnet width 8, 6 epochs (174 steps) of cyclic_cosine,
`ema: 0.99` without warm-up validated at 0.085 with averaged statistics and at 0.75 with recomputed
ones (raw weights: 0.86).

Selecting the best checkpoint on the averaged weights: set `early_stop_metric: val/acc_ema` (or
`val/loss_ema`). Then early stopping and `best.pt` follow the EMA metric; `best.pt` holds the averaged
weights under `["callbacks"]["EMA"]["model"]` (read them with `checkpoint_weights`), and the model
`fit()` returns and tests is the averaged model of the best epoch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import Dataset, Subset, TensorDataset

from trainlab.checkpoint import plain_state_dict, save_checkpoint
from trainlab.config import Config, ConfigError
from trainlab.train.callbacks import LoopState
from trainlab.train.early_stopping import EarlyStopping
from trainlab.train.data import Feed
from trainlab.train.evaluate import dataset_tensors, eval_data, evaluate
from trainlab.train.plan import RunPlan

__all__ = ["EMA", "Snapshots", "EMA_METRICS", "BN_EXAMPLES", "callbacks_for", "ema_decay", "ema_update_",
           "recompute_bn", "snapshot_steps", "checkpoint_weights"]

EMA_METRICS = ("val/acc_ema", "val/loss_ema")
BN_EXAMPLES = 1024  # training examples BatchNorm statistics of the averaged weights are recomputed on
_BN_CHUNK = 512


def ema_decay(decay: float, updates: int, warmup: bool = False) -> float:
    """The decay of the update that follows `updates` averaged updates.

    Without warm-up it is `decay`. With warm-up it is `min(decay, (1 + updates) / (10 + updates))`,
    the `num_updates` rule of TensorFlow's `tf.train.ExponentialMovingAverage`: early in training the
    average forgets its first, random weights quickly; from about `9 / (1 - decay)` updates on the
    decay is `decay`. (timm's ModelEmaV3 warms up with a power law instead; this is the simpler rule.)

    >>> [round(ema_decay(0.999, t, warmup=True), 3) for t in (1, 10, 100, 10_000)]
    [0.182, 0.55, 0.918, 0.999]
    """
    if warmup:
        return min(decay, (1 + updates) / (10 + updates))
    return decay


@torch.no_grad()
def ema_update_(averaged: list[torch.Tensor], current: list[torch.Tensor], decay: float) -> None:
    """In place, for each pair: `averaged = decay * averaged + (1 - decay) * current`
    (the update of `torch.optim.swa_utils.get_ema_multi_avg_fn(decay)`, with a decay that may change)."""
    torch._foreach_lerp_(averaged, current, 1.0 - decay)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recompute_bn(model: nn.Module, inputs: torch.Tensor, chunk: int = _BN_CHUNK) -> None:
    """Set `model`'s BatchNorm running statistics to the mean and variance of its activations on
    `inputs` (`torch.optim.swa_utils.update_bn`: a cumulative average over chunks, train mode, no grad)."""
    if _has_batchnorm(model):
        update_bn([inputs[i:i + chunk] for i in range(0, len(inputs), chunk)], model)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (its state_dict keys have no 'module.')."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class EMA:
    """Exponential moving average of the weights, updated every optimizer step.

    `on_step_end` folds the model into the average (the first update copies it); `epoch_metrics`
    recomputes the averaged model's BatchNorm statistics and returns `val/acc_ema` and `val/loss_ema`,
    which the loop adds to the epoch's metrics. With `select=(metric, mode, min_delta)`
    (fit passes it when `early_stop_metric` is an EMA metric) `on_epoch_end` keeps the averaged weights of
    the best epoch and `on_fit_end` puts them into the model, so `fit()` returns and tests them.
    `state_dict()` holds the averaged weights, the update count and that best copy, so exact resume
    continues the same average.

    >>> ema = EMA(0.99)   # usually built by fit() from Config(ema=0.99)
    """

    def __init__(self, decay: float, warmup: bool = False, select: tuple[str, str, float] | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), but got decay={decay!r}.")
        self.decay, self.warmup = decay, warmup
        self.averaged: AveragedModel | None = None
        self.tracker = EarlyStopping(select[0], select[1], None, select[2]) if select else None
        self.best: dict[str, torch.Tensor] | None = None
        self._pending: dict[str, Any] | None = None  # loaded before the first step built the copy
        self._decay_now = decay
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None
        self._bn_inputs: torch.Tensor | None = None
        self._measured: dict[str, float] = {}  # this epoch's metrics of the averaged weights

    @property
    def updates(self) -> int:
        """How many optimizer steps are folded into the average (the first one is copied)."""
        if self.averaged is None:
            return int(self._pending["n_averaged"]) if self._pending else 0
        return int(self.averaged.n_averaged)

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n: torch.Tensor) -> None:
        # AveragedModel hands over n_averaged on the model's device; reading it there would synchronize
        # with the GPU every step, so the decay is worked out beforehand from the CPU copy (`updates`).
        ema_update_(averaged, current, self._decay_now)

    def _build(self, model: nn.Module) -> None:
        # device=None keeps n_averaged on the CPU (reading it never waits for the GPU) and the copy
        # on the model's device. use_buffers=False: buffers are copied from the model at each update
        # and BatchNorm's are recomputed before each evaluation (see the module's docstring).
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=False)
        self.averaged.requires_grad_(False)
        if self._pending is not None:
            self.averaged.module.load_state_dict(self._pending["model"])
            self.averaged.n_averaged.fill_(int(self._pending["n_averaged"]))
            self._pending = None

    def on_step_end(self, state: LoopState) -> None:
        model = _unwrap(state.model)
        if self.averaged is None:
            self._build(model)
        self._decay_now = ema_decay(self.decay, self.updates, self.warmup)
        self.averaged.update_parameters(model)

    def epoch_metrics(self, state: LoopState) -> dict[str, float]:
        """{"val/acc_ema", "val/loss_ema"}: the averaged weights on the validation split, with BatchNorm
        statistics recomputed for them; {} before the first optimizer step."""
        self._measured = {}
        if self.averaged is None:  # no optimizer step yet
            return {}
        feed = Feed.for_task(state.task, state.hp, state.device)
        if self._val is None:  # in-memory tensors on the device, or the dataset read in batches (data.Feed)
            self._val = eval_data(state.task.val, state.device, feed)
        if _has_batchnorm(self.averaged.module):
            if self._bn_inputs is None:
                self._bn_inputs = _bn_inputs(state.task.train, state.hp.seed, state.device, feed)
            recompute_bn(self.averaged.module, self._bn_inputs)
        metrics = state.task.task_metrics.metrics  # acc; or the task's own (a regression: mse, mae)
        val = evaluate(self.averaged.module, state.task.val, loss_fn=state.task.loss, device=state.device,
                       data=self._val, metrics=metrics, feed=feed)
        self._measured = {f"val/{m.name}_ema": val[m.name] for m in metrics}
        self._measured["val/loss_ema"] = val["loss"]
        return dict(self._measured)

    def on_epoch_end(self, state: LoopState) -> None:
        if self.tracker is not None and self.tracker.metric in self._measured:
            # The same rule, on the same values, as the loop's EarlyStopping: both pick the same epoch.
            if self.tracker.update(self._measured[self.tracker.metric], state.epoch + 1).improved:
                self.best = {k: v.detach().clone() for k, v in self.averaged.module.state_dict().items()}

    def on_fit_end(self, state: LoopState) -> None:
        # The loop has restored the raw weights of the best epoch; when the best epoch was chosen on
        # the averaged weights, those are the ones to return and test.
        if self.best is not None:
            _unwrap(state.model).load_state_dict(self.best)

    def state_dict(self) -> dict[str, Any]:
        if self.averaged is None:
            model = self._pending["model"] if self._pending else None
        else:
            model = self.averaged.module.state_dict()
        return {"model": model, "n_averaged": self.updates, "decay": self.decay, "warmup": self.warmup,
                "best": self.best, "tracker": self.tracker.state_dict() if self.tracker else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("model") is not None:
            if self.averaged is None:
                # A copy: the tensors may belong to another live EMA (as a state_dict's do).
                self._pending = {"model": {k: v.detach().clone() for k, v in state["model"].items()},
                                 "n_averaged": int(state["n_averaged"])}
            else:
                self.averaged.module.load_state_dict(state["model"])
                self.averaged.n_averaged.fill_(int(state["n_averaged"]))
        self.best = state.get("best")
        if self.tracker is not None and state.get("tracker"):
            self.tracker.load_state_dict(state["tracker"])


def _bn_inputs(train: Dataset, seed: int, device: torch.device, feed: Feed | None = None) -> torch.Tensor:
    """A fixed random subset of at most BN_EXAMPLES training inputs (the same for a given seed)."""
    n = len(train)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:BN_EXAMPLES].sort().values
    if isinstance(train, TensorDataset):
        return train.tensors[0][idx].to(device)
    return dataset_tensors(Subset(train, idx.tolist()), device, feed)[0]


def snapshot_steps(hp: Config, steps_per_epoch: int, world_size: int = 1) -> list[int]:
    """The steps (0-based index of an update, as `schedules.cycle_ends` counts) that end a cosine cycle
    of `hp`'s cyclic_cosine schedule with `steps_per_epoch` updates per epoch: where `Snapshots` saves
    (`RunPlan.cycle_ends`). A cycle cut off by the end of the run is left out.

    >>> snapshot_steps(Config(schedule="cyclic_cosine", cycles=3, epochs=6), steps_per_epoch=10)
    [19, 39, 59]
    """
    # As many examples as make exactly `steps_per_epoch` updates per epoch on each of `world_size` processes.
    examples = steps_per_epoch * hp.accum_steps * hp.batch_size * world_size
    return list(RunPlan.resolve(hp, examples, world_size).cycle_ends)


class Snapshots:
    """Save the weights at the last update of each cosine cycle as `<run dir>/snapshot-<k>.pt` (k from 1).

    Each file is a checkpoint with "model", "step" (the update's 0-based index), "cycle" and
    "hparams". `taken` lists them (`[{"cycle", "step", "path"}, ...]`) and `summary()` hands them to the
    loop, which stores them in the run's summary under "snapshots" at the epoch's end. The cycle ends are
    the run plan's (`state.plan.cycle_ends`). Needs a store and a run directory (fit(store=...,
    checkpoints=True)); under data parallelism only rank 0 saves.
    """

    def __init__(self):
        self.taken: list[dict[str, Any]] = []
        self._ends: dict[int, int] | None = None  # step -> cycle number

    def on_step_end(self, state: LoopState) -> None:
        if state.run_dir is None and state.rank == 0:
            raise ConfigError("snapshots: saving snapshots needs a store and checkpoints (a run directory), "
                              "got a run without one")
        if state.run_dir is None:  # a data-parallel rank other than 0: rank 0 saves
            return
        if self._ends is None:
            self._ends = {s: k for k, s in enumerate(state.plan.cycle_ends, start=1)}
        done = state.step - 1  # index of the update that just ran
        cycle = self._ends.get(done)
        if cycle is None:
            return
        path = save_checkpoint({"model": plain_state_dict(_unwrap(state.model).state_dict()), "step": done, "cycle": cycle,
                                "epoch": state.epoch + 1, "hparams": state.hp.model_dump(mode="json")},
                               state.run_dir / f"snapshot-{cycle}.pt")
        # Resuming may pass a cycle end again (after a crash between this save and the next last.pt).
        self.taken = [t for t in self.taken if t["cycle"] != cycle] + [
            {"cycle": cycle, "step": done, "path": str(path)}]

    def on_epoch_end(self, state: LoopState) -> None:
        return None

    def on_fit_end(self, state: LoopState) -> None:
        return None

    def summary(self) -> dict[str, Any]:
        """{"snapshots": [...]} once one is taken: what the run's summary lists."""
        return {"snapshots": [dict(t) for t in self.taken]} if self.taken else {}

    def state_dict(self) -> dict[str, Any]:
        return {"taken": [dict(t) for t in self.taken]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.taken = [dict(t) for t in state.get("taken", [])]


def callbacks_for(hp: Config) -> list:
    """The averaging callbacks `hp` asks for (`ema`, `snapshots`); fit() runs them before the user's."""
    out: list = []
    if hp.ema is not None:
        select = (hp.early_stop_metric, hp.mode, hp.min_delta) if hp.early_stop_metric in EMA_METRICS else None
        out.append(EMA(hp.ema, hp.ema_warmup, select=select))
    if hp.snapshots:
        out.append(Snapshots())
    return out


def checkpoint_weights(ckpt: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, "ema" or "raw"): the weights a checkpoint stands for.

    A run that selected its best checkpoint on an EMA metric stands for its averaged weights (kept in
    `ckpt["callbacks"]["EMA"]["model"]`); any other checkpoint for `ckpt["model"]`.
    """
    hparams = ckpt.get("hparams") or {}
    averaged = (ckpt.get("callbacks") or {}).get("EMA") or {}
    if hparams.get("early_stop_metric") in EMA_METRICS and averaged.get("model") is not None:
        return averaged["model"], "ema"
    return ckpt["model"], "raw"
