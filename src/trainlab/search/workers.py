"""Running a study's trials: worker processes, each claiming trials under a lock until the budget is used.

Workers use ask/tell, not `Study.optimize`, because the budget must be exact across processes: under a
lock (a file lock for SQLite, a PostgreSQL advisory lock otherwise) a worker fails stale trials, counts
the study's trials and asks for one only while fewer than `trials` exist. Optuna's heartbeat is wired by
`optimize` only, so the worker does what `optimize` does: record a first heartbeat right after `ask`
(still under the lock: a trial with no heartbeat is never found stale), keep a heartbeat thread during
the trial, and call `optuna.storages.fail_stale_trials` before each ask. A trial whose worker died
(SIGKILL, power loss) goes stale after `grace_s`, is marked failed (its run too) and retried once
(`RetryHeartbeatStaleTrialCallback(max_retry=1)`, Optuna 4.9+'s name for `RetryFailedTrialCallback`); the
retry takes the dead trial's place in the budget. Re-running the same search resumes it: the study's
finished trials count, and a grid point is never run twice (Optuna's GridSampler gives trial number k
the k-th point of its shuffled grid, and the lock makes trial numbers and the grid's bookkeeping atomic).

How many workers and threads: `cpu_cores()` is what this process may run on; `default_workers()` the
worker count a caller uses when the user names none (the recipe, its command line); `threads_per_worker`
the torch threads each worker process gets; `workers_needed` caps the workers at the trials left.

Stopping. SIGINT (Ctrl-C, or `kill -INT` to the parent alone) and SIGTERM (Slurm, Kubernetes, systemd) are
handled alike, once (`interrupts()`): the parent sends SIGTERM to each worker, and a worker turns it into
a KeyboardInterrupt, so fit() stops its trial (run `stopped`) and the trial is queued again; a worker that
has not exited after STOP_GRACE_S (frozen, or stuck in native code) is killed, and the parent re-queues its
trial and marks its run stopped. Workers start with SIGINT blocked (a terminal's Ctrl-C reaches the
whole process group; a worker still importing would die with a traceback) and unblock it once their
handlers are in place, before they claim a trial.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping

from trainlab.config import Config, apply_overrides, make_config
from trainlab.search.leaderboard import budget_used, finished, run_name
from trainlab.search.optuna_glue import OnStaleTrial, PruningCallback, make_pruner, make_sampler, requeue, tell
from trainlab.search.space import Space, parse_space
from trainlab.search.storage import StudyLock, open_storage
from trainlab.store import Store, normalize_url

__all__ = ["WorkerPlan", "MAX_DEFAULT_WORKERS", "STOP_GRACE_S", "cpu_cores", "idle_cores", "default_workers", "threads_per_worker",
           "workers_needed", "interrupts", "work", "run_workers", "update_bar", "log"]

MAX_DEFAULT_WORKERS = 4   # default_workers(): one per core, at most this many
STOP_GRACE_S = 10.0       # after SIGINT/SIGTERM, seconds a worker gets to stop its trial before it is killed


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def idle_cores(window_s: float = 0.25) -> int:
    """Cores no process uses now (at least 1, at most `cpu_cores()`): the machine's idle share over `window_s`
    from /proc/stat (Linux), which, unlike the load average, does not lag a minute behind; 1 where it
    cannot be read. A process that trains alone takes them all; on a machine other jobs load, extra threads
    only wait for each other (2 threads measured ~15x slower than 1 on a loaded 2-core machine)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values[:8])   # idle + iowait, all but guest time

    try:
        idle0, total0 = sample()
        time.sleep(window_s)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 1
    share = (idle1 - idle0) / max(1, total1 - total0)
    return max(1, min(cpu_cores(), int(share * (os.cpu_count() or 1) + 0.25)))


