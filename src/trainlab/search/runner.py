"""Hyperparameter search through Optuna: strategies, pruning, worker processes and the leaderboard.

Optuna does what it is built for: sampling (GridSampler, RandomSampler, TPESampler), pruning
(SuccessiveHalvingPruner, HyperbandPruner, MedianPruner) and the study's shared state (RDBStorage).
trainlab adds the space syntax (`space.py`), the execution (every trial is a full `fit()` run in the
store, tagged with the study), the trial budget, crash recovery and the leaderboard.

Where things live. The trainlab store (`db`, default ./trainlab.db) holds every trial's run and curves;
Optuna's study lives in `storage`, which defaults to the same URL, so one SQLite file (or one
PostgreSQL database) holds everything, as DESIGN.md says. Optuna keeps its own tables there.

- One host, `workers=N`: the N processes share the SQLite file. Optuna advises against SQLite for
  parallel studies because of "database is locked" errors; they come from transactions that read and
  then write (SQLite cannot wait for the write lock then). Here Optuna's SQLite engine gets the store's
  treatment instead: WAL, a 30 s busy timeout and BEGIN IMMEDIATE on every transaction, so a writer
  waits for the lock instead of failing (tests/test_search.py runs several processes against one
  file). Optuna's journal file storage was not used: it has no heartbeat, and the heartbeat is what
  recovers a killed worker's trial.
- Many machines: `storage` (and `db`) a PostgreSQL URL; any number of `trainlab search --study NAME
  --storage postgresql://...` processes share the study.

Driving trials. Workers use ask/tell, not `Study.optimize`, because the budget must be exact across
processes: under a lock (a file lock for SQLite, a PostgreSQL advisory lock otherwise) a worker fails
stale trials, counts the study's trials and asks for one only while fewer than `trials` exist. Optuna's
heartbeat is wired by `optimize` only, so the worker does what `optimize` does: record a first
heartbeat right after `ask` (still under the lock: a trial with no heartbeat is never found stale),
keep a heartbeat thread during the trial, and call `optuna.storages.fail_stale_trials` before each
ask. A trial whose worker died (SIGKILL, power loss) goes stale after `grace_s`, is marked failed (its
run too) and retried once (`RetryHeartbeatStaleTrialCallback(max_retry=1)`, Optuna 4.9+'s name for
`RetryFailedTrialCallback`); the retry takes the dead trial's place in the budget. Re-running the same
search resumes it: the study's finished trials count, and a grid point is never run twice (Optuna's
GridSampler gives trial number k the k-th point of its shuffled grid, and the lock makes trial numbers
and the grid's bookkeeping atomic).

Diverged trials are recorded as "diverged" in the store and told to Optuna as PRUNED, not FAILED: TPE
ranks pruned trials below every completed one but ignores failed ones, and a region that diverges
should be learned as bad. Sampler seeds: grid uses `seed` (all workers must agree on the grid's
order); random and TPE reseed per trial from (seed, trial number), so different workers never draw the
same sequence and one worker's search is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import socket
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from trainlab.config import DEFAULT_RUNS_DIR, Config, ConfigError, apply_overrides, make_config
from trainlab.search.space import Space, parse_space
from trainlab.search.storage import StudyLock, is_sqlite, load_study, open_storage
from trainlab.store import Store, hide_password, normalize_url

__all__ = [
    "STRATEGIES", "PRUNERS", "SearchResult", "PruningCallback", "run_search", "leaderboard", "study_meta",
    "default_study_name",
]

STRATEGIES = ("grid", "random", "tpe")
PRUNERS = ("none", "sha", "hyperband", "median")
DEFAULT_TRIALS = 20          # random/TPE budget when none is given; a grid defaults to its size
DEFAULT_HEARTBEAT_S = 10     # Optuna heartbeat interval; a trial is stale after grace_s (3 intervals)
_META = "trainlab"           # study user attribute holding what the study was created with


# ------------------------------------------------------------------------------ the study


def default_study_name(hp: Config, space: Space, strategy: str, prune: str) -> str:
    """A name that is the same for the same search, so that re-running a command resumes it."""
    spec = json.dumps({"config": hp.model_dump(mode="json"), "space": space.to_dict(), "strategy": strategy,
                       "prune": prune}, sort_keys=True)
    return f"search-{strategy}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def study_meta(study) -> dict | None:
    """What a trainlab study was created with: strategy, prune, space, config, seed, trials, metric, mode."""
    return study.user_attrs.get(_META)


def _make_sampler(strategy: str, space: Space, seed: int, trial_number: int, trials: int):
    import optuna

    if strategy == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    trial_seed = (seed * 1_000_003 + trial_number) % 2**32
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=trial_seed)
    # Fewer random start-up trials for small budgets, so that TPE gets to model something.
    return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=min(10, max(2, trials // 3)),
                                      constant_liar=True)


def _make_pruner(prune: str, epochs: int | None):
    import optuna

    if prune == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if prune == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs or "auto", reduction_factor=3)
    if prune == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3)
    return optuna.pruners.NopPruner()


class PruningCallback:
    """A fit() callback that reports the validation metric to an Optuna trial after each epoch and
    returns Stop("pruned", ...) when the trial's pruner says so. The step reported is the 1-based epoch."""

    def __init__(self, trial, metric: str = "val/acc"):
        self.trial = trial
        self.metric = metric

    def on_step_end(self, state) -> None:
        return None

    def on_epoch_end(self, state):
        from trainlab.train.callbacks import Stop

        value = state.metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return None
        epoch = state.epoch + 1
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            return Stop("pruned", f"pruned at epoch {epoch}: {self.metric} {value:.4f}")
        return None

    def on_fit_end(self, state) -> None:
        return None


