"""What a run writes to the store, buffered: the run row, per-step and per-epoch metric rows, the summary.

The loop hands rows over; the `Recorder` keeps them in a `MetricBuffer` and writes them in batches:

- at the start, the run row (status "running") with the resolved `RunPlan` in its summary;
- every few dozen steps (when the loop reads its per-step losses), train/loss and lr rows; at the monitor's
  cadence, update/weight ratios and the gradient norm: all buffered, never written per step;
- at an epoch's end, the epoch's metrics, in one transaction with the run's epoch count and best metric:
  every epoch when the run keeps checkpoints (rows land before the checkpoint that names their step),
  otherwise at most every `FLUSH_S` seconds; what callbacks put in the summary, when it changed;
- at the end, the final status and summary; on an exception, status "failed" with its reason, and the
  best epoch and checkpoint of the weights actually on disk.

Liveness (`trainlab.store.liveness`): every write of rows carries the run's heartbeat, and a thread writes
it at least every `HEARTBEAT_S` seconds, so `trainlab runs` tells a live run from a lost one. A resume
claims the run (`Store.claim_run`): refused while another live process holds it.

A database outage does not stop training: the rows stay in memory and are retried with backoff
(`MetricBuffer(retry=True)`); when the database is back they land. Past `MAX_BUFFERED_ROWS` rows held,
`halt_reason` tells the loop to stop (with its checkpoint); at the end the recorder waits up to
`FINISH_WAIT_S` seconds for the database before giving up with one line (`StoreUnavailable`).

Without a store (`Recorder(None, run_id, None)`: fit() without one, and data-parallel ranks other than 0)
every method writes nothing to a store.

Loggers (`fit(..., loggers=[...])`, `train.loggers`: TensorBoard, MLflow, CSV from `trainlab.export`) get the
same rows, with or without a store: the buffer is wrapped in a `LoggedBuffer`, whose rows are handed to the
loggers at the points where the loop already reads its numbers (each read of the per-step losses, each epoch's
end), never per step. They `start` with the run (a resumed one once it is claimed, with the step it goes on
from) and `finish` with its end, failures included. A logger that raises is dropped with one warning line; the
run's outcome never depends on one.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from trainlab.config import Config
from trainlab.parallel.ddp import Dist, broadcast_object
from trainlab.store import HEARTBEAT_S, MetricBuffer, Store, StoreUnavailable, classify, hide_password
from trainlab.train.loggers import LoggedBuffer, Logger
from trainlab.train.plan import RunPlan

__all__ = ["Recorder", "FLUSH_S", "MAX_BUFFERED_ROWS", "FINISH_WAIT_S"]

FLUSH_S = 2.0  # without checkpoints, metric rows are written at an epoch's end at most this often
MAX_BUFFERED_ROWS = 500_000  # rows held in memory during a database outage (~60 MB); past it the run stops
FINISH_WAIT_S = 120.0  # at the end, how long to wait for an unreachable database before giving up


class _Heartbeat:
    """A daemon thread writing the run's heartbeat every `interval` seconds (`Store.beat`); `lost` turns
    True when another process has taken the run over. Outages are ignored: the rows carry the next beat."""

    def __init__(self, store: Store, run_id: int, interval: float = HEARTBEAT_S):
        self.store, self.run_id, self.interval = store, run_id, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-run-{run_id}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.store.beat(self.run_id):
                    self.lost = True
                    return
            except Exception:  # the database is away: the rows retry, and carry the heartbeat when it is back
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Recorder:
    """The store's side of one run. `epoch` arguments are 0-based (the epoch in progress); rows store them
    1-based, as `store.metrics` reads them."""

    def __init__(self, store: Store | None, run_id: int | None, run_dir: Path | None,
                 loggers: Sequence[Logger] = (), run_info: dict[str, Any] | None = None):
        self.store, self.run_id, self.run_dir = store, run_id, run_dir
        self.buffer = MetricBuffer(store, run_id, retry=True, limit=MAX_BUFFERED_ROWS, beat=True) \
            if store is not None else None
        # where rows are added: the store's buffer, wrapped when loggers listen (they get the rows at publish())
        self.logged = LoggedBuffer(self.buffer, loggers, run_id) if loggers else None
        self._started = False  # the loggers' start: at open, or for a resumed run once it is claimed
        self._sink = self.logged if self.logged is not None else self.buffer
        self.run_info = {"id": run_id, "status": "running", **(run_info or {})}  # what loggers start and end with
        self._flushed_at = time.monotonic()
        self._summary: dict[str, Any] = {}  # what callbacks last put in the summary
        self._summary_due: dict[str, Any] | None = None  # a summary not stored yet (the database was away)
        self._heartbeat: _Heartbeat | None = None

    def _beat(self) -> None:
        """Start the heartbeat thread (not on an in-memory database: its one connection is not for threads)."""
        if self.store is not None and self._heartbeat is None and not self.store.in_memory:
            self._heartbeat = _Heartbeat(self.store, self.run_id)

    def _quiet(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    @classmethod
    def open(cls, store: Store | None, hp: Config, plan: RunPlan, *, name: str, study: str | None = None,
             kind: str = "train", resume: int | None = None, runs_dir: str | Path | None = None,
             dist: Dist | None = None, metrics: dict[str, Any] | None = None,
             loggers: Sequence[Logger] = ()) -> Recorder:
        """A new run row named `name` (hyperparameters as given; the plan and the launch id in the summary),
        or run `resume` again. Under DDP rank 0 creates the row and every rank gets its id. The run directory
        is `runs_dir/run-<id>` when there is a store and `runs_dir` (None: no checkpoints). `metrics` (the task's
        kind and metric names, `metrics.TaskMetrics.summary()`) goes in the summary as "metrics". `loggers` start
        now (ranks other than 0 pass none)."""
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
        info = {"name": name, "study": study, "kind": kind, "hparams": hp.model_dump(mode="json"),
                "store": hide_password(store.url) if store is not None else None} if loggers else None
        if loggers and store is not None and resume is not None:  # a resumed run keeps its stored name and study
            row = store.run(resume)
            info.update(name=row.get("name") or name, study=row.get("study"), kind=row.get("kind") or kind)
        rec = cls(store, run_id, run_dir, loggers, info)
        if resume is None:
            rec._beat()
            rec._start_loggers()
        return rec

    def _start_loggers(self, **extra: Any) -> None:
        if self.logged is not None:
            self.logged.call("start", {**self.run_info, **extra})
            self._started = True

    def fitted(self, plan: RunPlan, fitted: dict[str, Any]) -> None:
        """The run's schedule fitted to its time (`timefit.TimeFit`): its new plan and the fit, in the summary
        (a transient database fault leaves it to the run's end, which writes it again)."""
        if self.store is not None and self.buffer is not None:
            self._try(lambda: self.store.update_run(self.run_id, summary={"plan": plan.summary()["plan"],
                                                                           "fitted": fitted}))

    def resumed(self, step: int, dist: Dist | None = None) -> None:
        """The run goes on from update `step`: claimed for this process (`Store.claim_run`: refused when
        another live process holds it, or when it completed or diverged), rows after the checkpoint dropped,
        the status running. Under DDP rank 0 claims and every rank raises its refusal."""
        refusal = None
        if self.store is not None:
            try:
                self.store.claim_run(self.run_id, refuse=("completed", "diverged"))
            except ValueError as err:  # RunBusy, or nothing to resume
                refusal = err
        if dist is not None and dist.ddp:
            refusal = broadcast_object(dist, refusal)
        if refusal is not None:
            raise refusal
        if self.store is not None:
            self._beat()
            self.store.delete_metrics_after(self.run_id, step - 1)
        self._start_loggers(resume_step=step)  # only now: a refused resume must not touch the run's logs

    def halt_reason(self) -> str | None:
        """Why the run must stop now: rows held past the bound during an outage, or the run taken over."""
        if self.buffer is not None and self.buffer.over_limit:
            return (f"store unreachable for {self.buffer.outage_s:.0f} s ({self.buffer.error}); "
                    f"{len(self.buffer)} metric rows held in memory, the most a run keeps")
        if self._heartbeat is not None and self._heartbeat.lost:
            return "another process took this run over (trainlab train --resume)"
        return None

    def losses(self, first: int, epoch: int, values: list[float], lrs: list[float]) -> None:
        """train/loss and lr of updates `first`, `first + 1`, ... (a read point: loggers get the rows so far)"""
        if self._sink is None:
            return
        add = self._sink.add
        for i, (v, lr) in enumerate(zip(values, lrs)):
            add(first + i, epoch + 1, "train/loss", v)
            add(first + i, epoch + 1, "lr", lr)
        self.publish()

    def publish(self) -> None:
        """Hand the rows added since the last call to the loggers (nothing to do without loggers)."""
        if self.logged is not None:
            self.logged.publish()

    def ratios(self, step: int, epoch: int, ratios: dict[str, float], gnorm) -> None:
        """The update/weight ratio of each parameter tensor and the gradient norm, measured at `step`."""
        if self._sink is None:
            return
        for name, r in ratios.items():
            self._sink.add(step, epoch + 1, f"ratio/{name}", r)
        self._sink.add(step, epoch + 1, "grad_norm", float(gnorm))

    def flush(self) -> None:
        """Write the buffered rows now (before a checkpoint lands, every row up to its step is stored)."""
        if self.buffer is not None:
            self.buffer.flush()

    def end_epoch(self, step: int, epoch: int, metrics: dict[str, float], best: float | None,
                  best_epoch: int | None, summary: dict[str, Any]) -> None:
        """The epoch's metrics (at the step of its last update), written with the run's progress when due,
        and `summary` (what callbacks record) when it changed. A read point: loggers get the rows so far."""
        if self._sink is None:
            return
        for k, v in metrics.items():
            self._sink.add(step - 1, epoch + 1, k, v)
        self.publish()
        if self.buffer is None:
            return
        if self.run_dir is not None or time.monotonic() - self._flushed_at >= FLUSH_S:
            # one transaction: the epoch's rows and the run's progress (before the checkpoint lands)
            stored = self.buffer.flush(epochs=epoch + 1, best_metric=best, best_epoch=best_epoch)
            self._flushed_at = time.monotonic()
            if summary and summary != self._summary:
                self._summary, self._summary_due = copy.deepcopy(summary), copy.deepcopy(summary)
            if stored and self._summary_due is not None:
                self._try(lambda: self.store.update_run(self.run_id, summary=self._summary_due))
                self._summary_due = None if self.buffer.outage_since is None else self._summary_due

    def _try(self, write: Callable[[], None]) -> bool:
        """Run a write; a transient database fault is noted on the buffer (and retried with its rows)."""
        try:
            write()
            return True
        except Exception as err:
            fault = classify(err, self.store.url)
            if fault is None or not fault.transient:
                raise
            self.buffer.error = fault
            self.buffer.outage_since = self.buffer.outage_since or time.monotonic()
            return False

    def _land(self, write: Callable[[], None], what: str, wait_s: float) -> None:
        """Write the buffered rows, then `write`, waiting up to `wait_s` seconds through an outage; after
        that, StoreUnavailable with one line saying what is not stored."""
        deadline = time.monotonic() + wait_s
        landed = self.buffer.drain(wait_s)
        while landed and not self._try(write):
            if time.monotonic() >= deadline:
                landed = False
                break
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        if not landed:
            where = f"; its checkpoints are in {self.run_dir}" if self.run_dir is not None else ""
            raise StoreUnavailable(f"{self.buffer.error}: gave up after {wait_s:.0f} s; run {self.run_id} "
                                   f"{what}, but its last {len(self.buffer)} metric rows and its status are not "
                                   f"stored{where}: resume with trainlab train --resume {self.run_id} once the "
                                   "database is back")

    def finish(self, status: str, reason: str | None, *, steps: int, seconds: float, num_classes: int,
               test: dict[str, float] | None, best: float | None, best_epoch: int | None, epochs: int,
               checkpoint: str | None, warnings: list, summary: dict[str, Any]) -> None:
        """End the run: every buffered row, its status and reason, and its summary (steps, time, the layers'
        ratio warnings, the test result, and `summary`, what callbacks record); then the loggers' end."""
        summary = {"steps": steps, "seconds": seconds, "num_classes": num_classes,
                   "ratio_warnings": [w.to_dict() for w in warnings], **summary}
        if test is not None:
            summary.update({f"test/{k}": v for k, v in test.items()})
        if self.logged is not None and self.logged.faults:  # loggers dropped so far (see train.loggers)
            summary["logger_faults"] = list(self.logged.faults)
        if self.store is not None:
            self._quiet()
            if not self._lease_lost():
                self._land(lambda: self.store.finish_run(self.run_id, status, reason=reason, best_metric=best,
                                                         best_epoch=best_epoch, epochs=epochs, checkpoint=checkpoint,
                                                         summary=summary), f"ended {status} at step {steps}",
                           FINISH_WAIT_S)
        if self.logged is not None and self._started:
            self.publish()
            end = {"status": status, "reason": reason, "best_metric": best, "best_epoch": best_epoch,
                   "epochs": epochs, "summary": summary}
            self.logged.call("finish", {**self.run_info, **end})

    def _lease_lost(self) -> bool:
        """Another process resumed this run (its heartbeat found it taken): this one writes nothing more."""
        return self._heartbeat is not None and self._heartbeat.lost

    def failed(self, err: BaseException, summary: dict[str, Any], on_disk: dict[str, Any] | None = None) -> None:
        """The run ended on an exception: store what can be stored, and status "failed" with the error (one
        line). `on_disk` (`Checkpoints.on_disk`): what its checkpoints hold; the run's best epoch, best metric
        and checkpoint become those of best.pt, the weights actually on disk. The loggers end "failed" too."""
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        self._loggers_failed(f"{type(err).__name__}: {text}"[:500])
        if self.store is None:
            return
        lost = self._lease_lost()
        self._quiet()
        if lost:
            return
        fields: dict[str, Any] = {"summary": {**summary}} if summary else {}
        if on_disk is not None:
            best = on_disk.get("best.pt")
            fields.update(best_metric=best and best["best_metric"], best_epoch=best and best["best_epoch"],
                          checkpoint=best and best["path"])
            fields.setdefault("summary", {})["on_disk"] = on_disk
        try:  # briefly: the error that ended the run is the one to report
            self._land(lambda: self.store.finish_run(self.run_id, "failed", reason=f"{type(err).__name__}: "
                                                     f"{text}"[:500], **fields), "failed", min(FINISH_WAIT_S, 10.0))
        except StoreUnavailable:
            pass  # the run shows as lost once its heartbeat is old

    def _loggers_failed(self, reason: str) -> None:
        """The loggers' end of a run that failed: the rows so far and status "failed"; their own errors are
        dropped (the error that ended the run is the one to report)."""
        if self.logged is None or not self._started:
            return
        self.logged.publish()
        self.logged.call("finish", {**self.run_info, "status": "failed", "reason": reason})
