"""A worker for tests/search/test_search.py that hammers one SQLite file with Optuna and store writes; a module of its
own so that spawned processes import only optuna and trainlab's storage, not the test module."""

import optuna

from trainlab.search.storage import StudyLock, open_storage
from trainlab.store import Store


def hammer(db: str, study: str, n: int, queue) -> None:
    """A process that claims, heartbeats and finishes `n` trials as fast as it can, with store writes."""
    try:
        storage = open_storage(db, heartbeat_s=1)
        store = Store(db)
        lock = StudyLock(f"sqlite:///{db}")
        s = optuna.load_study(study_name=study, storage=storage)
        for _ in range(n):
            with lock.hold(study):
                trial = s.ask()
                storage.record_heartbeat(trial._trial_id)
            x = trial.suggest_float("x", 0, 1)
            run = store.create_run(name=f"trial-{trial.number}", hparams={"x": x}, study=study)
            store.log_metrics(run, [(0, 1, "val/acc", x)])
            storage.record_heartbeat(trial._trial_id)
            store.finish_run(run, "completed", best_metric=x)
            s.tell(trial, x)
        queue.put("ok")
    except Exception as err:  # reported to the test, which fails on it
        queue.put(f"{type(err).__name__}: {err}")
