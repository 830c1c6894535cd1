"""Hyperparameter search through Optuna: `run_search`, which checks its arguments, creates (or resumes, or
joins) the study and runs its trials in this process or in worker processes (`workers.py`).

Optuna does what it is built for: sampling (GridSampler, RandomSampler, TPESampler), pruning
(SuccessiveHalvingPruner, HyperbandPruner, MedianPruner) and the study's shared state (RDBStorage).
trainlab adds the space syntax (`space.py`), the execution (every trial is a full `fit()` run in the
store, tagged with the study), the trial budget and crash recovery (`workers.py`), Optuna's pieces as
used here (`optuna_glue.py`) and the leaderboard (`leaderboard.py`).

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
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Mapping

from trainlab.config import DEFAULT_RUNS_DIR, Config, ConfigError, apply_overrides, make_config
from trainlab.search.leaderboard import (
    META_KEY,
    SearchResult,
    best_row,
    finished,
    leaderboard,
    status_counts,
    study_meta,
)
from trainlab.search.optuna_glue import PRUNERS, STRATEGIES
from trainlab.search.space import Space, parse_space
from trainlab.search.storage import StudyLock, is_sqlite, load_study, open_storage
from trainlab.search.workers import WorkerPlan, interrupts, log, run_workers, update_bar, work, workers_needed
from trainlab.store import Store, hide_password, normalize_url

__all__ = ["run_search", "default_study_name", "DEFAULT_TRIALS", "DEFAULT_HEARTBEAT_S", "GRACE_HEARTBEATS",
           "DEFAULT_WORKERS", "DEFAULT_STRATEGY", "DEFAULT_PRUNE"]

DEFAULT_STRATEGY = "random"  # one of STRATEGIES
DEFAULT_PRUNE = "none"       # one of PRUNERS
DEFAULT_TRIALS = 20          # random/TPE budget when none is given; a grid defaults to its size
DEFAULT_WORKERS = 1          # worker processes of a search (the recipe chooses its own: workers.default_workers)
DEFAULT_HEARTBEAT_S = 10     # Optuna heartbeat interval, seconds
GRACE_HEARTBEATS = 3         # a trial silent for this many heartbeat intervals is stale (grace_s's default)


def default_study_name(hp: Config, space: Space, strategy: str, prune: str) -> str:
    """A name that is the same for the same search, so that re-running a command resumes it."""
    spec = json.dumps({"config": hp.model_dump(mode="json"), "space": space.to_dict(), "strategy": strategy,
                       "prune": prune}, sort_keys=True)
    return f"search-{strategy}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")


def _prepare(plan: WorkerPlan, meta_in: dict, join: bool):
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
                study.set_user_attr(META_KEY, meta_in)
                return meta_in, storage
            meta = study_meta(study)
            if meta is None and not join and _unfinished_creation(study, meta_in):
                study.set_user_attr(META_KEY, meta_in)  # created, then stopped before its meta was written
                return meta_in, storage
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
                    study.set_user_attr(META_KEY, meta)
            return meta, storage
    finally:
        lock.close()


def _unfinished_creation(study, meta_in: dict) -> bool:
    """A study with no meta, no trials and this search's direction: ours, stopped between its two writes."""
    import optuna

    want = optuna.study.StudyDirection.MAXIMIZE if meta_in["mode"] == "max" else optuna.study.StudyDirection.MINIMIZE
    return (not study.user_attrs and study.directions == [want]
            and not study.get_trials(deepcopy=False))


def _diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return f"{k}: {old.get(k)!r} then, {new.get(k)!r} now"
    return f"{old!r} then, {new!r} now"


def run_search(hp: Config | None = None, space: Space | Mapping[str, str] | str | os.PathLike | None = None, *,
               strategy: str = DEFAULT_STRATEGY, trials: int | None = None, workers: int = DEFAULT_WORKERS,
               study: str | None = None, db: str | os.PathLike | None = None,
               storage: str | os.PathLike | None = None, prune: str = DEFAULT_PRUNE,
               epochs: int | None = None, seed: int | None = None, runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR,
               checkpoints: bool = True, heartbeat_s: int = DEFAULT_HEARTBEAT_S, grace_s: int | None = None,
               quiet: bool = False, deadline: float | None = None) -> SearchResult:
    """Search `space` around the config `hp` and return the ranked leaderboard.

    `trials` is the study's total (a grid defaults to, and is capped at, its number of points; random
    and TPE default to DEFAULT_TRIALS, 20); running again with the same arguments resumes the study until that many
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


def _task_metric(base: Config) -> Config:
    """`base` with the metric its task is judged by (a regression task: val/loss, min), so the study's direction
    is the one the trials' `fit` uses (`metrics.for_task`). Built-in tasks are classifiers: nothing to load."""
    from trainlab.metrics import for_task
    from trainlab.tasks import BUILTIN_TASKS, load_task

    if base.early_stop_metric != "val/acc" or base.task in BUILTIN_TASKS:
        return base
    return for_task(base, load_task(base).task_metrics)[0]


