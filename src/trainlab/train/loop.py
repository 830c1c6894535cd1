"""`fit()`: the one training loop every command uses.

It resolves the run's plan once (`plan.RunPlan`: updates, warmup, lr scaling, schedule, cycle ends), builds
the model, opens the run in the store (`record.Recorder`), resumes it when asked (`resume`), then runs
epochs: the updates (`steps.Steps`: forward, loss, backward, clipping, optimizer step, monitors, callbacks;
losses stay on the device and are read every `steps.DRAIN` steps, so nothing synchronizes or writes to the
database per step) and the epoch's end (`epoch.EpochEnd`: validation, callbacks, early stopping, the best
weights, checkpoints). Every exit path restores the best weights and records the run's end.

Loggers (`fit(..., loggers=[...])`, `trainlab.export`) get the rows the `Recorder` writes, at its existing
read points; the run's summary keeps "startup" (`startup.Startup`: the seconds before the first step).

Faults (`halt`, `record`, `resume.Checkpoints`): SIGTERM stops the run like Ctrl-C, at a clean point, with a
last checkpoint; a checkpoint that cannot be written fails the run at the next checkpoint, recording the
weights actually on disk; a database outage keeps the rows in memory while training goes on.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from trainlab.checkpoint import plain_module
from trainlab.config import DEFAULT_RUNS_DIR, Config, ConfigError
from trainlab.metrics import for_task
from trainlab.monitor import ratio_warnings
from trainlab.optim import build_optimizer
from trainlab.parallel.ddp import Dist, apply_sync_bn, batchnorm_warning, broadcast_object, wrap_ddp
from trainlab.preflight import preflight
from trainlab.store import Store
from trainlab.tasks import Task, checked, load_task, model_label
from trainlab.train.averaging import callbacks_for
from trainlab.train.callbacks import Callback, LoopState, Stop
from trainlab.train.data import Batches, Feed, check_data, epoch_order
from trainlab.train.early_stopping import EarlyStopping
from trainlab.train.epoch import EpochEnd, callback_summary, held_out
from trainlab.train.evaluate import evaluate
from trainlab.train.halt import Halt, resume_hint
from trainlab.train.loggers import Logger
from trainlab.train.pipelined import PipelineRun, check_pipeline
from trainlab.train.plan import RunPlan, lr_schedule
from trainlab.train.precision import Execution, input_dims
from trainlab.train.record import Recorder
from trainlab.train.resume import Checkpoints, Position, resume_run
from trainlab.train.startup import Startup
from trainlab.train.steps import Steps
from trainlab.train.threads import ThreadGuard
from trainlab.train.timefit import TimeFit

__all__ = ["fit", "FitResult", "resolve_device", "lr_schedule", "epoch_order", "LoopState", "Stop", "Callback"]


@dataclass
class FitResult:
    run_id: int | None
    status: str
    reason: str | None
    best_metric: float | None
    best_epoch: int | None
    epochs: int
    steps: int
    test: dict[str, float] | None
    history: dict[str, list[float]]
    checkpoint: str | None
    model: nn.Module
    seconds: float
    rank: int = 0  # under torchrun: this process's rank (only rank 0 has a test result and a checkpoint path)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: CUDA is not available on this machine, got {name!r}")
    return torch.device(name)


def fit(task: Task | None, hp: Config, *, store: Store | None = None, study: str | None = None,
        name: str | None = None, kind: str = "train", callbacks: Sequence[Callback] = (),
        quiet: bool = False, evaluate_test: bool = True, resume: int | None = None,
        runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None, checkpoints: bool = True,
        schedule: Callable[[int], float] | None = None, dist: Dist | None = None,
        loggers: Sequence[Logger] = ()) -> FitResult:
    """Train `task` with `hp`, storing the run in `store` (if given), and return the result.

    The best weights (by `hp.early_stop_metric`) are restored on every exit path: early stop, last
    epoch, divergence, Ctrl-C. The test split is evaluated once, on them, when `evaluate_test`.
    `resume=RUN` continues a run from its last checkpoint so that the result equals an uninterrupted run.
    `model`/`optimizer` replace the task's model and the optimizer `hp` names (transfer learning).
    `schedule` (a pure factor(step)) replaces hp's schedule: the LR range test's exponential sweep.
    Layers whose median update/weight ratio leaves [1e-4, 1e-2] are warned about at the end
    (printed unless `quiet`, and kept in the run's summary as "ratio_warnings").
    `dist` (from `trainlab.parallel.ddp.init()` under torchrun) trains data-parallel: DDP, each rank on its
    shard, decisions agreed across ranks, and only rank 0 writes (run row, metrics, checkpoints, output);
    the other ranks return the same status with `run_id` and their `rank`, but no test result or checkpoint.
    SIGTERM (from the main thread's handler, installed for the run) stops like Ctrl-C, writing `last.pt` at
    the exact position. A checkpoint that cannot be written raises CheckpointWriteError (the run "failed").
    With `hp.parallel == "pipeline"` the ranks split the model's stages instead (`pipelined.PipelineRun`).
    `loggers` (TensorBoard, MLflow, CSV: `trainlab.export`) get the run's metrics at the loop's existing
    read points (every few dozen steps, each epoch), never per step; see `train.loggers`.
    The run's summary keeps "startup": the seconds from fit() to the first step and that step's own cost.
    """
    started, wall_started = time.perf_counter(), time.time()
    startup = Startup(started)
    ddp = dist is not None and dist.ddp
    rank, world = (dist.rank, dist.world_size) if ddp else (0, 1)
    if rank:  # only rank 0 writes, tests and prints
        store, quiet, evaluate_test, loggers = None, True, False, ()
    device = dist.device if ddp else resolve_device(hp.device)
    task = checked(task, hp) if task is not None else load_task(hp)
    hp, metric_note = for_task(hp, task.task_metrics)  # early stopping on what the task measures
    feed = Feed.for_task(task, hp, device)
    check_data(task, hp, feed)  # bad data: one line, before anything is stored
    callbacks = [*callbacks_for(hp), *callbacks]  # EMA and snapshots, when hp asks for them
    timefit = TimeFit.start(hp, wall_started, resumed=resume is not None)  # `minutes`: the schedule fitted after epoch 1
    if timefit is not None:
        callbacks.append(timefit.deadline)
    pipelined = hp.parallel == "pipeline" and check_pipeline(hp, dist)  # a ConfigError before anything is stored
    model, optimizer, net, ex = _build(task, hp, model, optimizer, device, None if pipelined else dist, world,
                                       startup)
    preflight(task, hp, model)  # labels in range, finite inputs, shapes that fit: one line before anything is stored
    pipe = PipelineRun(model, hp, dist, task.loss, optimizer) if pipelined else None  # every rank sees every batch
    ex, (data_rank, data_world) = ex.with_pipeline(pipe), ((0, 1) if pipelined else (rank, world))
    plan = RunPlan.resolve(hp, len(task.train), data_world, factor=schedule, execution=ex)  # derived once
    batches = Batches(task.train, hp.batch_size, device, data_rank, data_world, feed, task.train_transform, hp.seed)
    data, label = held_out(task, device, dist, feed), model_label(task, hp, model)
    halt = Halt()  # SIGTERM, the store's memory bound: a clean stop at the next update
    with halt:  # from before the run's row exists: a SIGTERM at any point after it stops the run cleanly
        rec = Recorder.open(store, hp, plan, name=name or f"{task.name}-{label}", study=study, kind=kind,
                            resume=resume, runs_dir=runs_dir if checkpoints else None, dist=dist,
                            metrics=task.task_metrics.summary(), loggers=loggers)
        state = LoopState(hp, task, model, optimizer, device, rec.run_id, rec.run_dir, plan.updates_per_epoch,
                          plan.total_updates, rank=rank, world_size=world, plan=plan)
        stopper = EarlyStopping(hp.early_stop_metric, hp.mode, hp.patience, hp.min_delta)
        pos, scaler = Position(), ex.scaler()  # fp16 only: the scaler's state is checkpointed with the run
        if resume is not None:
            pos = resume_run(resume, rec.run_dir, model=model, optimizer=optimizer, stopper=stopper,
                             callbacks=callbacks, device=device, dist=dist, world_size=world, scaler=scaler)
            rec.resumed(pos.step, dist)  # claims the run: refused while another live process trains it
        ckpts = Checkpoints(rec.run_dir, hp, model, optimizer, stopper, callbacks, world, flush=rec.flush,
                            scaler=scaler, gather=pipe.gather if pipe else None)
        if not quiet:
            where = f"run {rec.run_id}" if rec.run_id is not None else "run"
            print("\n".join(plan.describe(hp, where, task.name, label)))
            if metric_note:
                print(f"  {metric_note}")
        steps = Steps(net, model, optimizer, task, hp, plan, batches, rec, callbacks, state, ckpts, dist, pos.step,
                      quiet, halt, execution=ex, scaler=scaler, pipe=pipe, startup=startup)
        end_epoch = EpochEnd(task, hp, model, device, dist, data, callbacks, stopper, rec, ckpts, not quiet, halt,
                             autocast=ex.autocast, feed=feed)

        decide = (lambda n: broadcast_object(dist, n)) if dist is not None and world > 1 else None

        def adopt(fitted_hp: Config, fitted: RunPlan | None) -> RunPlan | None:
            """A time fit's new length (`timefit.TimeFit`): the loop, its parts and the store follow it."""
            nonlocal hp, plan
            hp = fitted_hp
            if fitted is not None:
                plan = state.plan = steps.plan = fitted
                state.total_steps, state.hp, ckpts.hp = plan.total_updates, hp, hp
                rec.fitted(plan, timefit.summary)
                if not quiet:
                    print(timefit.said())
            return fitted

        if timefit is not None:
            steps.refit = lambda step: adopt(*timefit.during_epoch(hp, plan, step, decide))
        guard = steps.guard = ThreadGuard.start(pos.step, distributed=dist is not None and world > 1)
        status, reason = "completed", None
        try:
            ckpts.prepare()  # a runs folder that cannot hold checkpoints fails now, not after an epoch
            if ddp and resume is None:  # a torchrun restart resumes from last.pt, so there is one from the start
                ckpts.save("last.pt", pos)
            try:
                startup.loop_starts()
                first_epoch = pos.epoch
                while pos.epoch < plan.epochs:  # a time fit (`minutes`) may shorten the plan after the first epoch
                    epoch, step0 = pos.epoch, pos.step
                    state.epoch = epoch
                    t0 = time.perf_counter()
                    if timefit is not None:
                        timefit.epoch_starts(pos.step)
                    if guard is not None:
                        guard.epoch_starts(pos.step)
                    seen, stop = steps.epoch(epoch, pos)  # the updates; ends early on divergence, a stop or a halt
                    startup.epoch_updates_done(pos.step, quiet)
                    t1 = time.perf_counter()
                    if stop is None or not (stop.status == "diverged" or steps.interrupted):
                        stop = end_epoch(state, pos, seen, t1 - t0, stop)  # validation, checkpoints
                    if stop is not None:
                        status, reason = stop.status, stop.reason
                        break
                    if timefit is not None:  # `minutes`: the schedule's length fitted to the time left
                        excess = startup.first_excess() if epoch == first_epoch else 0.0
                        adopt(*timefit.after_epoch(hp, plan, pos.step, t1 - t0 - excess, pos.step - step0,
                                                   time.perf_counter() - t1, decide))
            except KeyboardInterrupt:
                steps.read_losses(state.epoch, pos, collective=False)
                status, reason = "stopped", f"interrupted at step {pos.step}" + resume_hint(rec.run_id, rec.run_dir)
            ckpts.close()  # the last writes landed, or the run fails on their error
        except BaseException as err:
            ckpts.close(raise_errors=False)
            rec.failed(err, callback_summary(callbacks), ckpts.on_disk())
            raise
        finally:
            if guard is not None:
                guard.restore()

    if pos.best_state is not None:
        model.load_state_dict(pos.best_state)
    state.step = pos.step
    for cb in callbacks:
        cb.on_fit_end(state)
    with ex.autocast():
        test = evaluate(model, task.test, loss_fn=task.loss, device=device, metrics=task.task_metrics.metrics,
                        feed=feed) if evaluate_test else None
    epochs = len(pos.history.get("val/loss", []))  # completed, resumed ones included (history is checkpointed)
    layer_warnings, best_path = ratio_warnings(steps.ratio_log), ckpts.best_path()
    rec.finish(status, reason, steps=pos.step, seconds=time.perf_counter() - started, num_classes=task.num_classes,
               test=test, best=stopper.best, best_epoch=stopper.best_epoch, epochs=epochs, checkpoint=best_path,
               warnings=layer_warnings, summary={**callback_summary(callbacks), "startup": startup.summary(),
                                                   **(timefit.stored(plan) if timefit is not None else {}),
                                                   **({"threads": guard.summary} if guard and guard.summary else {})})
    if not quiet:
        if guard is not None and guard.summary:
            print(guard.said())
        _print_end(hp, status, reason, stopper, test, layer_warnings, task.task_metrics.summary()["headline"])
    return FitResult(rec.run_id, status, reason, stopper.best, stopper.best_epoch, epochs, pos.step, test,
                     pos.history, best_path, model, time.perf_counter() - started, rank=rank)


def _build(task: Task, hp: Config, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
           device: torch.device, dist: Dist | None, world: int, startup: Startup | None = None):
    """(model, optimizer, net, execution): the model seeded from `hp.seed` on `device` (BatchNorm per the DDP
    policy, in the run's memory format), its optimizer, what forward and backward run through (the DDP wrapper
    under data parallelism, compiled when asked), and the resolved precision/compile choices. `model` is
    always the plain module (a torch.compile wrapper from the task is unwrapped), so checkpoints and
    state_dicts have no `_orig_mod.` prefix."""
    ddp = dist is not None and dist.ddp
    torch.manual_seed(hp.seed)
    built = model or task.build_model()
    model = plain_module(built)
    dims = input_dims(task.train) if hp.channels_last else None  # read an item only when it matters
    ex = Execution.resolve(hp, device, input_dims=dims, user_compiled=built is not model)
    model = ex.prepare(model.to(device))
    if ddp:  # BatchNorm policy: per-device statistics, or SyncBatchNorm when hp.sync_bn
        model = apply_sync_bn(model, dist, hp.sync_bn)
    bn_warning = batchnorm_warning(model, hp.batch_size, world, hp.sync_bn)
    if bn_warning and not (ddp and dist.rank):
        warnings.warn(bn_warning, stacklevel=3)
    with (startup or Startup()).building_optimizer():  # torch imports torch._dynamo with the first optimizer
        optimizer = optimizer or build_optimizer(hp, model)
    for g in optimizer.param_groups:  # the schedule multiplies each group's own lr
        g.setdefault("base_lr", g["lr"])
    if built is not model:  # the task compiled it: forward through its wrapper (which holds `model`)
        return model, optimizer, (wrap_ddp(built, dist) if ddp else built), ex
    return model, optimizer, ex.wrap(wrap_ddp(model, dist) if ddp else model), ex


def _print_end(hp: Config, status: str, reason: str | None, stopper: EarlyStopping, test, layer_warnings,
               headline: str = "acc") -> None:
    tail = f", test/{headline} {test[headline]:.4f}" if test else ""
    best = f"best {hp.early_stop_metric} {stopper.best:.4f} at epoch {stopper.best_epoch}" \
        if stopper.best is not None else "no validation"
    print(f"{status}: {best}{tail}" + (f" ({reason})" if reason else ""))
    for w in layer_warnings:
        print(f"warning: {w.message}")
