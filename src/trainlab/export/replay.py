"""Replaying stored runs into a format, and the loggers by name: `export_runs`, `make_logger`, `logger_from_spec`."""

from __future__ import annotations

from typing import Iterable

from trainlab.export.csv import CsvLogger
from trainlab.export.mlflow import MlflowLogger
from trainlab.export.tensorboard import TensorBoardLogger
from trainlab.store import Store, hide_password

__all__ = ["FORMATS", "DEFAULT_OUT", "export_runs", "logger_from_spec", "make_logger"]

FORMATS = ("tensorboard", "mlflow", "csv")
DEFAULT_OUT = {"tensorboard": "export-tensorboard", "mlflow": "export-mlflow", "csv": "export-csv"}


def make_logger(fmt: str, dest: str, *, replace: bool = False, store_url: str | None = None):
    """A logger for `fmt` writing under `dest`. `replace`: an export, which replaces what an earlier export
    of the same run wrote; otherwise a stream, which goes on where a resumed run left off."""
    if fmt == "tensorboard":
        return TensorBoardLogger(dest, replace=replace)
    if fmt == "mlflow":
        return MlflowLogger(dest, replace=replace, store_url=store_url)
    if fmt == "csv":
        return CsvLogger(dest, replace=replace)
    raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")


def logger_from_spec(spec: str):
    """A streaming logger from `KIND:DEST` (tensorboard:tb/, mlflow:mlflow/ or mlflow:URI, csv:out/)."""
    kind, sep, dest = spec.partition(":")
    if not sep or not dest or kind not in FORMATS:
        raise ValueError(f"--log-to: expected KIND:DEST with KIND one of {', '.join(FORMATS)}, got {spec!r}")
    return make_logger(kind, dest)


def _rows(metrics: dict[str, dict[str, list]]) -> list[tuple[int, int | None, str, float]]:
    """A run's stored series as (step, epoch, key, value) rows in step order (keys in a fixed order per step)."""
    rows = [(s, e, key, v) for key, series in metrics.items()
            for s, e, v in zip(series["step"], series["epoch"], series["value"])]
    rows.sort(key=lambda r: r[0])
    return rows


def export_runs(store: Store, run_ids: Iterable[int], fmt: str, dest: str, *, chunk: int = 20_000) -> list[dict]:
    """Replay stored runs into `fmt` under `dest`: each run's every metric series, hyperparameters, status
    and reason, and its summary's numbers. Exporting a run again replaces what the last export of it wrote.
    Returns one dict per run: id, name, status, rows (metric rows written), where."""
    done = []
    for run_id in run_ids:
        run = store.run(run_id)
        logger = make_logger(fmt, dest, replace=True, store_url=hide_password(store.url))
        logger.start({**run, "status": "running"})
        rows = _rows(store.metrics(run_id))
        for i in range(0, len(rows), chunk):
            logger.log(rows[i:i + chunk])
        logger.finish(run)
        done.append({"id": run_id, "name": run["name"], "study": run.get("study"), "status": run["status"],
                     "rows": len(rows), "where": logger.where})
    return done
