"""Optuna's pieces as trainlab uses them: the sampler for a strategy, the pruner, the fit() callback that
reports to a trial, telling a result, and what happens to a trial that went stale or was interrupted.

Diverged trials are recorded as "diverged" in the store and told to Optuna as PRUNED, not FAILED: TPE
ranks pruned trials below every completed one but ignores failed ones, and a region that diverges
should be learned as bad. Sampler seeds: grid uses `seed` (all workers must agree on the grid's
order); random and TPE reseed per trial from (seed, trial number), so different workers never draw the
same sequence and one worker's search is reproducible.
"""

from __future__ import annotations

import math
import warnings

from trainlab.search.leaderboard import run_name
from trainlab.search.space import Space
from trainlab.store import Store

__all__ = ["STRATEGIES", "PRUNERS", "make_sampler", "make_pruner", "PruningCallback", "OnStaleTrial", "tell",
           "requeue"]

STRATEGIES = ("grid", "random", "tpe")
PRUNERS = ("none", "sha", "hyperband", "median")


def make_sampler(strategy: str, space: Space, seed: int, trial_number: int, trials: int):
    """The sampler that asks for trial `trial_number` of a `trials`-trial search (see the module's note on seeds)."""
    import optuna

    if strategy == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    trial_seed = (seed * 1_000_003 + trial_number) % 2**32
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=trial_seed)
    # Fewer random start-up trials for small budgets, so that TPE gets to model something.
    return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=min(10, max(2, trials // 3)),
                                      constant_liar=True)


def make_pruner(prune: str, epochs: int | None):
    """The pruner for `prune` (one of PRUNERS); `epochs` is Hyperband's most resource (None: "auto")."""
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


class OnStaleTrial:
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
        for run in self.store.runs(study=study.study_name):
            if run["name"] == run_name(trial.number) and run["status"] in ("running", "lost"):
                self.store.finish_run(run["id"], "failed", reason=f"worker lost: no heartbeat for "
                                      f"{self.grace_s} s (trial {trial.number}); {what}")


def tell(study, trial, value: float | None = None, state=None) -> None:
    """study.tell, tolerating GridSampler's known ask/tell quirk: after the last grid point its after_trial
    calls study.stop(), which raises RuntimeError outside optimize() once the trial is already recorded
    (optuna/optuna#4121, #5141; documented by #5153)."""
    try:
        study.tell(trial, value, state=state, skip_if_finished=True)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def requeue(study, number: int) -> None:
    """Queue the params of finished trial `number` again (its place in the budget goes to the copy)."""
    import optuna

    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)
