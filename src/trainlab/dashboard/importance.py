"""Hyperparameter importance of a study, from Optuna, for the study page.

`trainlab search` keeps its Optuna study under the trainlab study's name, in the same database, so the
dashboard opens Optuna's tables read-only on the store's own URL (`Store.url`, already read-only) and asks
`optuna.importance.get_param_importances` (Optuna's default evaluator, PED-ANOVA, on the completed trials).
Optuna is imported only when a page asks: the dashboard starts without it.

Few trials make a shaky ranking: the answer says how many completed trials it rests on, and flags fewer
than FEW_TRIALS. For history, contour, slice and intermediate-value plots of the same study, the page
points at optuna-dashboard, which opens the same database (`optuna_dashboard_command`).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any
from urllib.parse import unquote

from trainlab.store import Store, hide_password

__all__ = ["Importance", "FEW_TRIALS", "optuna_dashboard_command"]

FEW_TRIALS = 20   # below this many completed trials the ranking is flagged as resting on few trials
MIN_TRIALS = 2    # Optuna needs at least this many completed trials


def optuna_dashboard_command(url: str) -> str:
    """The command that opens ``url`` (a store URL, perhaps the read-only form) in optuna-dashboard.

    >>> optuna_dashboard_command("sqlite:///file:/tmp/runs.db?mode=ro&uri=true")
    'optuna-dashboard sqlite:////tmp/runs.db'
    """
    if url.startswith("sqlite:///file:"):
        path = unquote(url[len("sqlite:///file:"):].split("?", 1)[0])
        url = "sqlite:///" + path
    elif "options=" in url:  # the read-only option the store added to a PostgreSQL URL
        url = url.split("?", 1)[0]
    return "optuna-dashboard " + hide_password(url)


class Importance:
    """Importances per study name, computed once per state of its trials (count and finished count).

    >>> Importance(store).get("sweep")["importances"]   # [{"name": "lr", "importance": 0.93}, ...]
    """

    def __init__(self, store: Store):
        self.store = store
        self._storage = None
        self._cache: dict[str, tuple[tuple, dict]] = {}
        self._lock = threading.Lock()

    def _open(self):
        import optuna

        if self._storage is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._storage = optuna.storages.RDBStorage(self.store.url, skip_table_creation=True,
                                                       skip_compatibility_check=True)
        return self._storage

    def get(self, study_name: str) -> dict[str, Any]:
        """{"available", "study", "importances": [{"name", "importance"}], "trials": counts per state,
        "completed", "few", "evaluator", "note", "optuna_dashboard"}."""
        out: dict[str, Any] = {"available": False, "study": study_name, "importances": [], "trials": {},
                               "completed": 0, "few": False, "evaluator": None,
                               "optuna_dashboard": optuna_dashboard_command(self.store.url)}
        try:
            import optuna
        except ImportError:  # a core dependency, but the dashboard must start without it
            return {**out, "note": "Optuna is not installed"}
        with self._lock:
            try:
                storage = self._open()
                study = optuna.load_study(study_name=study_name, storage=storage)
            except KeyError:
                return {**out, "note": f"no Optuna study named {study_name!r} in this store: importance needs a "
                                       "study run by trainlab search"}
            except Exception as err:  # no Optuna tables at all (a store that never searched), or unreadable
                first = str(getattr(err, "orig", err)).splitlines()[0] if str(err) else type(err).__name__
                self._storage = None
                return {**out, "note": f"no Optuna study in this store ({first})"}
            trials = study.get_trials(deepcopy=False)
            counts: dict[str, int] = {}
            for t in trials:
                counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
            completed = counts.get("complete", 0)
            state = (len(trials), completed, sum(t.number for t in trials if t.state.is_finished()))
            cached = self._cache.get(study_name)
            if cached is not None and cached[0] == state:
                return cached[1]
            out.update(trials=counts, completed=completed, few=completed < FEW_TRIALS)
            if completed < MIN_TRIALS:
                out["note"] = f"needs at least {MIN_TRIALS} completed trials; the study has {completed}"
            else:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        found = optuna.importance.get_param_importances(study)
                except (RuntimeError, ValueError) as err:
                    out["note"] = f"not computed: {str(err).splitlines()[0]}"
                else:
                    out.update(available=True, evaluator="PED-ANOVA (Optuna's default)",
                               importances=[{"name": k, "importance": float(v)} for k, v in found.items()])
                    out["note"] = (f"rests on only {completed} completed trials: a hint, not a ranking"
                                   if out["few"] else f"from {completed} completed trials")
            self._cache[study_name] = (state, out)
            return out
