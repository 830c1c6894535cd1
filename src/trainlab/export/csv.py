"""CSV: DEST/runs.csv (one row per run: id, name, study, kind, status, reason, best metric, epochs, the
summary's numbers as summary.<key> and the hyperparameters as hp.<name>) and DEST/metrics/run-<id>-<name>.csv
(step, epoch, key, value: every series, long format, as pandas reads it with one call)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

from trainlab.export.base import run_label, scalars

__all__ = ["CsvLogger", "RUN_COLUMNS"]

RUN_COLUMNS = ["id", "name", "study", "kind", "status", "reason", "best_metric", "best_epoch", "epochs", "created",
               "finished"]


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else value


class CsvLogger:
    """DEST/runs.csv and DEST/metrics/run-<id>-<name>.csv (see the module's docstring). A resumed run
    (`resume_step` in `start`) keeps its file's rows before that step and appends the rest."""

    fmt = "csv"

    def __init__(self, dest: str | Path, *, replace: bool = False):
        self.root = Path(dest)
        self.replace = replace
        self.where: str | None = None
        self._path: Path | None = None

    def start(self, run: dict[str, Any]) -> None:
        (self.root / "metrics").mkdir(parents=True, exist_ok=True)
        self._path = self.root / "metrics" / f"{run_label(run)}.csv"
        self.where = str(self._path)
        self._run = run
        resume = run.get("resume_step")
        if self.replace or resume is None or not self._path.exists():
            self._atomic(self._path, [["step", "epoch", "key", "value"]])
        else:  # rows from the resume step on were written by the process that stopped: written again now
            with open(self._path, newline="") as f:
                kept = [r for i, r in enumerate(csv.reader(f)) if i == 0 or int(r[0]) < int(resume)]
            self._atomic(self._path, kept)
        self._write_run(run)

    def log(self, rows: Sequence[tuple]) -> None:
        if not rows:
            return
        with open(self._path, "a", newline="") as f:
            csv.writer(f).writerows((int(s), "" if e is None else int(e), k, float(v)) for s, e, k, v in rows)

    def finish(self, run: dict[str, Any]) -> None:
        self._write_run(run)

    def _write_run(self, run: dict[str, Any]) -> None:
        """Put this run's row into runs.csv (replacing an earlier one of the same id and name)."""
        path = self.root / "runs.csv"
        rows: list[dict] = []
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if (r.get("id"), r.get("name")) != (str(run.get("id")), run.get("name"))]
        row = {c: _cell(run.get(c)) for c in RUN_COLUMNS}
        row.update({f"summary.{k}": v for k, v in scalars(run.get("summary")).items()})
        row.update({f"hp.{k}": _cell(v) for k, v in (run.get("hparams") or {}).items()})
        rows.append(row)
        rows.sort(key=lambda r: (int(r["id"]) if str(r.get("id") or "").isdigit() else -1))
        columns = list(dict.fromkeys([*RUN_COLUMNS, *(k for r in rows for k in r if k.startswith("summary.")),
                                      *(k for r in rows for k in r if k.startswith("hp."))]))
        self._atomic(path, [columns] + [[r.get(c, "") for c in columns] for r in rows])

    @staticmethod
    def _atomic(path: Path, rows: list[list]) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)
        os.replace(tmp, path)
