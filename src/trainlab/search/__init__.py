"""Hyperparameter search on Optuna: the space (`space`), where a study lives (`storage`), running trials
in worker processes (`runner`) and the study's HTML report (`report`)."""

from trainlab.search.runner import (
                                    DEFAULT_HEARTBEAT_S,
                                    DEFAULT_TRIALS,
                                    PRUNERS,
                                    STRATEGIES,
                                    PruningCallback,
                                    SearchResult,
                                    default_study_name,
                                    leaderboard,
                                    run_search,
                                    study_meta,
)

__all__ = ["run_search", "SearchResult", "PruningCallback", "leaderboard", "study_meta", "default_study_name",
           "STRATEGIES", "PRUNERS", "DEFAULT_TRIALS", "DEFAULT_HEARTBEAT_S"]
