"""`fit()`: the one training loop every command uses.

Per step: forward, loss, backward, optional clipping, optimizer step with the scheduled learning rate,
monitors at their cadence. Per-step losses stay on the device and are read every `_DRAIN` steps, so the
loop never synchronizes per step and never writes to the database per step. Per epoch: validation,
early stopping, the best checkpoint, the last checkpoint (for exact resume), callbacks.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from trainlab.checkpoint import AsyncCheckpointer, load_checkpoint, rng_state, set_rng_state
from trainlab.config import DEFAULT_RUNS_DIR, Config, ConfigError
from trainlab.monitor import UpdateRatio, divergence, grad_norm, judged_parameters, ratio_warnings
from trainlab.optim import build_optimizer
from trainlab.parallel.ddp import (
    Dist,
    apply_sync_bn,
    batchnorm_warning,
    broadcast_object,
    first_decision,
    mean_across,
    reduce_means,
    scale_lr,
    shard_order,
    shard_size,
    shard_tensors,
    wrap_ddp,
)
from trainlab.store import MetricBuffer, Store, hide_password
from trainlab.tasks import Task, load_task
from trainlab.train.averaging import callbacks_for
from trainlab.train.callbacks import Callback, LoopState, Stop
from trainlab.train.early_stopping import EarlyStopping
from trainlab.train.loggers import LoggedBuffer, Logger
from trainlab.train.evaluate import dataset_tensors, evaluate
from trainlab.train.plan import lr_schedule

__all__ = ["fit", "FitResult", "resolve_device", "lr_schedule", "epoch_order"]

_DRAIN = 50          # steps between reads of the per-step losses (divergence check, metrics, progress)
_FLUSH_S = 2.0       # without checkpoints, metric rows are written at an epoch's end at most this often
_TRAIN_EVAL = 1000   # training examples re-evaluated each epoch for train/acc, in eval mode like val/acc


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: CUDA is not available on this machine, got {name!r}")
    return torch.device(name)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of training examples in `epoch`: a function of (seed, epoch) only, so resume is exact."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class _Batches:
    """Minibatches in a given order: tensor slicing for in-memory data, a DataLoader otherwise."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1):
        self.n, self.bs, self.device = len(dataset), batch_size, device
        self.rank, self.world = rank, world_size
        self.tensors = None
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            self.tensors = tuple(t.to(device) for t in dataset.tensors)
        self.dataset = dataset

    def __len__(self) -> int:
        """Batches per epoch on this rank (its shard of the data when several processes train)."""
        return math.ceil(shard_size(self.n, self.world) / self.bs)

    def iterate(self, order: torch.Tensor, start: int):
        """Batches in `order` (the whole epoch's order; this rank takes its shard), from batch `start`."""
        if self.world > 1:
            order = shard_order(order, self.rank, self.world)
        if self.tensors is not None:
            x, y = self.tensors
            order = order.to(self.device)
            for b in range(start, len(self)):
                idx = order[b * self.bs:(b + 1) * self.bs]
                yield x[idx], y[idx]
            return
        indices = order[start * self.bs:].tolist()
        loader = DataLoader(Subset(self.dataset, indices), batch_size=self.bs, shuffle=False)
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _grouped(batches, k: int):
    """Micro-batches in groups of `k` (the last group may be shorter): ([x...], [y...]) per optimizer update."""
    xs, ys = [], []
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        if len(xs) == k:
            yield xs, ys
            xs, ys = [], []
    if xs:
        yield xs, ys


def _accumulate(net: nn.Module, loss_fn: Callable, xs: list, ys: list, optimizer: torch.optim.Optimizer,
                amp: bool) -> tuple[torch.Tensor, int]:
    """Gradient accumulation: the gradient of the mean loss over all examples of the micro-batches.

    Each micro-batch's mean loss is weighted by its share of the examples, so accumulating 2 x 16 gives
    the gradient of one batch of 32 (and a short last micro-batch is weighted right). Under DDP only the
    last backward all-reduces gradients (`no_sync`, as nanoGPT toggles require_backward_grad_sync).
    Returns (the weighted mean loss, detached; the number of examples).
    """
    n = sum(len(y) for y in ys)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=ys[0].device)
    for i, (x, y) in enumerate(zip(xs, ys)):
        sync = net.no_sync() if hasattr(net, "no_sync") and i < len(xs) - 1 else nullcontext()
        with sync:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(net(x), y) * (len(y) / n)
            loss.backward()
        total += loss.detach().float()
    return total, n


