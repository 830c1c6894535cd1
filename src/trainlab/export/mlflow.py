"""MLflow: one MLflow run per trainlab run, in an experiment named after its study, through MlflowClient.

`dest` is a folder (the runs go to the SQLite tracking store DEST/mlflow.db: MLflow's own local default
since its file store was put in maintenance mode; `mlflow ui --backend-store-uri sqlite:///DEST/mlflow.db`
shows them) or any tracking URI (sqlite:///..., postgresql://..., http://..., file:DIR where MLflow
allows file stores). Every metric series with its steps, every hyperparameter as a param, the summary's
numbers as final metrics, and tags trainlab.run_id, trainlab.status, trainlab.reason, trainlab.kind,
trainlab.study, trainlab.store. The MLflow run's status: FINISHED (completed), FAILED (failed,
diverged, lost), KILLED (stopped, pruned).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

from trainlab.export.base import need, scalars

__all__ = ["MlflowLogger", "RUN_STATUS", "tracking_uri"]

RUN_STATUS = {"completed": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "lost": "FAILED",
              "stopped": "KILLED", "pruned": "KILLED", "running": "RUNNING"}
NO_STUDY = "trainlab"        # the experiment of runs filed under no study
_MAX_PARAM = 6000            # MLflow's longest param value
_BATCH = 1000                # MLflow's most metrics per log_batch


def tracking_uri(dest: str, create: bool = False) -> str:
    """A folder -> sqlite:///<folder>/mlflow.db (the folder made when `create`); a URI (has ':' after 2+
    letters) as given."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", dest):
        return dest
    folder = Path(dest).resolve()
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


class MlflowLogger:
    """One MLflow run per trainlab run, in the experiment named after its study. Nothing touches the tracking
    store before `start` (a target that fails is the run's logger's fault, not the command's). A resumed
    run (`resume_step` in `start`) goes on in the MLflow run found by its tags (trainlab.run_id and
    trainlab.store), the same MLflow run id. MLflow cannot delete metric values: rows that a killed process
    wrote past its last checkpoint stay in MLflow's history beside the resumed run's (after a SIGTERM stop
    there are none); `trainlab export mlflow RUN` replaces the run with exactly the store's rows."""

    fmt = "mlflow"

    def __init__(self, dest: str, *, replace: bool = False, store_url: str | None = None):
        need("mlflow", "mlflow")
        import logging

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial MLflow database tables..."
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # its database errors come to us as exceptions (a streaming logger's fault is one warning line, from
        # train.loggers); not also logged by MLflow with their traceback
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self.dest = dest
        self.uri = tracking_uri(dest)
        self.client = None
        self.replace = replace
        self.store_url = store_url
        self.run_id: str | None = None
        self.where: str | None = None
        self._last_step = 0

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        return self.client.create_experiment(name)

    def start(self, run: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        if self.client is None:
            self.uri = tracking_uri(self.dest, create=True)
            self.client = MlflowClient(tracking_uri=self.uri)
        # a logger may serve several runs, one after another (train --set seeds=K)
        self._last_step = max(0, int(run["resume_step"]) - 1) if run.get("resume_step") is not None else 0
        experiment = self._experiment(run.get("study") or NO_STUDY)
        earlier = []
        self.store_url = self.store_url or run.get("store")  # streaming: fit names the store
        if run.get("id") is not None:
            query = f"tags.`trainlab.run_id` = '{run['id']}'"
            if self.store_url:
                query += f" and tags.`trainlab.store` = '{self.store_url}'"
            earlier = self.client.search_runs([experiment], query)
        if earlier and not self.replace:  # a resumed run goes on in its MLflow run
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            for old in earlier:  # an earlier export of this run: replaced, not doubled
                self.client.delete_run(old.info.run_id)
            tags = {"trainlab.run_id": str(run.get("id")), "trainlab.kind": str(run.get("kind") or "train"),
                    "trainlab.study": run.get("study") or "", "trainlab.status": "running"}
            if self.store_url:
                tags["trainlab.store"] = self.store_url
            self.run_id = self.client.create_run(experiment, run_name=run.get("name"), tags=tags).info.run_id
            self._params(run.get("hparams") or {})
        self.where = f"{self.uri} experiment {run.get('study') or NO_STUDY!r} run {self.run_id}"

    def _params(self, hparams: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:_MAX_PARAM]) for k, v in hparams.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _metrics(self, rows: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, value, stamp, step) for key, value, step in rows]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + _BATCH])

    def log(self, rows: Sequence[tuple]) -> None:
        self._metrics([(key, float(value), int(step)) for step, _epoch, key, value in rows])
        if rows:
            self._last_step = max(self._last_step, int(rows[-1][0]))

    def finish(self, run: dict[str, Any]) -> None:
        final = {f"summary/{k}": v for k, v in scalars(run.get("summary")).items()}
        if run.get("best_metric") is not None:
            final["summary/best_metric"] = float(run["best_metric"])
        self._metrics([(k, v, self._last_step) for k, v in final.items()])
        status = run.get("status") or "completed"
        self.client.set_tag(self.run_id, "trainlab.status", status)
        self.client.set_tag(self.run_id, "trainlab.reason", (run.get("reason") or "")[:5000])
        if status == "running":  # an export of a run still training: a snapshot, not ended
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.client.set_terminated(self.run_id, RUN_STATUS.get(status, "FAILED"))