def _run_name(number: int) -> str:
    return f"trial-{number}"


class _OnStaleTrial:
    """Heartbeat-stale trial: retry it once (Optuna's callback) and mark its run failed in the store."""

    def __init__(self, store: Store, grace_s: int, max_retry: int = 1):
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.store = store
        self.grace_s = grace_s
        self.max_retry = max_retry

    def __call__(self, study, trial) -> None:
        tries = len(trial.system_attrs.get("retry_history", []))
        self.retry(study, trial)
        what = "retried" if tries < self.max_retry else f"not retried again (max {self.max_retry} retry)"
        for run in self.store.runs(study=study.study_name, status="running"):
            if run["name"] == _run_name(trial.number):
                self.store.finish_run(run["id"], "failed", reason=f"worker lost: no heartbeat for "
                                      f"{self.grace_s} s (trial {trial.number}); {what}")


def _superseded(trials) -> set[int]:
    """Numbers of trials that a retry replaced (a stale trial, or one interrupted by Ctrl-C)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _budget_used(trials) -> int:
    """Trials that take a place in the budget: all but those replaced by a retry."""
    gone = _superseded(trials)
    return sum(1 for t in trials if t.number not in gone)


def _finished(trials) -> int:
    gone = _superseded(trials)
    return sum(1 for t in trials if t.state.is_finished() and t.number not in gone)


# --------------------------------------------------------------------------------- workers


@dataclass
class _Plan:
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


def _log(plan: _Plan, message: str, bar=None) -> None:
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


def _tell(study, trial, value: float | None = None, state=None) -> None:
    """study.tell, tolerating GridSampler's known ask/tell quirk: after the last grid point its after_trial
    calls study.stop(), which raises RuntimeError outside optimize() once the trial is already recorded
    (optuna/optuna#4121, #5141; documented by #5153)."""
    try:
        study.tell(trial, value, state=state, skip_if_finished=True)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def _requeue(study, number: int) -> None:
    """Queue the params of finished trial `number` again (its place in the budget goes to the copy)."""
    import optuna

    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)


