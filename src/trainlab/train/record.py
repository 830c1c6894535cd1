"""What a run writes to the store, buffered: the run row, per-step and per-epoch metric rows, the summary.

The loop hands rows over; the `Recorder` keeps them in a `MetricBuffer` and writes them in batches:

- at the start, the run row (status "running") with the resolved `RunPlan` in its summary;
- every few dozen steps (when the loop reads its per-step losses), train/loss and lr rows; at the monitor's
  cadence, update/weight ratios and the gradient norm: all buffered, never written per step;
- at an epoch's end, the epoch's metrics, in one transaction with the run's epoch count and best metric:
  every epoch when the run keeps checkpoints (rows land before the checkpoint that names their step),
  otherwise at most every `FLUSH_S` seconds; what callbacks put in the summary, when it changed;
- at the end, the final status and summary; on an exception, status "failed" with its reason.

Without a store (`Recorder(None, run_id, None)`: fit() without one, and data-parallel ranks other than 0)
every method writes nothing.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from trainlab.config import Config
from trainlab.parallel.ddp import Dist, broadcast_object
from trainlab.store import MetricBuffer, Store
from trainlab.train.plan import RunPlan

__all__ = ["Recorder", "FLUSH_S"]

FLUSH_S = 2.0  # without checkpoints, metric rows are written at an epoch's end at most this often


class Recorder:
    """The store's side of one run. `epoch` arguments are 0-based (the epoch in progress); rows store them
    1-based, as `store.metrics` reads them."""

    def __init__(self, store: Store | None, run_id: int | None, run_dir: Path | None):
        self.store, self.run_id, self.run_dir = store, run_id, run_dir
        self.buffer = MetricBuffer(store, run_id) if store is not None else None
        self._flushed_at = time.monotonic()
        self._summary: dict[str, Any] = {}  # what callbacks last put in the summary

    @classmethod
    def open(cls, store: Store | None, hp: Config, plan: RunPlan, *, name: str, study: str | None = None,
             kind: str = "train", resume: int | None = None, runs_dir: str | Path | None = None,
             dist: Dist | None = None, metrics: dict[str, Any] | None = None) -> Recorder:
        """A new run row named `name` (hyperparameters as given; the plan and the launch id in the summary),
        or run `resume` again. Under DDP rank 0 creates the row and every rank gets its id. The run directory
        is `runs_dir/run-<id>` when there is a store and `runs_dir` (None: no checkpoints). `metrics` (the task's
        kind and metric names, `metrics.TaskMetrics.summary()`) goes in the summary as "metrics"."""
        ddp = dist is not None and dist.ddp
        run_id = resume
        if store is not None and resume is None:
            run_id = store.create_run(name=name, hparams=hp.model_dump(mode="json"), seed=hp.seed, study=study,
                                      kind=kind)
            store.update_run(run_id, summary={**plan.summary(), "launch_id": dist.launch_id if ddp else None,
                                              **({"metrics": metrics} if metrics else {})})
        if ddp:  # rank 0 created the one row; every rank needs its id
            run_id = broadcast_object(dist, run_id)
        run_dir = Path(runs_dir).resolve() / f"run-{run_id}" if (store is not None and runs_dir is not None) else None
        return cls(store, run_id, run_dir)

    def resumed(self, step: int) -> None:
        """The run goes on from update `step`: rows after the checkpoint are dropped, the status is running."""
        if self.store is not None:
            self.store.delete_metrics_after(self.run_id, step - 1)
            self.store.update_run(self.run_id, status="running", reason=None)

    def losses(self, first: int, epoch: int, values: list[float], lrs: list[float]) -> None:
        """train/loss and lr of updates `first`, `first + 1`, ..."""
        if self.buffer is None:
            return
        add = self.buffer.add
        for i, (v, lr) in enumerate(zip(values, lrs)):
            add(first + i, epoch + 1, "train/loss", v)
            add(first + i, epoch + 1, "lr", lr)

    def ratios(self, step: int, epoch: int, ratios: dict[str, float], gnorm) -> None:
        """The update/weight ratio of each parameter tensor and the gradient norm, measured at `step`."""
        if self.buffer is None:
            return
        for name, r in ratios.items():
            self.buffer.add(step, epoch + 1, f"ratio/{name}", r)
        self.buffer.add(step, epoch + 1, "grad_norm", float(gnorm))

    def flush(self) -> None:
        """Write the buffered rows now (before a checkpoint lands, every row up to its step is stored)."""
        if self.buffer is not None:
            self.buffer.flush()

    def end_epoch(self, step: int, epoch: int, metrics: dict[str, float], best: float | None,
                  best_epoch: int | None, summary: dict[str, Any]) -> None:
        """The epoch's metrics (at the step of its last update), written with the run's progress when due,
        and `summary` (what callbacks record) when it changed."""
        if self.buffer is None:
            return
        for k, v in metrics.items():
            self.buffer.add(step - 1, epoch + 1, k, v)
        if self.run_dir is not None or time.monotonic() - self._flushed_at >= FLUSH_S:
            # one transaction: the epoch's rows and the run's progress (before the checkpoint lands)
            self.buffer.flush(epochs=epoch + 1, best_metric=best, best_epoch=best_epoch)
            self._flushed_at = time.monotonic()
            if summary and summary != self._summary:
                self.store.update_run(self.run_id, summary=summary)
                self._summary = copy.deepcopy(summary)

    def finish(self, status: str, reason: str | None, *, steps: int, seconds: float, num_classes: int,
               test: dict[str, float] | None, best: float | None, best_epoch: int | None, epochs: int,
               checkpoint: str | None, warnings: list, summary: dict[str, Any]) -> None:
        """End the run: every buffered row, its status and reason, and its summary (steps, time, the layers'
        ratio warnings, the test result, and `summary`, what callbacks record)."""
        if self.store is None:
            return
        self.buffer.flush()
        summary = {"steps": steps, "seconds": seconds, "num_classes": num_classes,
                   "ratio_warnings": [w.to_dict() for w in warnings], **summary}
        if test is not None:
            summary.update({f"test/{k}": v for k, v in test.items()})
        self.store.finish_run(self.run_id, status, reason=reason, best_metric=best, best_epoch=best_epoch,
                              epochs=epochs, checkpoint=checkpoint, summary=summary)

    def failed(self, err: BaseException, summary: dict[str, Any]) -> None:
        """The run ended on an exception: store what can be stored, and status "failed" with the error."""
        if self.store is None:
            return
        try:
            self.buffer.flush()
        except Exception:  # the store itself may be what failed; the status below is what matters
            pass
        self.store.finish_run(self.run_id, "failed", reason=f"{type(err).__name__}: {err}"[:500],
                              **({"summary": summary} if summary else {}))
