"""The run store: studies, runs, their hyperparameters and results, and metrics.

`Store` reads and writes the tables of `schema` (studies, runs, metrics and their summary blocks) on
an engine from `engine`: SQLite by default (WAL, a busy timeout, BEGIN IMMEDIATE for writes, so many
processes write one file and no row is lost), PostgreSQL when many machines share one database.
Opened ``read_only``, it cannot write and creates nothing (the dashboard's store).

A metric value of NaN is stored as NULL (SQLite turns a NaN into NULL anyway; doing it on every
backend keeps them alike) and read back as NaN; infinities are stored as they are. Times are UTC ISO
8601 strings (see `values`).

`Store` stays one class (~400 lines): one connection policy (read and write transactions, fork safety,
the run-exists check) over four tables; its metric queries live in `reads`, its checks in `values`.

Example (MetricBuffer: `buffer`)::

    store = Store("runs.db")
    run = store.create_run(name="lr=0.1", hparams={"lr": 0.1}, study="lr-sweep")
    buf = MetricBuffer(store, run)
    for step in range(1000):
        buf.add(step, step // 100, "train_loss", 1.0 / (step + 1))
    buf.flush()
    store.finish_run(run, "completed", best_metric=0.93, best_epoch=9)
    store.metrics(run)["train_loss"]["value"][:2]   # [1.0, 0.5]
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from trainlab.store.reads import buckets_of_series, keys_of_run, series_of_run
from trainlab.store.engine import hide_password, is_in_memory, make_engine, normalize_url, read_only_url, write_engine
from trainlab.store.errors import classify
from trainlab.store.liveness import LOST_AFTER_S, RunBusy, age_s, derived_status, this_node
from trainlab.store.schema import (
    ADDED_RUN_COLUMNS,
    RUN_STATUSES,
    STORED_STATUSES,
    create_tables,
    insert_metrics,
    missing_columns,
    survey,
    rebuild_blocks,
    tl_metric_blocks,
    tl_metrics,
    tl_runs,
    tl_studies,
)
from trainlab.store.values import as_int, as_json_dict, as_str, check_status, now, run_values

__all__ = ["Store", "RunNotFound"]

class RunNotFound(KeyError):
    """No run with this id in this store."""

    def __init__(self, run_id: int, url: str):
        super().__init__(f"no run with id {run_id} in {url}")
        self.run_id = run_id
        self.url = url

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]

    def __reduce__(self):  # rebuilt from (run_id, url) when it crosses a process boundary
        return (type(self), (self.run_id, self.url))


class Store:
    """Studies, runs and metrics in one database (a SQLite file or a SQLAlchemy URL).

    Open one Store per process; it is safe to share between threads. A Store
    inherited through ``fork`` drops the parent's connections on first use.
    Tables are created on open when missing; opening an existing store only reads.
    ``read_only``: opened so that it cannot write (see `engine.read_only_url`), never creating a file
    or a table; a write raises the database's error ("attempt to write a readonly database").

    >>> store = Store(tmp_path / "runs.db")      # or "postgresql://user@host/db"
    >>> run = store.create_run(name="baseline", hparams={"lr": 0.1})
    >>> store.run(run)["status"]
    'running'
    """

    def __init__(self, db: str | os.PathLike | None = None, *, read_only: bool = False,
                 lost_after_s: float = LOST_AFTER_S):
        self.url = read_only_url(db) if read_only else normalize_url(db)
        self.read_only = read_only
        self.lost_after_s = float(lost_after_s)  # a running run silent this long shows as "lost" (`liveness`)
        self._shown_url = hide_password(normalize_url(db))  # the URL as the user gave it, not its read-only form
        self._engine = make_engine(self.url, read_only=read_only)
        # Same pool and listeners; connections from it begin with BEGIN IMMEDIATE on SQLite.
        self._write_engine = write_engine(self._engine)
        self._pid = os.getpid()
        try:
            self._has_blocks = self._open_tables()
        except BaseException:
            self._engine.dispose()
            raise

    def _open_tables(self) -> bool:
        """Check the tables (read-only) or create the missing ones; whether the summary blocks are there."""
        try:
            missing, self._lacks = survey(self._engine)  # one connection, two cheap queries: on every command's start
            if not self.read_only:
                blocks = True
                if missing or self._lacks:
                    blocks = create_tables(self._engine)
                    # an older store that this connection may not migrate is read without the liveness columns
                    self._lacks = missing_columns(self._engine)
            else:
                if missing - {tl_metric_blocks.name}:
                    raise ValueError(f"db: {self._shown_url!r} holds no trainlab store (missing table "
                                     f"{', '.join(sorted(missing))}; train something first, or pass --db)")
                blocks = not missing  # an older store is read without its summary blocks (plots read every row)
        except sa.exc.DBAPIError as err:
            fault = classify(err, self._shown_url, "cannot open")
            if fault is None:
                raise
            raise fault from None
        return blocks

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite store: one connection, which threads must not share."""
        return is_in_memory(self.url)

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            # Connections opened by the parent must not be used (or closed) by a child.
            self._engine.dispose(close=False)
            self._pid = os.getpid()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot, never the write lock."""
        self._check_fork()
        with self._faults():
            with self._engine.connect() as conn:
                yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction: BEGIN IMMEDIATE on SQLite, committed on exit."""
        self._check_fork()
        with self._faults(translate=not self.read_only):  # a read-only store's write is the caller's bug
            with self._write_engine.begin() as conn:
                yield conn

    @contextmanager
    def _faults(self, translate: bool = True) -> Iterator[None]:
        """A database that cannot be reached or read raises a StoreFault naming this store (`errors`)."""
        try:
            yield
        except sa.exc.DBAPIError as err:
            fault = classify(err, self._shown_url) if translate else None
            if fault is None:
                raise
            raise fault from None

    def close(self) -> None:
        """Close every pooled connection. The Store reconnects if used again."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self._shown_url!r})"

    # ----------------------------------------------------------------- studies

    def study_id(self, name: str, create: bool = True) -> int | None:
        """The id of study ``name``; created when missing if ``create``, else None."""
        name = as_str("study", name, nullable=False)
        with self._read() as conn:
            found = conn.scalar(sa.select(tl_studies.c.id).where(tl_studies.c.name == name))
        if found is not None or not create:
            return found
        with self._write() as conn:
            return self._study_id_in(conn, name)

    def _study_id_in(self, conn: Connection, name: str) -> int:
        """Find or create a study inside a write transaction."""
        found = conn.scalar(sa.select(tl_studies.c.id).where(tl_studies.c.name == name))
        if found is not None:
            return found
        try:
            with conn.begin_nested():  # PostgreSQL: another worker may create it first
                return conn.execute(tl_studies.insert().values(name=name, created=now())).inserted_primary_key[0]
        except sa.exc.IntegrityError:
            return conn.scalar(sa.select(tl_studies.c.id).where(tl_studies.c.name == name))

    def studies(self, *, kind: str | None = "train") -> list[dict]:
        """Every study with its runs of ``kind`` (None: all kinds) summarized, ordered by id.

        Each dict has id, name, created, runs (count), best_metric (the max of
        the runs' best metrics, None if none), status (count per status, only
        statuses present) and last_activity (latest write to any of its runs,
        else the study's creation).
        """
        query = (
            sa.select(
                tl_runs.c.study_id,
                tl_runs.c.status,
                sa.func.count(),
                sa.func.max(tl_runs.c.best_metric),
                sa.func.max(tl_runs.c.updated),
            )
            .where(tl_runs.c.study_id.is_not(None))
            .group_by(tl_runs.c.study_id, tl_runs.c.status)
        )
        if kind is not None:
            query = query.where(tl_runs.c.kind == kind)
        live = [c for c in (tl_runs.c.heartbeat, tl_runs.c.node, tl_runs.c.pid) if c.name not in self._lacks]
        running = sa.select(tl_runs.c.study_id, tl_runs.c.status, tl_runs.c.updated, *live).where(
            tl_runs.c.study_id.is_not(None), tl_runs.c.status == "running")
        if kind is not None:
            running = running.where(tl_runs.c.kind == kind)
        with self._read() as conn:
            studies = conn.execute(sa.select(tl_studies).order_by(tl_studies.c.id)).mappings().all()
            groups = conn.execute(query).all()
            stamp = now()
            lost: dict[int, int] = {}
            for row in conn.execute(running).mappings():
                if self._shown_status(row, stamp) == "lost":
                    lost[row["study_id"]] = lost.get(row["study_id"], 0) + 1
        out = {
            s["id"]: {
                "id": s["id"],
                "name": s["name"],
                "created": s["created"],
                "runs": 0,
                "best_metric": None,
                "status": {},
                "last_activity": s["created"],
            }
            for s in studies
        }
        for study_id, status, count, best, updated in groups:
            row = out.get(study_id)
            if row is None:  # a study created after our first SELECT
                continue
            row["runs"] += count
            if status == "running" and lost.get(study_id):
                count -= lost[study_id]
                row["status"]["lost"] = lost[study_id]
            if count:
                row["status"][status] = count
            if best is not None and (row["best_metric"] is None or best > row["best_metric"]):
                row["best_metric"] = best
            if updated is not None and updated > row["last_activity"]:
                row["last_activity"] = updated
        return list(out.values())

    # -------------------------------------------------------------------- runs

    def create_run(
        self,
        *,
        name: str,
        hparams: dict,
        seed: int | None = None,
        study: str | None = None,
        kind: str = "train",
        host: str | None = None,
    ) -> int:
        """Record a new run with status "running" and return its id.

        ``study`` is a study name, created when missing. ``host`` defaults to
        this machine's host name.
        """
        name = as_str("name", name, nullable=False)
        kind = as_str("kind", kind, nullable=False)
        if not name:
            raise ValueError("name: a run needs a non-empty name")
        if not kind:
            raise ValueError("kind: a run needs a non-empty kind, such as 'train'")
        values = {
            **self._holder(),
            "name": name,
            "kind": kind,
            "hparams": as_json_dict("hparams", hparams),
            "seed": as_int("seed", seed, nullable=True),
            "status": "running",
            "summary": {},
            "epochs": 0,
        }
        study = as_str("study", study, nullable=True)
        values["host"] = as_str("host", host, nullable=True) or socket.gethostname()
        with self._write() as conn:
            stamp = now()
            values["study_id"] = self._study_id_in(conn, study) if study is not None else None
            if "heartbeat" in values:
                values["heartbeat"] = stamp
            return conn.execute(tl_runs.insert().values(created=stamp, updated=stamp, **values)).inserted_primary_key[0]

    def _holder(self) -> dict[str, Any]:
        """The liveness columns naming this process as a run's holder (none in a store that lacks them)."""
        if self._lacks:
            return {}
        return {"host": socket.gethostname(), "pid": os.getpid(), "node": this_node(), "heartbeat": now()}

    def claim_run(self, run_id: int, *, refuse: Sequence[str] = ()) -> None:
        """Take run `run_id` over for this process (a resume): its status becomes "running", with this
        process as its holder and a fresh heartbeat, in one write transaction.

        Raises RunBusy (naming the host and pid) when another process holds it and is not lost (see
        `liveness`), ValueError when its status is one of `refuse` (nothing to resume), RunNotFound.
        Of two processes claiming one run at once, exactly one wins.

        The run is read first, outside the write lock: a refusal never waits for the lock, which a live
        holder frozen mid-write (SIGSTOP, a paused container) may hold for as long as it is frozen."""
        with self._read() as conn:
            self._check_claim(run_id, conn.execute(sa.select(tl_runs).where(tl_runs.c.id == run_id)).first(), refuse)
        with self._write() as conn:
            row = conn.execute(sa.select(tl_runs).where(tl_runs.c.id == run_id).with_for_update()).first()
            self._check_claim(run_id, row, refuse)
            conn.execute(tl_runs.update().where(tl_runs.c.id == run_id)
                         .values(status="running", reason=None, finished=None, updated=now(), **self._holder()))

    def _check_claim(self, run_id: int, row: Any, refuse: Sequence[str]) -> None:
        """Raise what `claim_run` raises for the run's row `row` (None: no such run)."""
        if row is None:
            raise RunNotFound(run_id, self._shown_url)
        row = row._mapping
        if row["status"] in refuse:
            raise ValueError(f"resume: run {run_id} is {row['status']}: nothing to resume")
        if not self._lacks and row["status"] == "running":
            mine = row["pid"] == os.getpid() and row["node"] == this_node()
            stamp = now()
            shown = derived_status("running", row["heartbeat"], row["node"], row["pid"], now=stamp,
                                   lost_after_s=self.lost_after_s)
            if shown == "running" and not mine:
                raise RunBusy(run_id, row["host"], row["pid"], age_s(row["heartbeat"], stamp))

    def beat(self, run_id: int) -> bool:
        """Write this process's heartbeat on run `run_id`; False when it no longer holds the run (another
        process resumed it, or it ended). Does not move `updated`: no data changed."""
        if self._lacks:
            return True
        c = tl_runs.c
        with self._write() as conn:
            done = conn.execute(tl_runs.update().where(c.id == run_id, c.pid == os.getpid(), c.node == this_node(),
                                                       c.status == "running").values(heartbeat=now()))
        return done.rowcount > 0

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set some of status, reason, best_metric, best_epoch, epochs, checkpoint, summary, finished.

        ``summary`` is merged into the stored dict (top-level keys replaced,
        others kept), in the same transaction that reads it, so concurrent
        updates are not lost. ``finished`` takes a datetime (naive means UTC)
        or an ISO string. Raises ValueError for an unknown field or status,
        RunNotFound for an unknown run.
        """
        values = run_values(fields)
        summary = values.pop("summary", None)
        with self._write() as conn:
            query = sa.select(tl_runs.c.summary).where(tl_runs.c.id == run_id).with_for_update()
            row = conn.execute(query).first()
            if row is None:
                raise RunNotFound(run_id, self._shown_url)
            if summary is not None:
                values["summary"] = {**(row.summary or {}), **summary}
            conn.execute(tl_runs.update().where(tl_runs.c.id == run_id).values(updated=now(), **values))

    def finish_run(self, run_id: int, status: str, reason: str | None = None, **fields: Any) -> None:
        """End a run: its final status (not "running"), why, and any update_run fields; sets finished to now."""
        check_status(status, STORED_STATUSES[1:])
        if reason is not None:
            fields["reason"] = reason
        fields.setdefault("finished", datetime.now(timezone.utc))
        self.update_run(run_id, status=status, **fields)

    def _run_query(self) -> sa.Select:
        columns = [c for c in tl_runs.c if c.name not in self._lacks]
        return sa.select(*columns, tl_studies.c.name.label("study")).select_from(
            tl_runs.outerjoin(tl_studies, tl_runs.c.study_id == tl_studies.c.id)
        )

    def _shown_status(self, row: Mapping[str, Any], stamp: str) -> str:
        """The status to show (`liveness.derived_status`): a running run whose process is gone is "lost"."""
        return derived_status(row["status"], row.get("heartbeat") or row.get("updated"), row.get("node"),
                              row.get("pid"), now=stamp, lost_after_s=self.lost_after_s)

    def _run_dict(self, row: Any, stamp: str) -> dict:
        out = dict(row._mapping)
        out["summary"] = out["summary"] or {}
        for name, _ in ADDED_RUN_COLUMNS:
            out.setdefault(name, None)
        out["status"] = self._shown_status(out, stamp)
        if out["status"] == "lost" and not out["reason"]:
            beat = out["heartbeat"] or out["updated"]
            out["reason"] = (f"no heartbeat since {beat} from pid {out['pid']} on host {out['host']}: its process "
                             f"is gone; resume with: trainlab train --resume {out['id']}")
        return out

    def run(self, run_id: int) -> dict:
        """Every column of one run, plus its study's name as "study"; RunNotFound if absent."""
        with self._read() as conn:
            row = conn.execute(self._run_query().where(tl_runs.c.id == run_id)).first()
        if row is None:
            raise RunNotFound(run_id, self._shown_url)
        return self._run_dict(row, now())

    def runs(self, *, study: str | None = None, kind: str | None = "train", status: str | None = None) -> list[dict]:
        """Runs ordered by id, filtered by study name, kind and status (None: any; "lost" and "running" as
        shown, see `liveness`)."""
        query = self._run_query().order_by(tl_runs.c.id)
        if study is not None:
            query = query.where(tl_studies.c.name == study)
        if kind is not None:
            query = query.where(tl_runs.c.kind == kind)
        if status is not None:
            stored = "running" if check_status(status, RUN_STATUSES) == "lost" else status
            query = query.where(tl_runs.c.status == stored)
        stamp = now()
        with self._read() as conn:
            found = [self._run_dict(row, stamp) for row in conn.execute(query)]
        return found if status is None else [r for r in found if r["status"] == status]

    def _require_run(self, conn: Connection, run_id: int) -> None:
        if conn.scalar(sa.select(tl_runs.c.id).where(tl_runs.c.id == run_id)) is None:
            raise RunNotFound(run_id, self._shown_url)

    # ----------------------------------------------------------------- metrics

    def log_metrics(self, run_id: int, rows: Iterable[tuple[int, int | None, str, float]], *, beat: bool = False,
                    **run_fields: Any) -> None:
        """Append (step, epoch, key, value) rows to a run in one write transaction.

        Rows go in as one driver executemany on SQLite, INSERTs of a few hundred rows elsewhere. A NaN value is
        stored as NULL and read back as NaN. Call this per batch, never per step
        (see MetricBuffer). ``run_fields`` (update_run's, but no summary) are set
        on the run in the same transaction: an epoch count never runs ahead of its rows.
        """
        changes = run_values(run_fields)
        if "summary" in changes:
            raise ValueError("log_metrics: summary is merged by update_run, not set here")
        if beat and not self._lacks:  # the heartbeat travels with the rows (`liveness`)
            changes["heartbeat"] = now()
        values = []  # (run_id, step, epoch, key, value), in METRIC_COLUMNS order
        for row in rows:
            try:
                step, epoch, key, value = row
                value = float(value)
                values.append((run_id, int(step), None if epoch is None else int(epoch), str(key),
                               None if value != value else value))
            except (TypeError, ValueError) as err:
                raise ValueError(f"log_metrics: bad row {row!r}, expected (step, epoch, key, value): {err}") from None
        if not values and not changes:
            return
        with self._write() as conn:
            self._require_run(conn, run_id)
            if values:
                insert_metrics(conn, values)
                if self._has_blocks:
                    rebuild_blocks(conn, run_id, min(v[1] for v in values))
            conn.execute(tl_runs.update().where(tl_runs.c.id == run_id).values(updated=now(), **changes))

    def metrics(self, run_id: int, keys: Sequence[str] | None = None) -> dict[str, dict[str, list]]:
        """A run's metrics: key -> {"step": [...], "epoch": [...], "value": [...]}, ordered by step.

        Keys come sorted; with ``keys``, only those (a key never logged is left
        out). NULL values come back as NaN.
        """
        if isinstance(keys, str):
            keys = [keys]
        with self._read() as conn:
            self._require_run(conn, run_id)
            return series_of_run(conn, run_id, keys)

    def metric_buckets(
        self, run_ids: Sequence[int], keys: Sequence[str], buckets: int
    ) -> dict[int, dict[str, dict[str, Any]]]:
        """Metrics of many runs downsampled in the database, for plots: min, max and mean per bucket of steps.

        For each run and key, steps 0..last (last: the largest step logged) are
        cut into ranges of ``width = ceil((last + 1) / buckets)`` steps, so at
        most ``buckets`` of them; for a series with rows in more than ``buckets``
        blocks of METRIC_BLOCK steps, width is rounded up to whole blocks and
        the buckets are read from the blocks, not the rows. Each range holding rows gives "first"/"last"
        (its smallest and largest step), "min", "max", "mean" (over the non-NaN
        values; None when all are NaN), "count" (rows) and "nan" (NaN rows):
        every spike survives as some bucket's min or max, and a series of at most
        ``buckets`` evenly spaced points (one per epoch, say) keeps every point.
        Runs and keys without rows, and unknown run ids, are left out. Only
        reads, in one transaction.

        >>> store.metric_buckets([run], ["train/loss"], 2)[run]["train/loss"]["max"]   # steps 0..3: 4, 1, 9, 2
        [4.0, 9.0]

        Returns run id -> key -> {"width": w, "first": [...], "last": [...], "min": [...], "max": [...],
        "mean": [...], "count": [...], "nan": [...]}, lists ordered by step.
        """
        buckets = as_int("buckets", buckets, nullable=False)
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets}")
        run_ids = [as_int("run_ids", r, nullable=False) for r in run_ids]
        keys = [as_str("keys", k, nullable=False) for k in ([keys] if isinstance(keys, str) else keys)]
        if not run_ids or not keys:
            return {}
        with self._read() as conn:
            return buckets_of_series(conn, run_ids, keys, buckets, has_blocks=self._has_blocks)

    def metric_keys(self, run_id: int) -> list[str]:
        """The metric keys a run has logged, sorted."""
        with self._read() as conn:
            self._require_run(conn, run_id)
            return keys_of_run(conn, run_id)

    def delete_metrics_after(self, run_id: int, step: int) -> None:
        """Delete a run's metric rows with step > ``step``: resuming from a checkpoint at ``step`` relogs them."""
        step = as_int("step", step, nullable=False)
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(tl_metrics.delete().where(tl_metrics.c.run_id == run_id, tl_metrics.c.step > step))
            if self._has_blocks:  # the block holding `step` keeps part of its rows: summarized again
                rebuild_blocks(conn, run_id, step)