def _run_trial(plan: _Plan, study, trial, space: Space, base: Config, store: Store, storage, bar=None) -> str:
    """Train one trial and tell Optuna; returns the run's status."""
    import optuna

    from trainlab.tasks import load_task
    from trainlab.train.loop import fit

    TrialState = optuna.trial.TrialState
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    with _Heartbeat(storage, trial._trial_id, plan.heartbeat_s):
        try:
            params = space.suggest(trial)
            hp = apply_overrides(base, params)
            callbacks = [PruningCallback(trial, hp.early_stop_metric)] if plan.prune != "none" else []
            deadline = None
            if plan.deadline is not None:
                from trainlab.train.callbacks import Deadline

                deadline = Deadline(plan.deadline)
                callbacks.append(deadline)
            result = fit(load_task(hp), hp, store=store, study=plan.study, name=_run_name(trial.number),
                         callbacks=callbacks, quiet=True, evaluate_test=False, runs_dir=plan.runs_dir,
                         checkpoints=plan.checkpoints)
        except Exception as err:  # a bad combination or a crash in this trial: record it, go on
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("reason", reason)
            _tell(study, trial, state=TrialState.FAIL)
            _log(plan, f"trial {trial.number}: failed: {reason}", bar)
            return "failed"
    for key, value in (("run_id", result.run_id), ("status", result.status), ("reason", result.reason),
                       ("epochs", result.epochs)):
        trial.set_user_attr(key, value)
    if result.status == "stopped" and deadline is not None and deadline.fired:  # the search's time is up
        _tell(study, trial, state=TrialState.PRUNED)
        _log(plan, f"trial {trial.number}: {_params_text(params)} -> stopped at the deadline after "
                   f"{result.epochs} epochs (run {result.run_id})", bar)
        return result.status
    if result.status == "stopped":  # Ctrl-C: requeue the same point so that resuming runs it again
        _tell(study, trial, state=TrialState.FAIL)
        _requeue(study, trial.number)
        raise KeyboardInterrupt
    if result.status == "completed" and result.best_metric is not None:
        _tell(study, trial, result.best_metric)
    elif result.status in ("pruned", "diverged"):
        _tell(study, trial, state=TrialState.PRUNED)
    else:
        _tell(study, trial, state=TrialState.FAIL)
    metric = f"{base.early_stop_metric} {result.best_metric:.4f}" if result.best_metric is not None else "no metric"
    _log(plan, f"trial {trial.number}: {_params_text(params)} -> {result.status}, {metric}, "
               f"{result.epochs} epochs (run {result.run_id})" + (f" [{result.reason}]" if result.reason
                                                                  and result.status != "completed" else ""), bar)
    return result.status


def _work(plan: _Plan, bar=None, on_trial=None, check: bool = True) -> int:
    """A worker: claim trials until the budget is used up and no trial is left running; returns trials run."""
    import optuna

    space = parse_space(plan.space)
    base = make_config(plan.config)
    store = Store(plan.db)
    on_stale = _OnStaleTrial(store, plan.grace_s)
    storage = open_storage(plan.storage, heartbeat_s=plan.heartbeat_s, grace_s=plan.grace_s, on_stale=on_stale,
                           check=check)
    lock = StudyLock(normalize_url(plan.storage))
    study = optuna.load_study(study_name=plan.study, storage=storage)
    study.pruner = _make_pruner(plan.prune, base.epochs if base.steps is None else None)
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
                if waiting or _budget_used(trials) < plan.trials:
                    study.sampler = _make_sampler(plan.strategy, space, plan.seed, len(trials), plan.trials)
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


def _worker_main(plan: _Plan) -> None:
    """Entry point of a spawned worker process."""
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if plan.threads:
        torch.set_num_threads(plan.threads)
    try:
        _work(plan)
    except KeyboardInterrupt:
        sys.exit(130)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# -------------------------------------------------------------------------------- results


