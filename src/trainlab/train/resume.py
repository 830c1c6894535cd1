"""Exact resume: what a run's checkpoints hold, writing them, and starting again from them.

`last.pt` holds everything the run's future depends on: the weights, the optimizer, where the run is
(`Position`: update, epoch, micro-batch), the early-stopping state, the RNG, the divergence reference, the
metric history, the callbacks' state and the hyperparameters. `best.pt` is the same at the best epoch.
Resuming from `last.pt` gives the result of an uninterrupted run (the data order is a function of the
epoch alone, see `data.epoch_order`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from trainlab.checkpoint import (AsyncCheckpointer, CheckpointWriteError, load_checkpoint, plain_state_dict, rng_state,
                                 set_rng_state, state_for)
from trainlab.config import Config, ConfigError
from trainlab.parallel.ddp import Dist, broadcast_object, first_decision
from trainlab.train.early_stopping import EarlyStopping

__all__ = ["Position", "Checkpoints", "resume_run"]


@dataclass
class Position:
    """Where a run is: all that resuming needs beyond the weights, the optimizer and the callbacks."""

    step: int = 0           # optimizer updates done
    epoch: int = 0          # the epoch in progress (0-based)
    batch: int = 0          # the micro-batch of `epoch` to start from
    reference: float | None = None  # the first loss (at least log C): divergence is judged against it
    history: dict[str, list[float]] = field(default_factory=dict)   # each epoch's metrics
    best_state: dict[str, torch.Tensor] | None = None  # the weights of the best epoch (best.pt; not in last.pt)


class Checkpoints:
    """Writes `last.pt` and `best.pt` into `run_dir` on a background thread (`AsyncCheckpointer`); nothing
    when `run_dir` is None. `flush` runs before each write, so the metric rows up to a checkpoint's step are
    stored before it lands. A write that failed raises its CheckpointWriteError at the next `save` (the next
    epoch's end, or mid-epoch checkpoint) or at `close`; `on_disk()` says what the files hold. `scaler`
    (fp16's GradScaler) is saved with them. `gather` (pipeline parallelism: a collective every rank runs)
    returns the whole model's and optimizer's state in place of this process's own."""

    def __init__(self, run_dir: Path | None, hp: Config, model: nn.Module, optimizer: torch.optim.Optimizer,
                 stopper: EarlyStopping, callbacks: Sequence, world_size: int, flush: Callable[[], None],
                 scaler: torch.amp.GradScaler | None = None, gather: Callable[[], tuple[dict, dict]] | None = None):
        self.run_dir, self.hp, self.model, self.optimizer = run_dir, hp, model, optimizer
        self.stopper, self.callbacks, self.world_size, self.flush = stopper, callbacks, world_size, flush
        self.scaler, self.gather = scaler, gather
        self.writer = AsyncCheckpointer()
        self.saved_at = time.monotonic()

    def prepare(self) -> None:
        """Make `run_dir` and check that a file can be written in it, before the first epoch: a runs folder
        that is a file or read-only is one line at once (CheckpointWriteError, exit status 2), not an error
        after the first epoch."""
        if self.run_dir is None:
            return
        probe = self.run_dir / f".probe.{os.getpid()}"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"trainlab")
            probe.unlink()
        except OSError as err:
            raise CheckpointWriteError(err.filename or self.run_dir, err, exit_code=2) from None

    def save(self, name: str, pos: Position, also: str | None = None) -> Path | None:
        """Write the run at `pos` to `name` (and to `also`: one serialization, two files). Raises the
        CheckpointWriteError of an earlier write that failed."""
        self.saved_at = time.monotonic()
        model, optimizer = self.gather() if self.gather is not None else (None, None)  # every rank takes part
        if self.run_dir is None:
            return None
        self.writer.check()
        self.flush()
        payload = {
            # the plain module's names, never torch.compile's `_orig_mod.`
            "model": model or plain_state_dict(self.model.state_dict()),
            "optimizer": optimizer or self.optimizer.state_dict(), "step": pos.step, "epoch": pos.epoch, "batch": pos.batch, "early_stopping": self.stopper.state_dict(), "rng": rng_state(),
            "reference": pos.reference, "history": pos.history, "hparams": self.hp.model_dump(mode="json"),
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks if hasattr(cb, "state_dict")},
            "world_size": self.world_size,
        }
        if self.scaler is not None:
            payload["scaler"] = self.scaler.state_dict()
        meta = {"step": pos.step, "epoch": pos.epoch, "batch": pos.batch, "best_metric": self.stopper.best,
                "best_epoch": self.stopper.best_epoch}
        return self.writer.save(payload, self.run_dir / name, *([self.run_dir / also] if also else []), meta=meta)


    def on_disk(self) -> dict[str, dict] | None:
        """What the checkpoints written by this process hold: {"last.pt": {path, step, epoch, batch,
        best_metric, best_epoch}, "best.pt": ...}, for the files whose write landed; None without a run_dir."""
        if self.run_dir is None:
            return None
        out = {}
        for name in ("last.pt", "best.pt"):
            path = self.run_dir / name
            meta = self.writer.landed.get(str(path))
            if meta is None and path.is_file():  # written before this process (a resumed run): read it
                try:
                    ckpt = load_checkpoint(path)
                except Exception:
                    continue
                stopper = ckpt.get("early_stopping") or {}
                meta = {"step": ckpt.get("step"), "epoch": ckpt.get("epoch"), "batch": ckpt.get("batch"),
                        "best_metric": stopper.get("best"), "best_epoch": stopper.get("best_epoch")}
            if meta is not None:
                out[name] = {"path": str(path), **meta}
        return out

    def due(self, step: int, dist: Dist | None, every: int) -> bool:
        """Time for a mid-epoch last.pt (`hp.checkpoint_every_minutes`)? Under DDP rank 0's clock decides for
        all ranks, checked every `every` steps (one collective each time)."""
        due = time.monotonic() - self.saved_at > 60 * self.hp.checkpoint_every_minutes
        if dist is None or not dist.ddp:
            return due
        return step % every == 0 and first_decision(dist, True if due and not dist.rank else None) is not None

    def best_path(self) -> str | None:
        best = self.run_dir / "best.pt" if self.run_dir is not None else None
        return str(best) if best is not None and best.is_file() else None

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the pending writes; raise the first that failed (unless `raise_errors` is False)."""
        self.writer.close(raise_errors)


def resume_run(run_id: int, run_dir: Path | None, *, model: nn.Module, optimizer: torch.optim.Optimizer,
               stopper: EarlyStopping, callbacks: Sequence, device: torch.device, dist: Dist | None,
               world_size: int, scaler: torch.amp.GradScaler | None = None) -> Position:
    """Load run `run_id`'s last.pt (and best.pt) into the model, optimizer, early stopping, callbacks and the
    RNG; return where it stopped. Under DDP rank 0 reads the files (no shared disk needed) and every rank
    resumes from them. A run resumes only with as many processes as it was trained by."""
    ddp = dist is not None and dist.ddp
    rank = dist.rank if ddp else 0
    if run_dir is None and not rank:
        raise ConfigError(f"resume: run {run_id} needs a store and checkpoints")
    ckpt = load_checkpoint(run_dir / "last.pt", map_location="cpu" if ddp else device) if not rank else None
    best = None
    if ddp:
        best = load_checkpoint(run_dir / "best.pt")["model"] if not rank and (run_dir / "best.pt").is_file() else None
        ckpt, best = broadcast_object(dist, (ckpt, best))
    if ckpt.get("world_size", 1) != world_size:  # steps, epoch positions and the lr depend on it
        raise ConfigError(f"resume: run {run_id} was trained by {ckpt.get('world_size', 1)} process(es); "
                          f"resume it with as many (trainlab train --nproc K), got {world_size}")
    if not ddp and (run_dir / "best.pt").is_file():
        best = load_checkpoint(run_dir / "best.pt", map_location=device)["model"]
    model.load_state_dict(state_for(model, ckpt["model"]))
    best = state_for(model, best) if best is not None else None
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    stopper.load_state_dict(ckpt["early_stopping"])
    for cb in callbacks:
        if hasattr(cb, "load_state_dict") and type(cb).__name__ in ckpt.get("callbacks", {}):
            cb.load_state_dict(ckpt["callbacks"][type(cb).__name__])
    set_rng_state(ckpt["rng"])
    return Position(ckpt["step"], ckpt["epoch"], ckpt["batch"], ckpt["reference"], ckpt["history"], best)
