"""What a study holds, read back: its trials counted (finished, taking a place in the budget, replaced by a
retry), ranked into the leaderboard, and the `SearchResult` that `run_search` returns.

A trial's run in the store is named `run_name(trial.number)` and filed under the study's name, which is
how a leaderboard row finds the run's status, best metric and epochs.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from trainlab.search.storage import load_study
from trainlab.store import Store

__all__ = ["SearchResult", "leaderboard", "study_meta", "run_name", "superseded", "budget_used", "finished",
           "status_counts", "best_row", "META_KEY"]

META_KEY = "trainlab"   # study user attribute holding what the study was created with


def study_meta(study) -> dict | None:
    """What a trainlab study was created with: strategy, prune, space, config, seed, trials, metric, mode."""
    return study.user_attrs.get(META_KEY)


def run_name(number: int) -> str:
    """The store run's name for trial `number`."""
    return f"trial-{number}"


# --- counting trials -------------------------------------------------------------------------------------

def superseded(trials) -> set[int]:
    """Numbers of trials that a retry replaced (a stale trial, or one interrupted by Ctrl-C)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def budget_used(trials) -> int:
    """Trials that take a place in the budget: all but those replaced by a retry."""
    gone = superseded(trials)
    return sum(1 for t in trials if t.number not in gone)


def finished(trials) -> int:
    """Finished trials (complete, pruned or failed) that no retry replaced: the search's progress."""
    gone = superseded(trials)
    return sum(1 for t in trials if t.state.is_finished() and t.number not in gone)


def status_counts(rows: list[dict]) -> dict[str, int]:
    """{status: number of leaderboard rows}."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def best_row(rows: list[dict]) -> dict | None:
    """The top completed row with a value (rows ranked by `leaderboard`), or None."""
    return next((r for r in rows if r["status"] == "completed" and r["value"] is not None), None)


# --- the leaderboard ------------------------------------------------------------------------------------

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
    gone = superseded(trials)
    rows = []
    for t in trials:
        run = runs.get(run_name(t.number))
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