@dataclass
class SearchResult:
    """A finished (or interrupted) search: the leaderboard, ranked, and what the study holds.

    `leaderboard` rows: rank, trial, run, status, params (the searched values), value (best validation
    metric of the run), epochs, reason. `best` is the top completed row; `best_hparams` its full config.
    """

    study: str
    strategy: str
    prune: str
    metric: str
    db: str
    storage: str
    trials: int
    leaderboard: list[dict]
    best: dict | None
    best_hparams: dict | None
    counts: dict[str, int]
    complete: bool
    seconds: float
    workers: int
    worker_exitcodes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def leaderboard(study: str, db: str | os.PathLike | None = None, storage=None, *,
                store: Store | None = None) -> list[dict]:
    """The study's trials ranked by their run's best validation metric (best first; no value last).

    Each row: rank, trial, run, status (the run's: completed/pruned/diverged/failed/stopped/running; "lost"
    for a trial whose worker died and that a retry replaced; the trial's state when it has no run), params,
    value, epochs, reason, retry_of (the trial this one retries), worker (host:pid that ran it).
    """
    import optuna

    st = load_study(study, storage if storage is not None else db)
    meta = study_meta(st) or {}
    own = store is None
    store = store or Store(db)
    try:
        runs = {r["name"]: r for r in store.runs(study=study)}
    finally:
        if own:
            store.close()
    trials = st.get_trials(deepcopy=False)
    gone = _superseded(trials)
    rows = []
    for t in trials:
        run = runs.get(_run_name(t.number))
        status = run["status"] if run else t.state.name.lower().replace("complete", "completed").replace("fail", "failed")
        if t.number in gone and t.state == optuna.trial.TrialState.FAIL and status != "stopped":
            status = "lost"  # its worker died; a retry replaced it (an interrupted one stays "stopped")
        value = run["best_metric"] if run else t.value
        history = t.system_attrs.get("retry_history", [])
        rows.append({"trial": t.number, "run": run["id"] if run else None, "status": status, "params": dict(t.params),
                     "value": value, "epochs": run["epochs"] if run else 0,
                     "reason": (run or {}).get("reason") or t.user_attrs.get("reason"),
                     "retry_of": history[-1] if history else None, "worker": t.user_attrs.get("worker")})
    maximize = meta.get("mode", "max") == "max"
    rows.sort(key=lambda r: (r["value"] is None or not math.isfinite(r["value"]),
                             -(r["value"] or 0.0) if maximize else (r["value"] or 0.0), r["trial"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return [{"rank": r.pop("rank"), **r} for r in rows]


# ------------------------------------------------------------------------------- run_search


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")


def _prepare(plan: _Plan, meta_in: dict, join: bool):
    """Create the study, or check that the existing one was made by the same search.

    Returns (its meta, the Optuna storage, opened with the schema check)."""
    import optuna

    lock = StudyLock(normalize_url(plan.storage))
    try:
        with lock.hold("trainlab-storage"):  # creating tables: one process at a time
            storage = open_storage(plan.storage)
            Store(plan.db).close()
        with lock.hold(plan.study):
            try:
                study = optuna.load_study(study_name=plan.study, storage=storage)
            except KeyError:
                if join:
                    raise ConfigError(f"study: no study named {plan.study!r} in {hide_password(plan.storage)}; "
                                      "give --space (and a config) to create it") from None
                study = optuna.create_study(study_name=plan.study, storage=storage,
                                            direction="maximize" if meta_in["mode"] == "max" else "minimize")
                study.set_user_attr(_META, meta_in)
                return meta_in, storage
            meta = study_meta(study)
            if meta is None:
                raise ConfigError(f"study: {plan.study!r} exists but was not made by trainlab search; "
                                  "choose another --study")
            if not join:
                for key in ("strategy", "prune", "space", "config"):
                    if meta.get(key) != meta_in.get(key):
                        diff = _diff(meta.get(key), meta_in.get(key))
                        raise ConfigError(f"study: {plan.study!r} was created with another {key} ({diff}); "
                                          "use the same settings to resume it, or another --study")
                if meta_in.get("trials") and meta_in["trials"] != meta.get("trials"):
                    meta = {**meta, "trials": meta_in["trials"]}  # the latest budget, for joining workers
                    study.set_user_attr(_META, meta)
            return meta, storage
    finally:
        lock.close()


def _diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return f"{k}: {old.get(k)!r} then, {new.get(k)!r} now"
    return f"{old!r} then, {new!r} now"


def run_search(hp: Config | None = None, space: Space | Mapping[str, str] | str | os.PathLike | None = None, *,
               strategy: str = "random", trials: int | None = None, workers: int = 1, study: str | None = None,
               db: str | os.PathLike | None = None, storage: str | os.PathLike | None = None, prune: str = "none",
               epochs: int | None = None, seed: int | None = None, runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR,
               checkpoints: bool = True, heartbeat_s: int = DEFAULT_HEARTBEAT_S, grace_s: int | None = None,
               quiet: bool = False, deadline: float | None = None) -> SearchResult:
    """Search `space` around the config `hp` and return the ranked leaderboard.

    `trials` is the study's total (a grid defaults to, and is capped at, its number of points; random
    and TPE default to 20); running again with the same arguments resumes the study until that many
    trials have finished. `workers` > 1 runs that many processes on this machine, torch threads split
    between them. `db` is the trainlab store and `storage` Optuna's (each defaults to the other, then
    ./trainlab.db). `study` defaults to a name derived from config, space, strategy and pruning. With
    `space=None` and an existing `study`, the worker joins it with the settings it was created with
    (another machine's worker: `run_search(study="s", storage="postgresql://...")`).
    `epochs` overrides hp.epochs; `seed` (default hp.seed) seeds the samplers. `deadline` (a time.time()
    timestamp) bounds the search's wall-clock time: no trial starts after it, and a running trial stops at
    its next step (run status "stopped", reason "budget reached", told to Optuna as pruned).

    >>> r = run_search(Config(model="mlp", epochs=3), {"lr": "loguniform(1e-4, 1e-1)"}, trials=8)
    >>> r.best["params"], r.best["value"]
    """
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what Optuna's INFO lines would
    try:
        return _run_search(hp, space, strategy=strategy, trials=trials, workers=workers, study=study, db=db,
                           storage=storage, prune=prune, epochs=epochs, seed=seed, runs_dir=runs_dir,
                           checkpoints=checkpoints, heartbeat_s=heartbeat_s, grace_s=grace_s, quiet=quiet,
                           deadline=deadline)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run_search(hp, space, *, strategy, trials, workers, study, db, storage, prune, epochs, seed, runs_dir,
                checkpoints, heartbeat_s, grace_s, quiet, deadline=None) -> SearchResult:
    started = time.perf_counter()
    _check_choice("strategy", strategy, STRATEGIES)
    _check_choice("prune", prune, PRUNERS)
    if trials is not None and (not isinstance(trials, int) or trials < 1):
        raise ConfigError(f"trials: must be an integer >= 1, got {trials!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")
    if not isinstance(heartbeat_s, int) or heartbeat_s < 1:
        raise ConfigError(f"heartbeat_s: must be an integer >= 1 (seconds), got {heartbeat_s!r}")
    db_url = normalize_url(db if db is not None else storage)
    storage_url = normalize_url(storage if storage is not None else db)
    if workers > 1 and is_sqlite(storage_url) and (":memory:" in storage_url or storage_url in ("sqlite://",
                                                                                                  "sqlite:///")):
        raise ConfigError(f"storage: worker processes cannot share an in-memory database, got {storage_url!r}")
    join = space is None
    if join and study is None:
        raise ConfigError("space: give a search space (or --study NAME of an existing study to join)")

    if join:
        plan_meta: dict = {}
    else:
        base = hp if hp is not None else Config()
        if epochs is not None:
            base = apply_overrides(base, {"epochs": epochs})
        if isinstance(space, (str, os.PathLike)):
            from trainlab.search.space import load_space

            space = load_space(space, base)
        elif not isinstance(space, Space):
            space = parse_space(space, base)
        if strategy == "grid":
            space.grid()  # ConfigError naming a continuous parameter
        study = study or default_study_name(base, space, strategy, prune)
        plan_meta = {"strategy": strategy, "prune": prune, "space": space.to_dict(),
                     "config": base.model_dump(mode="json"), "seed": base.seed if seed is None else seed,
                     "metric": base.early_stop_metric, "mode": base.mode, "trials": trials}
    plan = _Plan(study=study, db=db_url, storage=storage_url, strategy=strategy, prune=prune, space={}, config={},
                 trials=0, seed=0, heartbeat_s=heartbeat_s, grace_s=grace_s or 3 * heartbeat_s,
                 runs_dir=str(runs_dir), checkpoints=checkpoints, quiet=quiet, workers=workers, deadline=deadline)
    meta, ostorage = _prepare(plan, plan_meta, join)
    plan.strategy, plan.prune, plan.space, plan.config, plan.seed = (
        meta["strategy"], meta["prune"], meta["space"], meta["config"], meta["seed"])
    space = parse_space(plan.space)
    size = space.grid_size() if plan.strategy == "grid" else None
    n = trials or meta.get("trials") or size or DEFAULT_TRIALS
    if size is not None and n > size:
        _log(plan, f"grid: {size} points, so {size} trials (not {n}): a grid never repeats a point")
        n = size
    plan.trials = n

    ostudy = load_study(study, ostorage)
    before = _finished(ostudy.get_trials(deepcopy=False))
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        _log(plan, f"search {study}: {plan.strategy}" + (f" + {plan.prune} pruning" if plan.prune != "none" else "")
             + f", {n} trials, {workers} worker{'s' if workers > 1 else ''}; store {hide_password(db_url)}"
             + (f", Optuna storage {hide_password(storage_url)}" if storage_url != db_url else ""))
        bar = tqdm(total=n, initial=min(before, n), unit="trial", desc="trials", dynamic_ncols=True, leave=False)
    exitcodes: list[int] = []
    try:
        if workers == 1:
            _work(plan, bar=bar, on_trial=(lambda: _update_bar(bar, ostudy, n)) if bar is not None else None,
                  check=False)
        else:
            exitcodes = _run_workers(plan, workers, bar, ostudy, n)
    finally:
        if bar is not None:
            _update_bar(bar, ostudy, n)
            bar.close()
    rows = leaderboard(study, db_url, ostorage)
    trials_now = ostudy.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    best = next((r for r in rows if r["status"] == "completed" and r["value"] is not None), None)
    best_hp = apply_overrides(make_config(plan.config), best["params"]).model_dump(mode="json") if best else None
    return SearchResult(study=study, strategy=plan.strategy, prune=plan.prune, metric=meta["metric"],
                        db=hide_password(db_url), storage=hide_password(storage_url), trials=n, leaderboard=rows, best=best,
                        best_hparams=best_hp, counts=counts, complete=_finished(trials_now) >= n,
                        seconds=time.perf_counter() - started, workers=workers, worker_exitcodes=exitcodes)


def _update_bar(bar, ostudy, n: int) -> None:
    done = min(_finished(ostudy.get_trials(deepcopy=False)), n)
    if done > bar.n:
        bar.update(done - bar.n)


def _run_workers(plan: _Plan, workers: int, bar, ostudy, n: int) -> list[int]:
    """Spawn `workers` processes, each with cores // workers torch threads; wait for all of them."""
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, _cores() // workers)
    procs = []
    for i in range(workers):
        p = ctx.Process(target=_worker_main, args=(_Plan(**{**asdict(plan), "worker": i, "threads": threads}),),
                        name=f"trainlab-search-worker-{i}")
        p.start()
        procs.append(p)
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=1.0)
                if bar is not None:
                    _update_bar(bar, ostudy, n)
    except KeyboardInterrupt:
        for p in procs:  # each worker got the SIGINT too: it requeues its trial and exits
            p.join(timeout=30)
        raise
    for i, p in enumerate(procs):
        if p.exitcode:
            how = f"killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exited with status {p.exitcode}"
            _log(plan, f"worker {i} (pid {p.pid}) {how}; a trial it was running is retried by another worker "
                       "once its heartbeat is stale", bar)
    return [p.exitcode for p in procs]
