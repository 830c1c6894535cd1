"""The per-step half of the loop: one epoch of optimizer updates.

Per update: the scheduled learning rate, forward and loss (bfloat16 autocast on CUDA), backward (several
micro-batches under gradient accumulation), optional clipping, the optimizer step, the update/weight ratios
at the monitor's cadence, the callbacks' `on_step_end`, a mid-epoch `last.pt` when due. The loss stays on
the device: `pending` holds the detached losses and `read_losses` reads them every `DRAIN` steps (one
synchronization, one all-reduce under DDP), writes their rows and checks for divergence: a loss over 10x the
initial one, or NaN/Inf, which a device-side flag (`first_nonfinite`, set per step without a sync) names
exactly; the run stops at that drain, at most DRAIN - 1 updates after the bad one. Nothing here
synchronizes with the device, builds objects or writes to the store per step beyond what a hand-written
loop does.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import nn

from trainlab.config import Config
from trainlab.monitor import UpdateRatio, divergence, grad_norm, judged_parameters
from trainlab.parallel.ddp import Dist, first_decision, mean_across
from trainlab.tasks import Task
from trainlab.train.callbacks import LoopState, Stop
from trainlab.train.data import Batches, accumulate, epoch_order, grouped
from trainlab.train.plan import RunPlan
from trainlab.train.record import Recorder
from trainlab.train.resume import Checkpoints, Position

__all__ = ["Steps", "DRAIN"]

DRAIN = 50  # steps between reads of the per-step losses (divergence check, metrics, progress)


class Steps:
    """The per-step half of the loop: an epoch of optimizer updates. Losses stay on the device in `pending`
    and are read every DRAIN steps (`read_losses`); `ratio_log` keeps the judged layers' update/weight
    ratios for the end-of-run warnings."""

    def __init__(self, net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, hp: Config,
                 plan: RunPlan, batches: Batches, rec: Recorder, callbacks: Sequence, state: LoopState,
                 ckpts: Checkpoints, dist: Dist | None, step: int, quiet: bool):
        self.net, self.model, self.optimizer, self.hp, self.plan, self.rec = net, model, optimizer, hp, plan, rec
        self.callbacks, self.state, self.ckpts, self.quiet, self.num_classes = callbacks, state, ckpts, quiet, task.num_classes
        self.dist = dist if dist is not None and dist.ddp else None
        self.batches = batches
        self.loss_fn = functools.partial(task.loss, label_smoothing=hp.label_smoothing) if hp.label_smoothing else task.loss
        self.amp = batches.device.type == "cuda"
        self.ratio = UpdateRatio(model, hp.monitor_every if not state.rank else 0)
        self.ratio_log: dict[str, list[float]] = {n: [] for n in judged_parameters(model)}
        self.pending: list[torch.Tensor] = []
        # The first update whose loss was NaN/Inf, kept on the device (-1: none yet): set without a host sync
        # and read with the losses at the next drain, which names that update and its lr and stops the run.
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=batches.device)
        self.first = step  # the update of pending[0]
        self.bar = None  # one progress bar per epoch (loss, lr), unless quiet

    def epoch(self, epoch: int, pos: Position) -> tuple[int, Stop | None]:
        """Train `epoch` from update `pos.step` and micro-batch `pos.batch`; (examples seen, a stop or None)."""
        hp, net, model, optimizer, loss_fn, amp, ratio, pending = (self.hp, self.net, self.model, self.optimizer,
                                                                    self.loss_fn, self.amp, self.ratio, self.pending)
        callbacks, state, dist, ckpts = self.callbacks, self.state, self.dist, self.ckpts
        accum, clip, minutes = hp.accum_steps, hp.grad_clip, hp.checkpoint_every_minutes
        groups, factor, total = optimizer.param_groups, self.plan.factor, self.plan.total_updates
        step, start, seen, stop = pos.step, pos.batch, 0, None
        model.train()
        if not self.quiet:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=min(self.plan.updates_per_epoch * (epoch + 1), total) - step, unit="step",
                            desc=f"epoch {epoch + 1}/{self.plan.epochs}", dynamic_ncols=True, leave=False)
        micro = self.batches.iterate(epoch_order(self.batches.n, hp.seed, epoch), start)  # start: a micro-batch
        try:
            for x, y in (micro if accum == 1 else grouped(micro, accum)):
                if step >= total:
                    break
                f = factor(step)
                for g in groups:
                    g["lr"] = g["base_lr"] * f
                if accum > 1:  # x, y: lists of this update's micro-batches
                    loss, n = accumulate(net, loss_fn, x, y, optimizer, amp)
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
                if clip is not None:
                    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                elif measured:
                    gnorm = grad_norm(model)
                optimizer.step()
                if measured:
                    self._ratios(step, epoch, gnorm)
                pending.append(loss.detach())
                self._flag(loss, step)
                step += 1
                seen += n
                if len(pending) >= DRAIN:
                    why = self.read_losses(epoch, pos)
                    if why:
                        stop = Stop("diverged", why)
                        break
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
            why = self.read_losses(epoch, pos)
            if why and stop is None:
                stop = Stop("diverged", why)
        finally:
            pos.step = step
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        return seen, stop

    def _flag(self, loss: torch.Tensor, step: int) -> None:
        """Remember `step` on the device if its loss is the first non-finite one (no host synchronization)."""
        f = self.first_nonfinite
        self.first_nonfinite = torch.where((f < 0) & ~torch.isfinite(loss.detach()), step, f)

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
        if not self.pending:
            return None
        values = torch.stack(self.pending).float()
        self.pending.clear()
        bad = -1
        if self.dist is not None and collective:  # the averaged losses: NaN on any rank is NaN on all, same step
            values = mean_across(self.dist, values).tolist()
        else:  # one transfer: the losses and the device-side flag together
            both = torch.cat([values.double(), self.first_nonfinite.double().reshape(1)]).tolist()
            values, bad = both[:-1], int(both[-1])
        first, self.first = self.first, self.first + len(values)
        if pos.reference is None:
            pos.reference = max(values[0], math.log(max(self.num_classes, 2)))
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