def _train_subset(train: Dataset, n_val: int) -> Dataset:
    """Training examples re-evaluated each epoch: as many as the validation split (at most 1000), so the
    train/val gap compares numbers of the same precision."""
    n = min(len(train), n_val, _TRAIN_EVAL)
    if isinstance(train, TensorDataset):
        return TensorDataset(*(t[:n] for t in train.tensors))
    return Subset(train, range(n))


def _print_start(hp: Config, task: Task, run_id, spe: int, total: int, warmup: int, factor) -> None:
    points = sorted({0, warmup, total // 4, total // 2, 3 * total // 4, total - 1})
    lrs = ", ".join(f"{s}: {hp.lr * factor(s):.3g}" for s in points)
    who = f"run {run_id}" if run_id is not None else "run"
    print(f"{who}: {task.name}/{hp.model}, {hp.optimizer} lr {hp.lr:g}, {hp.schedule} schedule over {total} "
          f"optimizer updates ({spe} per epoch, batch {hp.batch_size}); warmup {warmup} updates")
    print(f"  lr at step {lrs}")


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
    `dist` (from `trainlab.distributed.init()` under torchrun) trains data-parallel: DDP, each rank on its
    shard, decisions agreed across ranks, and only rank 0 writes (run row, metrics, checkpoints, output);
    the other ranks return the same status with `run_id` but no test result or checkpoint path.
    `loggers` (TensorBoard, MLflow, CSV: `trainlab.export`) get the run's metrics at the loop's existing
    read points (every few dozen steps, each epoch), never per step; see `train.loggers`.
    The run's summary keeps "startup": the seconds from fit() to the first step and that step's own cost.
    """
    started = time.perf_counter()
    ddp = dist is not None and dist.ddp
    rank, world = (dist.rank, dist.world_size) if ddp else (0, 1)
    if rank:
        store, quiet, evaluate_test, loggers = None, True, False, ()
    device = dist.device if ddp else resolve_device(hp.device)
    task = task or load_task(hp)
    callbacks = [*callbacks_for(hp, store), *callbacks]  # EMA and snapshots, when hp asks for them
    torch.manual_seed(hp.seed)
    model = (model or task.build_model()).to(device)
    if ddp:  # BatchNorm policy: per-device statistics, or SyncBatchNorm when hp.sync_bn
        model = apply_sync_bn(model, dist, hp.sync_bn)
    bn_warning = batchnorm_warning(model, hp.batch_size, world, hp.sync_bn)
    if bn_warning and not rank:
        warnings.warn(bn_warning, stacklevel=2)
    dynamo_before, t_optimizer = "torch._dynamo" in sys.modules, time.perf_counter()
    optimizer = optimizer or build_optimizer(hp, model)
    optimizer_s = time.perf_counter() - t_optimizer  # torch imports torch._dynamo with the first optimizer (seconds)
    dynamo_s = optimizer_s if not dynamo_before and "torch._dynamo" in sys.modules else 0.0
    net = wrap_ddp(model, dist) if ddp else model  # forward/backward through net; all else on the plain model
    batches = _Batches(task.train, hp.batch_size, device, rank, world)
    accum = hp.accum_steps
    spe = math.ceil(len(batches) / accum)  # optimizer updates per epoch
    factor, total, warmup = lr_schedule(hp, spe, world)
    factor = schedule or factor
    n_epochs = math.ceil(total / spe)
    val_data = dataset_tensors(task.val, device)
    train_eval = dataset_tensors(_train_subset(task.train, len(task.val)), device)
    if ddp:  # each rank evaluates its share of the examples; reduce_means combines the results
        val_data, train_eval = shard_tensors(val_data, rank, world), shard_tensors(train_eval, rank, world)
    stopper = EarlyStopping(hp.early_stop_metric, hp.mode, hp.patience, hp.min_delta)
    ratio = UpdateRatio(model, hp.monitor_every if not rank else 0)
    ratio_log: dict[str, list[float]] = {n: [] for n in judged_parameters(model)}  # for the end-of-run warnings
    for g in optimizer.param_groups:
        g.setdefault("base_lr", g["lr"])
    amp = device.type == "cuda"
    loss_fn = task.loss
    if hp.label_smoothing:
        base_loss = loss_fn
        loss_fn = lambda out, y: base_loss(out, y, label_smoothing=hp.label_smoothing)  # noqa: E731

    run_id = resume
    scaling = scale_lr(hp, world, spe)  # the resolved lr, global batch and warmup, stored with the run
    if store is not None and resume is None:
        run_id = store.create_run(name=name or f"{task.name}-{hp.model}", hparams=hp.model_dump(mode="json"),
                                  seed=hp.seed, study=study, kind=kind)
        store.update_run(run_id, summary={**scaling.summary(), "launch_id": dist.launch_id if ddp else None})
    if ddp:  # rank 0 created the one row; every rank needs its id
        run_id = broadcast_object(dist, run_id)
    run_dir = Path(runs_dir).resolve() / f"run-{run_id}" if (store is not None and checkpoints) else None
    buffer = MetricBuffer(store, run_id) if store is not None else None
    if loggers:  # the same rows, also handed to the loggers when the loop reads them
        buffer = LoggedBuffer(buffer, loggers)
        run_info = {"id": run_id, "name": name or f"{task.name}-{hp.model}", "study": study, "kind": kind,
                    "hparams": hp.model_dump(mode="json"), "status": "running",
                    "store": hide_password(store.url) if store is not None else None}
        for lg in loggers:
            lg.start(run_info)
    state = LoopState(hp, task, model, optimizer, device, run_id, run_dir, spe, total, rank=rank, world_size=world)

    step, start_epoch, start_batch = 0, 0, 0
    reference = None
    best_state: dict[str, torch.Tensor] | None = None
    history: dict[str, list[float]] = {}
    if resume is not None:
        if run_dir is None and not rank:
            raise ConfigError(f"resume: run {resume} needs a store and checkpoints")
        ckpt = load_checkpoint(run_dir / "last.pt", map_location="cpu" if ddp else device) if not rank else None
        if ddp:  # rank 0 reads the checkpoints (no shared disk needed); every rank resumes from them
            best = load_checkpoint(run_dir / "best.pt")["model"] if not rank and (run_dir / "best.pt").is_file() else None
            ckpt, best_state = broadcast_object(dist, (ckpt, best))
        if ckpt.get("world_size", 1) != world:  # steps, epoch positions and the lr depend on it
            raise ConfigError(f"resume: run {resume} was trained by {ckpt.get('world_size', 1)} process(es); "
                              f"resume it with as many (trainlab train --nproc K), got {world}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, start_epoch, start_batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        stopper.load_state_dict(ckpt["early_stopping"])
        reference, history = ckpt["reference"], ckpt["history"]
        for cb in callbacks:
            if hasattr(cb, "load_state_dict") and type(cb).__name__ in ckpt.get("callbacks", {}):
                cb.load_state_dict(ckpt["callbacks"][type(cb).__name__])
        if not ddp and (run_dir / "best.pt").is_file():
            best_state = load_checkpoint(run_dir / "best.pt", map_location=device)["model"]
        set_rng_state(ckpt["rng"])
        if store is not None:
            store.delete_metrics_after(run_id, step - 1)
            store.update_run(run_id, status="running", reason=None)

    groups = optimizer.param_groups  # after any load_state_dict, which replaces the group dicts
    writer = AsyncCheckpointer()

    def checkpoint(path_name: str, epoch: int, batch: int, also: str | None = None) -> Path | None:
        if run_dir is None:
            return None
        if buffer is not None:
            buffer.flush()  # every metric row up to the checkpoint's step is stored before the checkpoint lands
        payload = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
            "batch": batch, "early_stopping": stopper.state_dict(), "rng": rng_state(),
            "reference": reference, "history": history, "hparams": hp.model_dump(mode="json"),
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in callbacks if hasattr(cb, "state_dict")},
            "world_size": world,
        }
        return writer.save(payload, run_dir / path_name, *([run_dir / also] if also else []))

    if ddp and resume is None:  # a torchrun restart resumes from last.pt, so there is one from the start
        checkpoint("last.pt", 0, 0)
    if not quiet:
        _print_start(hp, task, run_id, spe, total, warmup, factor)
        if ddp or hp.lr_scaling != "none" or hp.accum_steps > 1:
            print(f"  {scaling.describe()}")
    progress = None  # one bar per epoch (loss, lr), then a line with the epoch's validation results
    if not quiet:
        from tqdm.auto import tqdm

    status, reason = "completed", None
    pending: list[torch.Tensor] = []
    pending_from = step
    last_save = last_flush = time.monotonic()
    startup: dict[str, float] = {}
    first_step_end, first_at = None, 0
    loop_started = time.perf_counter()

    def drain(epoch: int, collective: bool = True) -> str | None:
        """Read the buffered per-step losses: divergence check, metrics, progress.

        Under DDP the losses are averaged across ranks first (one all-reduce per drain), so train/loss is the
        global batch's loss and every rank judges divergence on the same numbers: no rank is left waiting.
        """
        nonlocal pending, pending_from, reference
        if not pending:
            return None
        values = torch.stack(pending).float()
        values = (mean_across(dist, values) if ddp and collective else values).tolist()
        first = pending_from
        if reference is None:
            reference = max(values[0], math.log(max(task.num_classes, 2)))
        lrs = [hp.lr * factor(first + i) for i in range(len(values))]
        if buffer is not None:
            for i, (v, lr) in enumerate(zip(values, lrs)):
                buffer.add(first + i, epoch + 1, "train/loss", v)
                buffer.add(first + i, epoch + 1, "lr", lr)
        if progress is not None:
            progress.update(len(values))
            progress.set_postfix(loss=f"{values[-1]:.4f}", lr=f"{lrs[-1]:.2e}", refresh=False)
        pending, pending_from = [], first + len(values)
        if loggers:
            buffer.publish()
        return divergence(values, first, reference, lrs)

    def save_due() -> bool:
        """Time for a mid-epoch last.pt? Under DDP rank 0's clock decides for all ranks, every _DRAIN steps."""
        due = time.monotonic() - last_save > 60 * hp.checkpoint_every_minutes
        if not ddp:
            return due
        return step % _DRAIN == 0 and first_decision(dist, True if due and not rank else None) is not None

    try:
        for epoch in range(start_epoch, n_epochs):
            state.epoch = epoch
            t0 = time.perf_counter()
            seen = 0
            model.train()
            stop: Stop | None = None
            order = epoch_order(batches.n, hp.seed, epoch)
            if not quiet:
                if progress is not None:
                    progress.close()
                progress = tqdm(total=min(spe * (epoch + 1), total) - step, desc=f"epoch {epoch + 1}/{n_epochs}",
                                unit="step", dynamic_ncols=True, leave=False)
            micro = batches.iterate(order, start_batch)  # start_batch counts micro-batches
            for x, y in (micro if accum == 1 else _grouped(micro, accum)):
                if step >= total:
                    break
                f = factor(step)
                for g in groups:
                    g["lr"] = g["base_lr"] * f
                if accum > 1:  # x, y: lists of this update's micro-batches
                    loss, n = _accumulate(net, loss_fn, x, y, optimizer, amp)
                else:
                    n = len(y)
                    if amp:
                        with torch.autocast("cuda", dtype=torch.bfloat16):
                            loss = loss_fn(net(x), y)
                    else:
                        loss = loss_fn(net(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                measured = ratio.before(step)
                if hp.grad_clip is not None:
                    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
                elif measured:
                    gnorm = grad_norm(model)
                optimizer.step()
                if measured:
                    ratios = ratio.after()
                    for pname, values in ratio_log.items():
                        values.append(ratios[pname])
                    if buffer is not None:
                        for pname, r in ratios.items():
                            buffer.add(step, epoch + 1, f"ratio/{pname}", r)
                        buffer.add(step, epoch + 1, "grad_norm", float(gnorm))
                pending.append(loss.detach())
                step += 1
                seen += n
                if first_step_end is None:  # once: what torch's first step costs (lazy init, allocation)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    first_step_end, first_at = time.perf_counter(), step
                    startup = {"setup_s": loop_started - started, "optimizer_s": optimizer_s,
                               "torch_dynamo_import_s": dynamo_s, "first_step_s": first_step_end - loop_started}
                if len(pending) >= _DRAIN:
                    why = drain(epoch)
                    if why:
                        stop = Stop("diverged", why)
                        break
                if callbacks:
                    state.step = step
                    for cb in callbacks:
                        stop = cb.on_step_end(state) or stop
                    if ddp:  # a stop that any rank's callback asks for is taken by every rank, at this step
                        stop = first_decision(dist, stop)
                    if stop:
                        break
                if hp.checkpoint_every_minutes and save_due():
                    batch = start_batch + math.ceil(seen / hp.batch_size)
                    drain(epoch)
                    checkpoint("last.pt", epoch, batch)
                    last_save = time.monotonic()
            start_batch = 0
            why = drain(epoch)
            if why and stop is None:
                stop = Stop("diverged", why)
            if stop is not None and stop.status == "diverged":
                status, reason = stop.status, stop.reason
                break
            seconds = time.perf_counter() - t0
            if first_step_end is not None and "later_step_s" not in startup and step > first_at:
                startup["later_step_s"] = (t0 + seconds - first_step_end) / (step - first_at)
                if not quiet:
                    dynamo = (f", of which {dynamo_s:.2f} s building the optimizer (torch imports torch._dynamo "
                              "with the first one)") if dynamo_s > 0.05 else ""
                    print(f"  first step {startup['setup_s'] + startup['first_step_s']:.2f} s after fit() began: "
                          f"setup {startup['setup_s']:.2f} s{dynamo}; the step itself "
                          f"{startup['first_step_s'] * 1e3:.0f} ms (later steps {startup['later_step_s'] * 1e3:.1f} ms)")
            val = evaluate(model, task.val, loss_fn=task.loss, device=device, data=val_data)
            tr = evaluate(model, task.train, loss_fn=task.loss, device=device, data=train_eval)
            if ddp:  # sums over every rank's shard: the same numbers on every rank, so decisions agree
                val, tr = reduce_means(dist, val, len(val_data[1])), reduce_means(dist, tr, len(train_eval[1]))
            metrics = {"val/loss": val["loss"], "val/acc": val["acc"], "train/acc": tr["acc"],
                       "train/loss_eval": tr["loss"], "epoch_time_s": seconds,
                       "samples_per_s": seen * world / seconds if seconds > 0 else float("nan")}
            state.step, state.metrics = step, metrics
            for cb in callbacks:
                stop = cb.on_epoch_end(state) or stop
            for k, v in state.metrics.items():
                history.setdefault(k, []).append(v)
                if buffer is not None:
                    buffer.add(step - 1, epoch + 1, k, v)
            if hp.early_stop_metric not in state.metrics:
                raise ConfigError(f"early_stop_metric: not measured by this run, got {hp.early_stop_metric!r}; "
                                  f"choose one of {', '.join(sorted(state.metrics))}")
            decision = stopper.update(state.metrics[hp.early_stop_metric], epoch + 1)
            if decision.improved:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if buffer is not None and (run_dir is not None or time.monotonic() - last_flush >= _FLUSH_S):
                # one transaction: the epoch's rows and the run's progress (before the checkpoint lands)
                buffer.flush(epochs=epoch + 1, best_metric=stopper.best, best_epoch=stopper.best_epoch)
                last_flush = time.monotonic()
            if decision.improved:  # best.pt lands first: a last.pt that names a best epoch always has its best.pt
                checkpoint("best.pt", epoch + 1, 0, also="last.pt")
            else:
                checkpoint("last.pt", epoch + 1, 0)
            last_save = time.monotonic()
            if progress is not None:
                progress.close()
                progress = None
                print(f"epoch {epoch + 1}/{n_epochs}  val/acc {val['acc']:.4f}  val/loss {val['loss']:.4f}  "
                      f"train/acc {tr['acc']:.4f}  lr {hp.lr * factor(max(step - 1, 0)):.2e}  "
                      f"{metrics['samples_per_s']:.0f} samples/s")
            final = Stop("completed", decision.reason) if decision.stop else stop
            if ddp:  # the lowest rank that stops (early stopping or a callback) decides for all: none waits
                final = first_decision(dist, final)
            if final is not None:
                status, reason = final.status, final.reason
                break
    except KeyboardInterrupt:
        drain(state.epoch, collective=False)
        status = "stopped"
        reason = f"interrupted at step {step}" + (f"; resume with: trainlab train --resume {run_id}" if run_dir else "")
    except BaseException as err:
        writer.close()
        if store is not None:
            if buffer is not None:
                try:
                    buffer.flush()
                except Exception:
                    pass
            store.finish_run(run_id, "failed", reason=f"{type(err).__name__}: {err}"[:500])
        for lg in loggers:
            try:
                lg.finish({**run_info, "status": "failed", "reason": f"{type(err).__name__}: {err}"[:500]})
            except Exception:
                pass
        if progress is not None:
            progress.close()
        raise
    if progress is not None:
        progress.close()
    writer.close()

    layer_warnings = ratio_warnings(ratio_log)
    if best_state is not None:
        model.load_state_dict(best_state)
    state.step = step
    for cb in callbacks:
        cb.on_fit_end(state)
    test = evaluate(model, task.test, loss_fn=task.loss, device=device) if evaluate_test else None
    epochs = len(history.get("val/acc", []))  # completed, resumed ones included (history is checkpointed)
    best_path = str(run_dir / "best.pt") if run_dir is not None and (run_dir / "best.pt").is_file() else None
    if store is not None:
        buffer.flush()
        summary = {"steps": step, "seconds": time.perf_counter() - started, "num_classes": task.num_classes,
                   "ratio_warnings": [w.to_dict() for w in layer_warnings],
                   "startup": {k: round(v, 4) for k, v in startup.items()}}
        if test is not None:
            summary.update({"test/acc": test["acc"], "test/loss": test["loss"]})
        store.finish_run(run_id, status, reason=reason, best_metric=stopper.best, best_epoch=stopper.best_epoch,
                         epochs=epochs, checkpoint=best_path, summary=summary)
    if loggers:
        buffer.publish()
        end = {"status": status, "reason": reason, "best_metric": stopper.best, "best_epoch": stopper.best_epoch,
               "epochs": epochs, "summary": {"steps": step, **({"test/acc": test["acc"], "test/loss": test["loss"]}
                                                               if test else {})}}
        for lg in loggers:
            lg.finish({**run_info, **end})
    if not quiet:
        tail = f", test/acc {test['acc']:.4f}" if test else ""
        best = f"best {hp.early_stop_metric} {stopper.best:.4f} at epoch {stopper.best_epoch}" \
            if stopper.best is not None else "no validation"
        print(f"{status}: {best}{tail}" + (f" ({reason})" if reason else ""))
        for w in layer_warnings:
            print(f"warning: {w.message}")
    return FitResult(run_id, status, reason, stopper.best, stopper.best_epoch, epochs,
                     step, test, history, best_path, model, time.perf_counter() - started)
