"""The per-step half of the loop: one epoch of optimizer updates.

Per update: the scheduled learning rate, forward and loss (autocast to the run's precision, see
`precision.Execution`), backward (several micro-batches under gradient accumulation; the loss scaled by
fp16's GradScaler, the gradients unscaled before clipping), optional clipping, the optimizer step, the update/weight ratios
at the monitor's cadence, the callbacks' `on_step_end`, a mid-epoch `last.pt` when due. The loss stays on
the device: `pending` holds the detached losses and `read_losses` reads them every `DRAIN` steps (one
synchronization, one all-reduce under DDP), writes their rows and checks for divergence: a loss over 10x the
initial one, or NaN/Inf. Every update's loss stays on the device until that read, so the first NaN/Inf is
named at its exact update, with no per-step work or sync; the run stops at that read, at most DRAIN - 1
updates after the bad one. A `Halt` (SIGTERM,
the store's memory bound) is read after every update, under DDP at each read of the losses (its all-reduce
carries the flag, so every rank stops at the same update): the epoch stops there, `last.pt` is written at
that exact position, and the run ends "stopped", resumable. Nothing here
synchronizes with the device, builds objects or writes to the store per step beyond what a hand-written
loop does.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
from torch import nn

from trainlab.config import Config
from trainlab.monitor import UpdateRatio, divergence, grad_norm, judged_parameters
from trainlab.parallel.ddp import Dist, any_rank, first_decision, mean_across
from trainlab.tasks import Task
from trainlab.train.callbacks import LoopState, Stop
from trainlab.train.data import Batches, accumulate, epoch_order, grouped
from trainlab.train.halt import Halt, resume_hint
from trainlab.train.pipelined import PipelineRun
from trainlab.train.plan import RunPlan
from trainlab.train.precision import Execution
from trainlab.train.record import Recorder
from trainlab.train.resume import Checkpoints, Position
from trainlab.train.startup import Startup

__all__ = ["Steps", "DRAIN"]

DRAIN = 50  # steps between reads of the per-step losses (divergence check, metrics, progress)


class Steps:
    """The per-step half of the loop: an epoch of optimizer updates. Losses stay on the device in `pending`
    and are read every DRAIN steps (`read_losses`); `ratio_log` keeps the judged layers' update/weight
    ratios for the end-of-run warnings."""

    def __init__(self, net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, hp: Config,
                 plan: RunPlan, batches: Batches, rec: Recorder, callbacks: Sequence, state: LoopState,
                 ckpts: Checkpoints, dist: Dist | None, step: int, quiet: bool, halt: Halt | None = None, *,
                 execution: Execution | None = None, scaler: torch.amp.GradScaler | None = None,
                 pipe: PipelineRun | None = None, startup: Startup | None = None):
        self.net, self.model, self.optimizer, self.hp, self.plan, self.rec = net, model, optimizer, hp, plan, rec
        self.callbacks, self.state, self.ckpts, self.quiet, self.num_classes = callbacks, state, ckpts, quiet, task.num_classes
        self.dist = dist if dist is not None and dist.ddp else None
        self.batches = batches
        self.loss_fn = functools.partial(task.loss, label_smoothing=hp.label_smoothing) if hp.label_smoothing else task.loss
        self.execution = execution or Execution("fp32", "as configured", batches.device.type)
        self.scaler, self.pipe = scaler, pipe  # pipe: this rank's stages under parallel=pipeline
        judged = pipe.own if pipe is not None else model  # a pipeline rank judges the stages it trains
        self.ratio = UpdateRatio(judged, hp.monitor_every if not state.rank else 0)
        self.ratio_log: dict[str, list[float]] = {n: [] for n in judged_parameters(judged)}
        self.pending: list[torch.Tensor] = []
        # The first update whose loss was NaN/Inf, kept on the device (-1: none yet): set without a host sync
        # and read with the losses at the next drain, which names that update and its lr and stops the run.
        self.first = step  # the update of pending[0]
        self.bar = None  # one progress bar per epoch (loss, lr), unless quiet
        self.halt = halt or Halt()
        self.halted = False       # every rank agreed to halt (at the last read of the losses)
        self.interrupted = False  # the run halted mid-epoch: last.pt holds the exact position, no epoch end
        self.startup = startup  # the first update's end is noted once (startup.Startup)
        # `minutes`: refit(step) at each read of the losses -> the run's new plan when its rest no longer fits
        self.refit: Callable[[int], RunPlan | None] | None = None
        self.guard = None  # threads.ThreadGuard: a run at several threads drops to one when other jobs slow it

    def epoch(self, epoch: int, pos: Position) -> tuple[int, Stop | None]:
        """Train `epoch` from update `pos.step` and micro-batch `pos.batch`; (examples seen, a stop or None)."""
        hp, net, model, optimizer, loss_fn, ratio, pending = (self.hp, self.net, self.model, self.optimizer,
                                                               self.loss_fn, self.ratio, self.pending)
        autocast, scaler, channels_last, pipe = self.execution.autocast, self.scaler, self.execution.channels_last, self.pipe
        callbacks, state, dist, ckpts, halt = self.callbacks, self.state, self.dist, self.ckpts, self.halt
        solo = dist is None and pipe is None  # one process reads the halt after every update; ranks agree in read_losses
        accum, clip, minutes = hp.accum_steps, hp.grad_clip, hp.checkpoint_every_minutes
        groups, factor, total = optimizer.param_groups, self.plan.factor, self.plan.total_updates
        step, start, seen, stop = pos.step, pos.batch, 0, None
        first = self.startup is not None and self.startup.waiting  # note the first update's end, once
        model.train()
        if not self.quiet:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=min(self.plan.updates_per_epoch * (epoch + 1), total) - step, unit="step",
                            desc=f"epoch {epoch + 1}/{self.plan.epochs}", dynamic_ncols=True, leave=False)
        micro = self.batches.iterate(epoch_order(self.batches.n, hp.seed, epoch), start, epoch)  # start: a micro-batch
        try:
            for x, y in (micro if accum == 1 else grouped(micro, accum)):
                if step >= total:
                    break
                f = factor(step)
                for g in groups:
                    g["lr"] = g["base_lr"] * f
                if channels_last:
                    x = [_cl(t) for t in x] if accum > 1 else _cl(x)
                if pipe is not None:  # this rank's stages, forward and backward, over the pipeline's micro-batches
                    optimizer.zero_grad(set_to_none=True)
                    loss, n = pipe.step(x, y), len(y)
                elif accum > 1:  # x, y: lists of this update's micro-batches
                    loss, n = accumulate(net, loss_fn, x, y, optimizer, autocast, scaler)
                else:
                    n = len(y)
                    with autocast():
                        loss = loss_fn(net(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    (loss if scaler is None else scaler.scale(loss)).backward()
                if scaler is not None:  # true gradients for clipping and the gradient norm
                    scaler.unscale_(optimizer)
                measured = ratio.before(step)
                if clip is not None:
                    gnorm = pipe.clip(clip) if pipe is not None else torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                elif measured:
                    gnorm = grad_norm(model)
                if scaler is None:
                    optimizer.step()
                else:  # skips the step when the fp16 gradients overflowed, and adapts the scale
                    scaler.step(optimizer)
                    scaler.update()
                if measured:
                    self._ratios(step, epoch, gnorm)
                pending.append(loss.detach())
                step += 1
                seen += n
                if first:
                    first = False
                    self.startup.first_step(step, self.batches.device)
                if len(pending) >= DRAIN:
                    why = self.read_losses(epoch, pos)
                    if why:
                        stop = Stop("diverged", why)
                        break
                    if self.halted:
                        stop = self._interrupt(epoch, pos, step, start, seen)
                        break
                    if self.guard is not None:
                        self.guard.check(step)
                    if self.refit is not None and (fitted := self.refit(step)) is not None:
                        factor, total = fitted.factor, fitted.total_updates  # `minutes`: shortened mid-epoch
                if callbacks:
                    state.step = step
                    for cb in callbacks:
                        stop = cb.on_step_end(state) or stop
                    if dist is not None:  # a stop that any rank's callback asks for is taken by every rank, now
                        stop = first_decision(dist, stop)
                    if stop:
                        break
                if minutes and ckpts.due(step, dist, DRAIN):
                    pos.step, pos.batch = step, start + math.ceil(seen / hp.batch_size)
                    self.read_losses(epoch, pos)
                    ckpts.save("last.pt", pos)
                if solo and halt.reason is not None:
                    stop = self._interrupt(epoch, pos, step, start, seen)
                    break
            why = self.read_losses(epoch, pos)
            if why and stop is None:
                stop = Stop("diverged", why)
            if pipe is not None:  # the whole model on every rank, for validation and the epoch's checkpoint
                pipe.sync()
        finally:
            pos.step = step
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        return seen, stop

    def _interrupt(self, epoch: int, pos: Position, step: int, start: int, seen: int) -> Stop:
        """Halt after update `step`: the losses read, `last.pt` written at this exact position (the next
        micro-batch of `epoch`), and the stop to record."""
        pos.step, pos.batch = step, start + math.ceil(seen / self.hp.batch_size)
        self.read_losses(epoch, pos)
        self.ckpts.save("last.pt", pos)
        self.interrupted = True
        why = self.halt.reason or "stopped by another rank"
        return Stop("stopped", f"{why} at step {step}" + resume_hint(self.state.run_id, self.ckpts.run_dir,
                                                                     self.state.world_size))
    def _ratios(self, step: int, epoch: int, gnorm) -> None:
        ratios = self.ratio.after()
        for name, values in self.ratio_log.items():
            values.append(ratios[name])
        self.rec.ratios(step, epoch, ratios, gnorm)

    def read_losses(self, epoch: int, pos: Position, collective: bool = True) -> str | None:
        """Read the pending per-step losses: rows, progress, and the divergence check (its reason, or None).

        Under DDP the losses are averaged across ranks first (one all-reduce per read), so train/loss is the
        global batch's loss and every rank judges divergence on the same numbers: no rank is left waiting.
        """
        if self.halt.reason is None and (why := self.rec.halt_reason()):
            self.halt.stop(why)
        if not self.pending:
            return None
        values = torch.stack(self.pending).float()
        self.pending.clear()
        if self.pipe is not None and not collective:  # only the last rank has the losses, and no rank may wait
            return None
        if self.pipe is not None:  # the loss lives on the last rank; the halt is agreed by every rank
            values = self.pipe.losses(values).tolist()
            self.halted = any_rank(self.pipe.dist, self.halt.reason is not None)
        elif self.dist is not None and collective:  # the halt flag rides on the losses' all-reduce: every rank agrees
            # the averaged losses: NaN on any rank is NaN on all, at the same step
            values = mean_across(self.dist, torch.cat([values, values.new_tensor([float(self.halt.reason is not None)])]))
            values, self.halted = values[:-1].tolist(), values[-1].item() > 0
        else:
            values, self.halted = values.tolist(), self.halt.reason is not None
        first, self.first = self.first, self.first + len(values)
        # every update's loss is kept on the device until this read: the first NaN/Inf is found at its exact step
        bad = next((first + i for i, v in enumerate(values) if not math.isfinite(v)), -1)
        if pos.reference is None:
            # log C for a classifier (the loss of a uniform guess); a regression loss has only its own start
            pos.reference = max(values[0], math.log(self.num_classes) if self.num_classes >= 2 else 0.0)
        base, factor = self.plan.base_lr, self.plan.factor  # plan.lr(step), without a call per step
        lrs = [base * factor(s) for s in range(first, first + len(values))]
        self.rec.losses(first, epoch, values, lrs)
        if self.bar is not None:
            self.bar.update(len(values))
            self.bar.set_postfix(loss=f"{values[-1]:.4f}", lr=f"{lrs[-1]:.2e}", refresh=False)
        cut = bad - first if bad >= first else len(values)
        why = divergence(values[:cut], first, pos.reference, lrs[:cut])  # an explosion before the NaN/Inf comes first
        if why is None and cut < len(values):  # the flag's update: the first NaN/Inf loss, with its lr
            why = divergence(values[cut:cut + 1], bad, pos.reference, lrs[cut:cut + 1])
        return why


def _cl(x: torch.Tensor) -> torch.Tensor:
    """An image batch in channels-last memory format (a no-op when it already is, or is not 4-D)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