def _run_search(hp, space, *, strategy, trials, workers, study, db, storage, prune, epochs, seed, runs_dir,
                checkpoints, heartbeat_s, grace_s, quiet, deadline=None) -> SearchResult:
    started = time.perf_counter()
    _check_choice("strategy", strategy, STRATEGIES)
    _check_choice("prune", prune, PRUNERS)
    if trials is not None and (not isinstance(trials, int) or trials < 1):
        raise ConfigError(f"trials: must be an integer >= 1, got {trials!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")
    if not isinstance(heartbeat_s, int) or not 1 <= heartbeat_s <= 86_400:
        raise ConfigError(f"heartbeat_s: must be an integer in [1, 86400] (seconds), got {heartbeat_s!r}")
    if seed is not None and (not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1):
        raise ConfigError(f"seed: must be an integer in [0, 4294967295], got {seed!r}")
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
        base = _task_metric(base)
        if isinstance(space, (str, os.PathLike)):
            from trainlab.search.space import load_space

            space = load_space(space, base)
        elif not isinstance(space, Space):
            space = parse_space(space, base)
        if strategy == "grid":
            space.grid()  # ConfigError naming a continuous parameter
        from trainlab.preflight import load_checked_task

        load_checked_task(base)  # pre-flight of the task's data and base model: one line, before a study exists
        study = study or default_study_name(base, space, strategy, prune)
        plan_meta = {"strategy": strategy, "prune": prune, "space": space.to_dict(),
                     "config": base.model_dump(mode="json"), "seed": base.seed if seed is None else seed,
                     "metric": base.early_stop_metric, "mode": base.mode, "trials": trials}
    plan = WorkerPlan(study=study, db=db_url, storage=storage_url, strategy=strategy, prune=prune, space={},
                      config={}, trials=0, seed=0, heartbeat_s=heartbeat_s,
                      grace_s=grace_s or GRACE_HEARTBEATS * heartbeat_s, runs_dir=str(runs_dir),
                      checkpoints=checkpoints, quiet=quiet, workers=workers, deadline=deadline)
    meta, ostorage = _prepare(plan, plan_meta, join)
    plan.strategy, plan.prune, plan.space, plan.config, plan.seed = (
        meta["strategy"], meta["prune"], meta["space"], meta["config"], meta["seed"])
    space = parse_space(plan.space)
    size = space.grid_size() if plan.strategy == "grid" else None
    n = trials or meta.get("trials") or size or DEFAULT_TRIALS
    if size is not None and n > size:
        log(plan, f"grid: {size} points, so {size} trials (not {n}): a grid never repeats a point")
        n = size
    plan.trials = n

    ostudy = load_study(study, ostorage)
    before = finished(ostudy.get_trials(deepcopy=False))
    capped = workers_needed(ostudy.get_trials(deepcopy=False), n, workers)
    if capped < workers:
        log(plan, f"{capped} worker{'s' if capped > 1 else ''}, not {workers}: "
                  f"{'only ' if capped > 1 else ''}{capped} trial{'s' if capped > 1 else ''} left to run")
        workers = plan.workers = capped
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        log(plan, f"search {study}: {plan.strategy}" + (f" + {plan.prune} pruning" if plan.prune != "none" else "")
            + f", {n} trials, {workers} worker{'s' if workers > 1 else ''}; store {hide_password(db_url)}"
            + (f", Optuna storage {hide_password(storage_url)}" if storage_url != db_url else ""))
        bar = tqdm(total=n, initial=min(before, n), unit="trial", desc="trials", dynamic_ncols=True, leave=False)
    exitcodes: list[int] = []
    try:
        with interrupts():  # SIGINT or SIGTERM: running trials stop (runs "stopped") and are queued again
            if workers == 1:
                work(plan, bar=bar, on_trial=(lambda: update_bar(bar, ostudy, n)) if bar is not None else None,
                     check=False)
            else:
                exitcodes = run_workers(plan, workers, bar, ostudy, n)
    finally:
        if bar is not None:
            update_bar(bar, ostudy, n)
            bar.close()
    rows = leaderboard(study, db_url, ostorage)
    trials_now = ostudy.get_trials(deepcopy=False)
    counts = status_counts(rows)
    best = best_row(rows)
    best_hp = apply_overrides(make_config(plan.config), best["params"]).model_dump(mode="json") if best else None
    return SearchResult(study=study, strategy=plan.strategy, prune=plan.prune, metric=meta["metric"],
                        db=hide_password(db_url), storage=hide_password(storage_url), trials=n, leaderboard=rows, best=best,
                        best_hparams=best_hp, counts=counts, complete=finished(trials_now) >= n,
                        seconds=time.perf_counter() - started, workers=workers, worker_exitcodes=exitcodes)


