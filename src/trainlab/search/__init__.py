"""Hyperparameter search on Optuna: the space (`space`), where a study lives (`storage`), Optuna's samplers,
pruners and callbacks as used here (`optuna_glue`), worker processes and the trial budget (`workers`), the
leaderboard (`leaderboard`), `run_search` (`runner`) and the study's HTML report (`report`)."""

from trainlab.search.leaderboard import SearchResult, leaderboard, study_meta
from trainlab.search.optuna_glue import PRUNERS, STRATEGIES, PruningCallback
from trainlab.search.runner import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_PRUNE,
    DEFAULT_STRATEGY,
    DEFAULT_TRIALS,
    DEFAULT_WORKERS,
    GRACE_HEARTBEATS,
    default_study_name,
    run_search,
)
from trainlab.search.workers import cpu_cores, default_workers, threads_per_worker

__all__ = ["run_search", "SearchResult", "PruningCallback", "leaderboard", "study_meta", "default_study_name",
           "STRATEGIES", "PRUNERS", "DEFAULT_TRIALS", "DEFAULT_HEARTBEAT_S", "DEFAULT_WORKERS", "DEFAULT_STRATEGY",
           "DEFAULT_PRUNE", "GRACE_HEARTBEATS", "cpu_cores", "default_workers", "threads_per_worker"]
