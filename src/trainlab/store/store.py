"""The run store: studies, runs, their hyperparameters and results, and metrics.

The store is the only module that knows SQL. It holds everything in three
tables (``tl_studies``, ``tl_runs``, ``tl_metrics``) of any SQLAlchemy URL:
SQLite by default, PostgreSQL when many machines share one database. Optuna
keeps its own tables (``studies``, ``trials``, ...) in the same database, hence
the ``tl_`` prefix.

SQLite is tuned for many writing processes and a reading dashboard:

- WAL journal, so readers never block writers and writers never block readers;
- a 30 s busy timeout, so a writer waits for the lock instead of failing;
- every transaction that writes starts with ``BEGIN IMMEDIATE``. A deferred
  transaction that reads and then writes cannot wait for the write lock: when
  another process committed in between, SQLite fails it at once with
  "database is locked" whatever the timeout. Taking the lock up front makes
  the busy timeout apply. Reads use a plain (deferred) ``BEGIN`` and never
  take the write lock.

Times are UTC ISO 8601 strings of fixed width ("2024-05-01T12:00:00.000000+00:00"),
so they sort as text and travel to JSON as they are. A metric value of NaN is
stored as NULL (SQLite turns a NaN into NULL anyway; doing it on every backend
keeps them alike) and read back as NaN; infinities are stored as they are.

Example::

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

import importlib.util
import json
import math
import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

__all__ = [
    "RUN_STATUSES",
    "METRIC_BLOCK",
    "BUSY_TIMEOUT_S",
    "MetricBuffer",
    "RunNotFound",
    "Store",
    "hide_password",
    "normalize_url",
    "sqlite_settings",
]

RUN_STATUSES = ("running", "completed", "stopped", "diverged", "failed", "pruned")

DEFAULT_URL = "sqlite:///trainlab.db"
BUSY_TIMEOUT_S = 30  # a writer waits this long for the lock before failing
_INSERT_CHUNK_ROWS = 500  # rows per INSERT statement: few statements, bounded memory
_WRITE_OPTION = "trainlab_write"  # execution option that makes BEGIN IMMEDIATE

_metadata = sa.MetaData()

_studies = sa.Table(
    "tl_studies",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("created", sa.String(40), nullable=False),
)

_runs = sa.Table(
    "tl_runs",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("tl_studies.id"), nullable=True, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False, default="train"),
    sa.Column("hparams", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created", sa.String(40), nullable=False),
    sa.Column("updated", sa.String(40), nullable=False),
    sa.Column("finished", sa.String(40), nullable=True),
    sa.Column("best_metric", sa.Double, nullable=True),
    sa.Column("best_epoch", sa.Integer, nullable=True),
    sa.Column("epochs", sa.Integer, nullable=False, default=0),
    sa.Column("checkpoint", sa.Text, nullable=True),
    sa.Column("seed", sa.BigInteger, nullable=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
)

_metrics = sa.Table(
    "tl_metrics",
    _metadata,
    # SQLite's rowid alias must be exactly INTEGER; elsewhere 64 bits, for big shared databases.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("tl_runs.id"), nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=True),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("value", sa.Double, nullable=True),  # NULL is NaN
    # (run_id, key, step) serves both "one key of a run" and its ordering by step.
    sa.Index("ix_tl_metrics_run_key", "run_id", "key", "step"),
    sa.Index("ix_tl_metrics_run_step", "run_id", "step"),
)

METRIC_BLOCK = 8  # steps per summary block (see _blocks)

# Every METRIC_BLOCK steps of a series summarized (min, max, sum and counts), written in the transaction that
# writes the rows: plots of long series (a study page of 200 runs x 5,000 steps) read 8x fewer rows.
_blocks = sa.Table(
    "tl_metric_blocks",
    _metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("tl_runs.id"), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("block", sa.BigInteger, primary_key=True),  # step // METRIC_BLOCK
    sa.Column("first_step", sa.BigInteger, nullable=False),
    sa.Column("last_step", sa.BigInteger, nullable=False),
    sa.Column("vmin", sa.Double, nullable=True),  # over the non-NaN values; NULL when all are NaN
    sa.Column("vmax", sa.Double, nullable=True),
    sa.Column("vsum", sa.Double, nullable=True),  # NULL when NaN (Inf + -Inf)
    sa.Column("n_values", sa.Integer, nullable=False),
    sa.Column("n_rows", sa.Integer, nullable=False),
    sqlite_with_rowid=False,  # stored in key order: one series' blocks are contiguous
)

_UPDATABLE = ("status", "reason", "best_metric", "best_epoch", "epochs", "checkpoint", "summary", "finished")


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


def normalize_url(db: str | os.PathLike | None) -> str:
    """The SQLAlchemy URL for ``db``: None, a file path or a URL.

    None gives ``sqlite:///trainlab.db``; a path ``x.db`` gives ``sqlite:///x.db``
    (``~`` expanded); anything with ``://`` is a URL and passes through once it
    parses and names a known database kind, except that a bare ``postgresql://``
    names the psycopg2 driver when psycopg 3 is not installed. Raises
    ValueError naming ``db`` otherwise.

    >>> normalize_url("runs/x.db")
    'sqlite:///runs/x.db'
    """
    if db is None:
        return DEFAULT_URL
    if not isinstance(db, (str, os.PathLike)):
        raise ValueError(f"db: cannot open {db!r}: expected a path or a database URL")
    text = os.fspath(db)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise ValueError(f"db: cannot open {text!r}: empty path or URL")
    if "://" not in text:
        return "sqlite:///" + os.path.expanduser(text)
    shown = hide_password(text)
    try:
        url = make_url(text)
    except (sa.exc.ArgumentError, ValueError) as err:
        raise ValueError(f"db: cannot open {shown!r}: not a database URL ({hide_password(str(err))})") from None
    try:
        url.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise ValueError(
            f"db: cannot open {shown!r}: unknown database kind {url.drivername!r} "
            "(use a file path, sqlite:///path or postgresql://user@host/db)"
        ) from None
    if url.drivername == "postgresql" and not _importable("psycopg") and _importable("psycopg2"):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; use psycopg2 when only it is installed.
        text = "postgresql+psycopg2" + text[len("postgresql") :]
    return text


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def hide_password(text: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``, for messages."""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", text)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _as_time(field: str, value: Any) -> str | None:
    """A UTC ISO string from a datetime (naive means UTC) or an ISO string."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{field}: expected an ISO 8601 time, got {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"{field}: expected a datetime or ISO 8601 string, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _as_int(field: str, value: Any, *, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    try:
        return int(value.__index__())
    except (AttributeError, TypeError):
        raise ValueError(f"{field}: expected an integer, got {value!r}") from None


def _as_float(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: expected a number, got {value!r}") from None


def _as_json_dict(field: str, value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise ValueError(f"{field}: expected a dict, got {type(value).__name__} {value!r}")
    value = dict(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{field}: not JSON-serializable: {err}") from None
    return value


def _as_str(field: str, value: Any, *, nullable: bool) -> str | None:
    if value is None and nullable:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a string, got {value!r}")
    return value


def _check_status(status: Any, allowed: Sequence[str] = RUN_STATUSES) -> str:
    if status not in allowed:
        raise ValueError(f"status must be one of {', '.join(allowed)}; got {status!r}")
    return status


def sqlite_settings(dbapi_connection: Any, _record: Any = None) -> None:
    """Settings for every SQLite connection trainlab opens, the store's and Optuna's (a "connect" listener):
    WAL, synchronous=NORMAL, a busy timeout, and BEGIN taken from the driver. See the module docstring."""
    # Take BEGIN away from the sqlite3 driver: it would skip it before SELECTs and
    # could never emit IMMEDIATE. A "begin" listener emits it instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")  # first: WAL switch may wait
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; fsync at checkpoints only
    finally:
        cursor.close()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    sqlite_settings(dbapi_connection)
    dbapi_connection.execute("PRAGMA foreign_keys = ON")


def _sqlite_on_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


class Store:
    """Studies, runs and metrics in one database (a SQLite file or a SQLAlchemy URL).

    Open one Store per process; it is safe to share between threads. A Store
    inherited through ``fork`` drops the parent's connections on first use.
    Tables are created on open when missing; opening an existing store only reads.

    >>> store = Store(tmp_path / "runs.db")      # or "postgresql://user@host/db"
    >>> run = store.create_run(name="baseline", hparams={"lr": 0.1})
    >>> store.run(run)["status"]
    'running'
    """

    def __init__(self, db: str | os.PathLike | None = None):
        self.url = normalize_url(db)
        url = make_url(self.url)
        self._shown_url = hide_password(self.url)
        self._is_sqlite = url.get_backend_name() == "sqlite"
        try:
            if self._is_sqlite:
                self._engine = self._sqlite_engine(url)
            else:
                self._engine = sa.create_engine(url, pool_pre_ping=True)
        except ImportError as err:
            raise ValueError(f"db: cannot open {self._shown_url!r}: driver not installed ({err})") from None
        # Same pool and listeners; connections from it begin with BEGIN IMMEDIATE on SQLite.
        self._write_engine = self._engine.execution_options(**{_WRITE_OPTION: True})
        self._pid = os.getpid()
        try:
            self._create_tables()
        except sa.exc.OperationalError as err:
            self._engine.dispose()
            detail = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
            raise ValueError(f"db: cannot open {self._shown_url!r}: {detail}") from None

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite store: one connection, which threads must not share."""
        url = make_url(self.url)
        return self._is_sqlite and (url.database in (None, "", ":memory:") or "mode=memory" in self.url)

    def _sqlite_engine(self, url: sa.URL) -> Engine:
        database = url.database or ""
        in_memory = database in ("", ":memory:") or "mode=memory" in str(url)
        if in_memory:
            # One connection for the whole Store, or every thread would get its own empty database.
            engine = sa.create_engine(
                url, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            if not database.startswith("file:"):
                folder = os.path.dirname(os.path.abspath(database))
                if not os.path.isdir(folder):
                    raise ValueError(f"db: cannot open {self.url!r}: folder {folder!r} does not exist")
            engine = sa.create_engine(url)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine

    def _create_tables(self) -> None:
        """Create missing tables. A store written before the summary blocks existed gets them, filled
        from its rows; opened read-only, it is read without them (plots then read every row)."""
        names = [t.name for t in _metadata.sorted_tables]
        with self._read() as conn:
            have = {name for name in names if sa.inspect(conn).has_table(name)}
        self._has_blocks = True
        if len(have) == len(names):
            return
        try:
            with self._write() as conn:
                if conn.dialect.name == "postgresql":
                    # Two workers opening a new database at once must not both CREATE.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7061726)"))
                backfill = not sa.inspect(conn).has_table(_blocks.name) and sa.inspect(conn).has_table(_metrics.name)
                _metadata.create_all(conn, checkfirst=True)  # under the write lock on SQLite too
                if backfill:
                    conn.execute(_blocks.insert().from_select([c.name for c in _blocks.c], _blocks_of_rows()))
        except sa.exc.DBAPIError:
            if not have.issuperset(set(names) - {_blocks.name}):
                raise
            self._has_blocks = False  # a read-only connection to an older store

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            # Connections opened by the parent must not be used (or closed) by a child.
            self._engine.dispose(close=False)
            self._pid = os.getpid()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot, never the write lock."""
        self._check_fork()
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction: BEGIN IMMEDIATE on SQLite, committed on exit."""
        self._check_fork()
        with self._write_engine.begin() as conn:
            yield conn

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
        name = _as_str("study", name, nullable=False)
        with self._read() as conn:
            found = conn.scalar(sa.select(_studies.c.id).where(_studies.c.name == name))
        if found is not None or not create:
            return found
        with self._write() as conn:
            return self._study_id_in(conn, name)

    def _study_id_in(self, conn: Connection, name: str) -> int:
        """Find or create a study inside a write transaction."""
        found = conn.scalar(sa.select(_studies.c.id).where(_studies.c.name == name))
        if found is not None:
            return found
        try:
            with conn.begin_nested():  # PostgreSQL: another worker may create it first
                return conn.execute(_studies.insert().values(name=name, created=_now())).inserted_primary_key[0]
        except sa.exc.IntegrityError:
            return conn.scalar(sa.select(_studies.c.id).where(_studies.c.name == name))

    def studies(self, *, kind: str | None = "train") -> list[dict]:
        """Every study with its runs of ``kind`` (None: all kinds) summarized, ordered by id.

        Each dict has id, name, created, runs (count), best_metric (the max of
        the runs' best metrics, None if none), status (count per status, only
        statuses present) and last_activity (latest write to any of its runs,
        else the study's creation).
        """
        query = (
            sa.select(
                _runs.c.study_id,
                _runs.c.status,
                sa.func.count(),
                sa.func.max(_runs.c.best_metric),
                sa.func.max(_runs.c.updated),
            )
            .where(_runs.c.study_id.is_not(None))
            .group_by(_runs.c.study_id, _runs.c.status)
        )
        if kind is not None:
            query = query.where(_runs.c.kind == kind)
        with self._read() as conn:
            studies = conn.execute(sa.select(_studies).order_by(_studies.c.id)).mappings().all()
            groups = conn.execute(query).all()
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
        name = _as_str("name", name, nullable=False)
        kind = _as_str("kind", kind, nullable=False)
        if not name:
            raise ValueError("name: a run needs a non-empty name")
        if not kind:
            raise ValueError("kind: a run needs a non-empty kind, such as 'train'")
        values = {
            "name": name,
            "kind": kind,
            "hparams": _as_json_dict("hparams", hparams),
            "seed": _as_int("seed", seed, nullable=True),
            "host": _as_str("host", host, nullable=True) or socket.gethostname(),
            "status": "running",
            "summary": {},
            "epochs": 0,
        }
        study = _as_str("study", study, nullable=True)
        with self._write() as conn:
            now = _now()
            values["study_id"] = self._study_id_in(conn, study) if study is not None else None
            return conn.execute(_runs.insert().values(created=now, updated=now, **values)).inserted_primary_key[0]

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set some of status, reason, best_metric, best_epoch, epochs, checkpoint, summary, finished.

        ``summary`` is merged into the stored dict (top-level keys replaced,
        others kept), in the same transaction that reads it, so concurrent
        updates are not lost. ``finished`` takes a datetime (naive means UTC)
        or an ISO string. Raises ValueError for an unknown field or status,
        RunNotFound for an unknown run.
        """
        values = self._run_values(fields)
        summary = values.pop("summary", None)
        with self._write() as conn:
            query = sa.select(_runs.c.summary).where(_runs.c.id == run_id).with_for_update()
            row = conn.execute(query).first()
            if row is None:
                raise RunNotFound(run_id, self._shown_url)
            if summary is not None:
                values["summary"] = {**(row.summary or {}), **summary}
            conn.execute(_runs.update().where(_runs.c.id == run_id).values(updated=_now(), **values))

    def finish_run(self, run_id: int, status: str, reason: str | None = None, **fields: Any) -> None:
        """End a run: its final status (not "running"), why, and any update_run fields; sets finished to now."""
        _check_status(status, RUN_STATUSES[1:])
        if reason is not None:
            fields["reason"] = reason
        fields.setdefault("finished", datetime.now(timezone.utc))
        self.update_run(run_id, status=status, **fields)

    @staticmethod
    def _run_values(fields: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(fields) - set(_UPDATABLE))
        if unknown:
            raise ValueError(f"update_run: unknown field {unknown[0]!r}; known fields: {', '.join(_UPDATABLE)}")
        values: dict[str, Any] = {}
        for field, value in fields.items():
            if field == "status":
                values[field] = _check_status(value)
            elif field in ("reason", "checkpoint"):
                values[field] = _as_str(field, value, nullable=True)
            elif field == "best_metric":
                values[field] = _as_float(field, value)
            elif field == "best_epoch":
                values[field] = _as_int(field, value, nullable=True)
            elif field == "epochs":
                values[field] = _as_int(field, value, nullable=False)
            elif field == "summary":
                values[field] = _as_json_dict(field, value)
            elif field == "finished":
                values[field] = _as_time(field, value)
        return values

    def _run_query(self) -> sa.Select:
        return sa.select(_runs, _studies.c.name.label("study")).select_from(
            _runs.outerjoin(_studies, _runs.c.study_id == _studies.c.id)
        )

    @staticmethod
    def _run_dict(row: Any) -> dict:
        out = dict(row._mapping)
        out["summary"] = out["summary"] or {}
        return out

    def run(self, run_id: int) -> dict:
        """Every column of one run, plus its study's name as "study"; RunNotFound if absent."""
        with self._read() as conn:
            row = conn.execute(self._run_query().where(_runs.c.id == run_id)).first()
        if row is None:
            raise RunNotFound(run_id, self._shown_url)
        return self._run_dict(row)

    def runs(self, *, study: str | None = None, kind: str | None = "train", status: str | None = None) -> list[dict]:
        """Runs ordered by id, filtered by study name, kind and status (None: any)."""
        query = self._run_query().order_by(_runs.c.id)
        if study is not None:
            query = query.where(_studies.c.name == study)
        if kind is not None:
            query = query.where(_runs.c.kind == kind)
        if status is not None:
            query = query.where(_runs.c.status == _check_status(status))
        with self._read() as conn:
            return [self._run_dict(row) for row in conn.execute(query)]

    def _require_run(self, conn: Connection, run_id: int) -> None:
        if conn.scalar(sa.select(_runs.c.id).where(_runs.c.id == run_id)) is None:
            raise RunNotFound(run_id, self._shown_url)

    # ----------------------------------------------------------------- metrics

    def log_metrics(self, run_id: int, rows: Iterable[tuple[int, int | None, str, float]], **run_fields: Any) -> None:
        """Append (step, epoch, key, value) rows to a run in one write transaction.

        Rows go in as one driver executemany on SQLite, INSERTs of a few hundred rows elsewhere. A NaN value is
        stored as NULL and read back as NaN. Call this per batch, never per step
        (see MetricBuffer). ``run_fields`` (update_run's, but no summary) are set
        on the run in the same transaction: an epoch count never runs ahead of its rows.
        """
        run_values = self._run_values(run_fields)
        if "summary" in run_values:
            raise ValueError("log_metrics: summary is merged by update_run, not set here")
        values = []  # (run_id, step, epoch, key, value), in _METRIC_COLUMNS order
        for row in rows:
            try:
                step, epoch, key, value = row
                value = float(value)
                values.append((run_id, int(step), None if epoch is None else int(epoch), str(key),
                               None if value != value else value))
            except (TypeError, ValueError) as err:
                raise ValueError(f"log_metrics: bad row {row!r}, expected (step, epoch, key, value): {err}") from None
        if not values and not run_values:
            return
        with self._write() as conn:
            self._require_run(conn, run_id)
            if values:
                _insert_metrics(conn, values)
                if self._has_blocks:
                    _rebuild_blocks(conn, run_id, min(v[1] for v in values))
            conn.execute(_runs.update().where(_runs.c.id == run_id).values(updated=_now(), **run_values))

    def metrics(self, run_id: int, keys: Sequence[str] | None = None) -> dict[str, dict[str, list]]:
        """A run's metrics: key -> {"step": [...], "epoch": [...], "value": [...]}, ordered by step.

        Keys come sorted; with ``keys``, only those (a key never logged is left
        out). NULL values come back as NaN.
        """
        query = (
            sa.select(_metrics.c.key, _metrics.c.step, _metrics.c.epoch, _metrics.c.value)
            .where(_metrics.c.run_id == run_id)
            .order_by(_metrics.c.key, _metrics.c.step, _metrics.c.id)
        )
        if keys is not None:
            if isinstance(keys, str):
                keys = [keys]
            query = query.where(_metrics.c.key.in_(list(keys)))
        out: dict[str, dict[str, list]] = {}
        nan = math.nan
        with self._read() as conn:
            self._require_run(conn, run_id)
            for key, step, epoch, value in conn.execute(query):
                series = out.get(key)
                if series is None:
                    series = out[key] = {"step": [], "epoch": [], "value": []}
                series["step"].append(step)
                series["epoch"].append(epoch)
                series["value"].append(nan if value is None else value)
        return out

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
        buckets = _as_int("buckets", buckets, nullable=False)
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets}")
        run_ids = [_as_int("run_ids", r, nullable=False) for r in run_ids]
        keys = [_as_str("keys", k, nullable=False) for k in ([keys] if isinstance(keys, str) else keys)]
        if not run_ids or not keys:
            return {}
        m = _metrics.alias("m")
        # the last step of each (run, key): one index lookup each, no scan
        lasts = [
            sa.select(sa.func.max(m.c.step)).where(m.c.run_id == _runs.c.id, m.c.key == key).scalar_subquery()
            for key in keys
        ]
        value, width = _metrics.c.value, sa.bindparam("width", type_=sa.BigInteger)
        rows_query = (  # built once: per run and key only the parameters change
            sa.select(
                sa.func.min(_metrics.c.step), sa.func.max(_metrics.c.step), sa.func.min(value), sa.func.max(value),
                sa.func.sum(value), sa.func.count(value), sa.func.count(),
            )
            .where(_metrics.c.run_id == sa.bindparam("run_id"), _metrics.c.key == sa.bindparam("key"))
            .group_by(_metrics.c.step // width)
            .order_by(sa.func.min(_metrics.c.step))
        )
        b = _blocks.c
        blocks_query = (  # the same buckets from the summary blocks, when width is a multiple of METRIC_BLOCK
            sa.select(
                sa.func.min(b.first_step), sa.func.max(b.last_step), sa.func.min(b.vmin), sa.func.max(b.vmax),
                sa.case((sa.func.count(b.vsum) < sa.func.count(), None), else_=sa.func.sum(b.vsum)),
                sa.func.sum(b.n_values), sa.func.sum(b.n_rows),
            )
            .where(b.run_id == sa.bindparam("run_id"), b.key == sa.bindparam("key"))
            .group_by(b.block // (width // METRIC_BLOCK))
            .order_by(sa.func.min(b.first_step))
        )
        # how many blocks each (run, key) has: more than `buckets` means more rows than buckets, so buckets
        # of whole blocks lose nothing a plot of `buckets` points would keep; 0 for rows without blocks
        n_blocks = [
            sa.select(sa.func.count()).where(b.run_id == _runs.c.id, b.key == key).scalar_subquery()
            if self._has_blocks else sa.literal(0) for key in keys
        ]
        out: dict[int, dict[str, dict[str, Any]]] = {}
        with self._read() as conn:
            found = conn.execute(
                sa.select(_runs.c.id, *lasts, *n_blocks).where(_runs.c.id.in_(run_ids)).order_by(_runs.c.id))
            for run_id, *columns in found.all():
                for key, last, blocks in zip(keys, columns[: len(keys)], columns[len(keys) :]):
                    if last is None:
                        continue
                    w = max(1, -(-(last + 1) // buckets))
                    query = rows_query
                    if blocks > buckets:
                        w, query = -(-w // METRIC_BLOCK) * METRIC_BLOCK, blocks_query
                    rows = conn.execute(query, {"run_id": run_id, "key": key, "width": w}).all()
                    first, last_in, lo, hi, total, n_values, n_rows = (list(c) for c in zip(*rows))
                    out.setdefault(run_id, {})[key] = {
                        "width": w, "first": first, "last": last_in,
                        "min": [None if v is None else float(v) for v in lo],
                        "max": [None if v is None else float(v) for v in hi],
                        "mean": [float(t) / n if n and t is not None else None for t, n in zip(total, n_values)],
                        "count": n_rows, "nan": [r - n for r, n in zip(n_rows, n_values)],
                    }
        return out

    def metric_keys(self, run_id: int) -> list[str]:
        """The metric keys a run has logged, sorted."""
        query = sa.select(_metrics.c.key).where(_metrics.c.run_id == run_id).distinct().order_by(_metrics.c.key)
        with self._read() as conn:
            self._require_run(conn, run_id)
            return list(conn.scalars(query))

    def delete_metrics_after(self, run_id: int, step: int) -> None:
        """Delete a run's metric rows with step > ``step``: resuming from a checkpoint at ``step`` relogs them."""
        step = _as_int("step", step, nullable=False)
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(_metrics.delete().where(_metrics.c.run_id == run_id, _metrics.c.step > step))
            if self._has_blocks:  # the block holding `step` keeps part of its rows: summarized again
                _rebuild_blocks(conn, run_id, step)


def _blocks_of_rows() -> sa.Select:
    """The blocks of tl_metrics rows, computed from the rows (add a WHERE): to fill or repair tl_metric_blocks."""
    m = _metrics.c
    block = m.step // METRIC_BLOCK
    return sa.select(
        m.run_id, m.key, block, sa.func.min(m.step), sa.func.max(m.step), sa.func.min(m.value), sa.func.max(m.value),
        sa.case((sa.func.count(m.value) == 0, 0.0), else_=sa.func.sum(m.value)),  # NULL only for Inf - Inf
        sa.func.count(m.value), sa.func.count(),
    ).group_by(m.run_id, m.key, block)


_METRIC_COLUMNS = ("run_id", "step", "epoch", "key", "value")


def _insert_metrics(conn: Connection, values: list[tuple]) -> None:
    """INSERT metric rows given as tuples in _METRIC_COLUMNS order: straight to the driver on SQLite (a
    third of the cost of a row, which a training pays twice a step), through SQLAlchemy elsewhere."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            'INSERT INTO tl_metrics (run_id, step, epoch, "key", value) VALUES (?, ?, ?, ?, ?)', values)
        return
    for start in range(0, len(values), _INSERT_CHUNK_ROWS):
        chunk = values[start : start + _INSERT_CHUNK_ROWS]
        conn.execute(_metrics.insert(), [dict(zip(_METRIC_COLUMNS, v)) for v in chunk])


def _rebuild_blocks(conn: Connection, run_id: int, step: int) -> None:
    """Summarize again, from its rows, every block of a run from the one holding `step` on: after rows
    were added at or after `step` (or deleted after it). In SQL, on a few blocks' rows: cheap."""
    block = step // METRIC_BLOCK
    conn.execute(_blocks.delete().where(_blocks.c.run_id == run_id, _blocks.c.block >= block))
    rows = _blocks_of_rows().where(_metrics.c.run_id == run_id, _metrics.c.step >= block * METRIC_BLOCK)
    conn.execute(_blocks.insert().from_select([c.name for c in _blocks.c], rows))


class MetricBuffer:
    """Collects metric rows in memory and writes them in batches: the training loop must never write per step.

    ``add`` only appends a tuple; values are converted to float at flush, so a
    caller may hand in anything ``float()`` accepts. Flush at epoch ends and
    before the run finishes; rows stay buffered if a flush fails.
    """

    def __init__(self, store: Store, run_id: int, max_rows: int = 2000):
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
            raise ValueError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        self.store = store
        self.run_id = run_id
        self.max_rows = max_rows
        self._rows: list[tuple] = []

    def add(self, step: int, epoch: int | None, key: str, value: float) -> None:
        """Buffer one row; writes the buffer when it holds max_rows rows."""
        self._rows.append((step, epoch, key, value))
        if len(self._rows) >= self.max_rows:
            self.flush()

    def flush(self, **run_fields: Any) -> None:
        """Write every buffered row in one transaction, with ``run_fields`` set on the run in it."""
        if self._rows or run_fields:
            self.store.log_metrics(self.run_id, self._rows, **run_fields)
            self._rows = []

    def __len__(self) -> int:
        return len(self._rows)

    def __enter__(self) -> MetricBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