def default_workers() -> int:
    """Worker processes when the user names none: one per core, at most MAX_DEFAULT_WORKERS."""
    return max(1, min(MAX_DEFAULT_WORKERS, cpu_cores()))


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of `workers` processes side by side: the cores split between them (at least 1)."""
    return max(1, cpu_cores() // workers)


def workers_needed(trials, budget: int, workers: int) -> int:
    """Worker processes worth starting: `workers`, capped at the trials left to run (the budget not yet
    taken, plus trials queued again), at least 1 (a stale trial may come back as a retry)."""
    import optuna

    waiting = sum(1 for t in trials if t.state == optuna.trial.TrialState.WAITING)
    left = max(0, budget - budget_used(trials)) + waiting
    return max(1, min(workers, left))


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, once: a second signal while the first
    is being handled (a trial being stopped and queued again) is ignored, so the stop is never cut short.
    The handlers that were there are restored at the end (a Python handler, the recipe's, is called for
    the first signal instead of raising here). Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        before = previous.get(signum)
        if callable(before) and before is not signal.default_int_handler:
            before(signal.SIGINT, frame)  # e.g. the recipe's: it records the interrupt, then raises
        raise KeyboardInterrupt

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@dataclass
class WorkerPlan:
    """Everything a worker process needs, as plain values (it crosses a spawn boundary)."""

    study: str
    db: str
    storage: str
    strategy: str
    prune: str
    space: dict[str, str]
    config: dict[str, Any]
    trials: int
    seed: int
    heartbeat_s: int
    grace_s: int
    runs_dir: str
    checkpoints: bool
    quiet: bool
    workers: int = 1
    worker: int = 0
    threads: int | None = None
    deadline: float | None = None   # time.time() after which no trial starts and running trials stop


def log(plan: WorkerPlan, message: str, bar=None) -> None:
    """A progress line on stderr (through the progress bar when there is one), unless the plan is quiet."""
    if plan.quiet:
        return
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


class _Heartbeat:
    """Records a trial's heartbeat every `interval` seconds in a thread, as Study.optimize would."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial_id}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a missed beat is retried next interval; grace_s covers a few
                pass

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _params_text(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _run_trial(plan: WorkerPlan, study, trial, space: Space, base: Config, store: Store, storage, bar=None) -> str:
    """Train one trial and tell Optuna; returns the run's status."""
    import optuna

    from trainlab.preflight import load_checked_task
    from trainlab.train.loop import fit

    TrialState = optuna.trial.TrialState
    try:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    except KeyboardInterrupt:
        abandon(study, trial.number, store, plan.study, "interrupted before it started")
        raise
    with _Heartbeat(storage, trial._trial_id, plan.heartbeat_s):
        try:
            params = space.suggest(trial)
            hp = apply_overrides(base, params)
            if hp.minutes is not None and plan.deadline is not None:  # a trial fitted to its time ends by the deadline
                hp = hp.model_copy(update={"minutes": max(0.01, min(hp.minutes, (plan.deadline - time.time()) / 60))})
            callbacks = [PruningCallback(trial, hp.early_stop_metric)] if plan.prune != "none" else []
            deadline = None
            if plan.deadline is not None:
                from trainlab.train.callbacks import Deadline

                deadline = Deadline(plan.deadline)
                callbacks.append(deadline)
            # pre-flight of this trial's task and model (its width, batch size): a failure is this trial's,
            # one line, before fit() creates a run
            task = load_checked_task(hp)
            result = fit(task, hp, store=store, study=plan.study, name=run_name(trial.number),
                         callbacks=callbacks, quiet=True, evaluate_test=False, runs_dir=plan.runs_dir,
                         checkpoints=plan.checkpoints)
        except KeyboardInterrupt:  # before fit() got to its loop (which turns it into status "stopped")
            abandon(study, trial.number, store, plan.study, "interrupted before training started")
            raise
        except Exception as err:  # a bad combination or a crash in this trial: record it, go on
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("reason", reason)
            tell(study, trial, state=TrialState.FAIL)
            log(plan, f"trial {trial.number}: failed: {reason}", bar)
            return "failed"
    for key, value in (("run_id", result.run_id), ("status", result.status), ("reason", result.reason),
                       ("epochs", result.epochs)):
        trial.set_user_attr(key, value)
    if result.status == "stopped" and deadline is not None and deadline.fired:  # the search's time is up
        tell(study, trial, state=TrialState.PRUNED)
        log(plan, f"trial {trial.number}: {_params_text(params)} -> stopped at the deadline after "
                  f"{result.epochs} epochs (run {result.run_id})", bar)
        return result.status
    if result.status == "stopped":  # Ctrl-C: requeue the same point so that resuming runs it again
        tell(study, trial, state=TrialState.FAIL)
        requeue(study, trial.number)
        store.update_run(result.run_id, reason=f"search interrupted at step {result.steps}; trial {trial.number} "
                                               "queued again: re-run the same search to resume")
        raise KeyboardInterrupt
    if result.status == "completed" and result.best_metric is not None:
        tell(study, trial, result.best_metric)
    elif result.status in ("pruned", "diverged"):
        tell(study, trial, state=TrialState.PRUNED)
    else:
        tell(study, trial, state=TrialState.FAIL)
    metric = f"{base.early_stop_metric} {result.best_metric:.4f}" if result.best_metric is not None else "no metric"
    log(plan, f"trial {trial.number}: {_params_text(params)} -> {result.status}, {metric}, "
              f"{result.epochs} epochs (run {result.run_id})" + (f" [{result.reason}]" if result.reason
                                                                 and result.status != "completed" else ""), bar)
    return result.status


def abandon(study, number: int, store: Store, study_name: str, why: str) -> bool:
    """An interrupted trial that is still running: its run (if fit() created one) marked stopped, the trial
    failed and queued again so that resuming runs the same point. Returns whether it was still running."""
    import optuna

    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state != optuna.trial.TrialState.RUNNING:
        return False
    for run in store.runs(study=study_name):  # running, or already shown lost (its worker was killed)
        if run["name"] == run_name(number) and run["status"] in ("running", "lost"):
            store.finish_run(run["id"], "stopped", reason=f"search interrupted: {why}; trial {number} queued again")
    tell(study, number, state=optuna.trial.TrialState.FAIL)
    requeue(study, number)
    return True


def work(plan: WorkerPlan, bar=None, on_trial=None, check: bool = True) -> int:
    """A worker: claim trials until the budget is used up and no trial is left running; returns trials run."""
    import optuna

    space = parse_space(plan.space)
    base = make_config(plan.config)
    store = Store(plan.db)
    on_stale = OnStaleTrial(store, plan.grace_s)
    storage = open_storage(plan.storage, heartbeat_s=plan.heartbeat_s, grace_s=plan.grace_s, on_stale=on_stale,
                           check=check)
    lock = StudyLock(normalize_url(plan.storage))
    study = optuna.load_study(study_name=plan.study, storage=storage)
    study.pruner = make_pruner(plan.prune, base.epochs if base.steps is None else None)
    done = 0
    try:
        while True:
            if plan.deadline is not None and time.time() >= plan.deadline:
                return done  # no trial starts after the deadline; running ones stop at their next step
            with lock.hold(plan.study):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
                running = any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
                trial = None
                if waiting or budget_used(trials) < plan.trials:
                    study.sampler = make_sampler(plan.strategy, space, plan.seed, len(trials), plan.trials)
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                        trial = study.ask()
                    storage.record_heartbeat(trial._trial_id)
            if trial is None:
                if not running:
                    return done
                # Another worker's trial is running: it may finish, or go stale and come back as a retry.
                time.sleep(min(plan.heartbeat_s, 2))
                continue
            _run_trial(plan, study, trial, space, base, store, storage, bar)
            done += 1
            if on_trial is not None:
                on_trial()
    finally:
        lock.close()
        store.close()


def _worker_main(plan: WorkerPlan) -> None:
    """Entry point of a spawned worker process: SIGTERM (from the parent) and SIGINT stop its trial."""
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if plan.threads:
        torch.set_num_threads(plan.threads)
    code = 0
    try:
        with interrupts():
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent while it spawned
            work(plan)
    except KeyboardInterrupt:
        code = 130
    # Everything is stored and closed (work() closes the store); skip the interpreter's teardown of torch
    # and Optuna, which takes seconds on a loaded machine, so that a stopped search ends promptly.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stop_workers(plan: WorkerPlan, procs: list, ostudy, bar=None, grace_s: float | None = None) -> None:
    """SIGTERM to every live worker (each stops its trial: run stopped, trial queued again); after `grace_s`
    (default STOP_GRACE_S) the ones still alive are killed, and their running trials are stopped and queued
    again from here."""
    grace_s = STOP_GRACE_S if grace_s is None else grace_s
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    killed = [p for p in procs if p.is_alive()]
    for p in killed:
        p.kill()
        p.join()
    if not killed:
        return
    host = socket.gethostname()
    pids = {f"{host}:{p.pid}" for p in killed}
    store = Store(plan.db)
    try:
        for t in ostudy.get_trials(deepcopy=False):
            if t.user_attrs.get("worker") in pids and abandon(ostudy, t.number, store, plan.study,
                                                               f"worker {t.user_attrs['worker']} killed after "
                                                               f"{grace_s:g} s"):
                log(plan, f"trial {t.number}: worker {t.user_attrs['worker']} did not stop within {grace_s:g} s: "
                          "killed; the trial is queued again", bar)
    finally:
        store.close()


def update_bar(bar, ostudy, n: int) -> None:
    """Move the trials bar to the study's finished trials (at most `n`)."""
    done = min(finished(ostudy.get_trials(deepcopy=False)), n)
    if done > bar.n:
        bar.update(done - bar.n)


def run_workers(plan: WorkerPlan, workers: int, bar, ostudy, n: int) -> list[int]:
    """Spawn `workers` processes, each with threads_per_worker(workers) torch threads; wait for all of them.
    Returns their exit codes."""
    ctx = multiprocessing.get_context("spawn")
    threads = threads_per_worker(workers)
    procs = []
    try:
        # Children inherit a blocked SIGINT across exec: a Ctrl-C while a worker still imports does not kill
        # it with a traceback (it waits until the worker's handlers are in place), and one that reaches
        # the parent meanwhile is held, not lost: it is delivered when the mask is lifted, here.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for i in range(workers):
                p = ctx.Process(target=_worker_main, name=f"trainlab-search-worker-{i}",
                                args=(WorkerPlan(**{**asdict(plan), "worker": i, "threads": threads}),))
                p.start()
                procs.append(p)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=1.0)
                if bar is not None:
                    update_bar(bar, ostudy, n)
    except KeyboardInterrupt:
        stop_workers(plan, procs, ostudy, bar)
        raise
    for i, p in enumerate(procs):
        if p.exitcode:
            how = f"killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exited with status {p.exitcode}"
            log(plan, f"worker {i} (pid {p.pid}) {how}; a trial it was running is retried by another worker "
                      "once its heartbeat is stale", bar)
    return [p.exitcode for p in procs]
