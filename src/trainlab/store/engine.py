"""Engines: database URLs, SQLite's settings for many writing processes, read-only and Optuna engines.

Every engine trainlab opens is made or configured here, so every connection to one database behaves
alike, whoever opened it: the store's (`make_engine`), the dashboard's (`make_engine(db, read_only=True)`)
and Optuna's (`optuna_engine_kwargs` + `prepare_optuna_engine`).

SQLite is tuned for many writing processes and a reading dashboard:

- WAL journal, so readers never block writers and writers never block readers;
- a 30 s busy timeout, so a writer waits for the lock instead of failing;
- every transaction that writes starts with ``BEGIN IMMEDIATE``. A deferred
  transaction that reads and then writes cannot wait for the write lock: when
  another process committed in between, SQLite fails it at once with
  "database is locked" whatever the timeout. Taking the lock up front makes
  the busy timeout apply. Reads use a plain (deferred) ``BEGIN`` and never
  take the write lock (`write_engine` marks an engine's transactions as writes).

A read-only engine cannot write even by mistake: a SQLite file is opened as a ``mode=ro`` URI (never
created) with ``PRAGMA query_only``, PostgreSQL with ``default_transaction_read_only=on``.

>>> engine = make_engine("runs.db")                     # sqlite:///runs.db, WAL, busy timeout
>>> with write_engine(engine).begin() as conn: ...      # BEGIN IMMEDIATE
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

__all__ = ["DEFAULT_URL", "BUSY_TIMEOUT_S", "normalize_url", "hide_password", "is_in_memory", "sqlite_file", "read_only_url",
           "sqlite_settings", "make_engine", "write_engine", "optuna_engine_kwargs", "prepare_optuna_engine"]

DEFAULT_URL = "sqlite:///trainlab.db"
BUSY_TIMEOUT_S = 30  # a writer waits this long for the lock before failing
_WRITE_OPTION = "trainlab_write"  # execution option that makes BEGIN IMMEDIATE


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


def is_in_memory(db: str | os.PathLike | None) -> bool:
    """Whether ``db`` is an in-memory SQLite database: ``sqlite://``, ``:memory:`` or a ``mode=memory`` URI."""
    return _is_in_memory(make_url(normalize_url(db)))


def _is_in_memory(url: sa.URL) -> bool:
    database = url.database or ""
    return url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or url.query.get("mode") == "memory" or "mode=memory" in database)


def sqlite_file(db: str | os.PathLike | None) -> str | None:
    """The absolute path of the file a SQLite ``db`` (path or URL) names; None for another database kind,
    an in-memory database or a ``file:`` URI (whose path SQLite resolves itself).

    >>> sqlite_file("sqlite:////tmp/runs.db")
    '/tmp/runs.db'
    """
    url = make_url(normalize_url(db))
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or _is_in_memory(url) or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def read_only_url(db: str | os.PathLike | None) -> str:
    """The URL that opens ``db`` so that it cannot write.

    A SQLite file becomes a ``mode=ro`` URI (SQLite then never creates it); a ``file:`` URI gets
    ``mode=ro`` unless it names a mode itself; PostgreSQL gets ``default_transaction_read_only=on``
    unless the URL sets ``options`` itself. Other kinds pass through. Raises ValueError when the
    SQLite file does not exist (nothing to read) and for ``sqlite://`` (a new in-memory database is empty).

    >>> read_only_url("/tmp/runs.db")
    'sqlite:///file:/tmp/runs.db?mode=ro&uri=true'
    """
    url = normalize_url(db)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):  # a new connection to it is always empty
            raise ValueError(f"db: cannot open {url!r} read-only: a new in-memory database is empty")
        path = sqlite_file(url)
        if path is None:  # a file: URI, perhaps a shared in-memory database
            if "mode" in parsed.query or "mode=" in database:
                return url
            return url + ("&" if "?" in url else "?") + "mode=ro"
        if not os.path.isfile(path):
            raise ValueError(f"db: no store at {path} (train something first, or pass --db)")
        return f"sqlite:///file:{quote(path)}?mode=ro&uri=true"
    if backend == "postgresql" and "options" not in parsed.query:
        return parsed.update_query_dict({"options": "-c default_transaction_read_only=on"}) \
            .render_as_string(hide_password=False)
    return url


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


def _store_on_connect(dbapi_connection: Any, _record: Any) -> None:
    sqlite_settings(dbapi_connection)
    dbapi_connection.execute("PRAGMA foreign_keys = ON")


def _read_only_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # sqlite_settings without the journal mode: a read-only connection cannot set it (WAL is kept in
    # the file, by whoever wrote it), and query_only also covers file: URIs that name their own mode.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    dbapi_connection.execute("PRAGMA query_only = ON")


def _store_on_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _always_immediate(conn: Connection) -> None:
    # Optuna's sessions read, then write: every one of its transactions takes the write lock up front
    # (see the module docstring). They are short, so serializing them is cheap.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(db: str | os.PathLike | None, *, read_only: bool = False) -> Engine:
    """The store's engine on ``db`` (a path or URL, see `normalize_url`).

    SQLite gets WAL, a busy timeout, foreign keys and BEGIN IMMEDIATE for `write_engine`
    transactions; an in-memory SQLite database is one connection shared by every thread. Other
    databases get a pool that checks connections before use. ``read_only``: opened through
    `read_only_url`, plus ``PRAGMA query_only`` on SQLite; nothing is created.

    Raises ValueError when the driver is not installed, or a SQLite file's folder does not exist
    (it is not created behind the user's back).
    """
    url = read_only_url(db) if read_only else normalize_url(db)
    parsed = make_url(url)
    try:
        if parsed.get_backend_name() != "sqlite":
            return sa.create_engine(parsed, pool_pre_ping=True)
        if _is_in_memory(parsed):
            # One connection for the whole engine, or every thread would get its own empty database.
            engine = sa.create_engine(parsed, poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            path = sqlite_file(url)
            if path is not None and not os.path.isdir(os.path.dirname(path)):
                raise ValueError(f"db: cannot open {url!r}: folder {os.path.dirname(path)!r} does not exist")
            engine = sa.create_engine(parsed)
    except ImportError as err:
        raise ValueError(f"db: cannot open {hide_password(url)!r}: driver not installed ({err})") from None
    event.listen(engine, "connect", _read_only_on_connect if read_only else _store_on_connect)
    event.listen(engine, "begin", _store_on_begin)
    return engine


def write_engine(engine: Engine) -> Engine:
    """The same engine (pool and listeners) whose transactions write: BEGIN IMMEDIATE on SQLite."""
    return engine.execution_options(**{_WRITE_OPTION: True})


def optuna_engine_kwargs(db: str | os.PathLike | None) -> dict[str, Any]:
    """``engine_kwargs`` for ``optuna.storages.RDBStorage(url, engine_kwargs=...)`` on ``db``.

    SQLite: the busy timeout from the first connection on (RDBStorage writes its schema in its
    constructor); others: connections checked before use. Call `prepare_optuna_engine` on
    ``storage.engine`` next: SQLAlchemy takes no listeners as arguments.
    """
    if make_url(normalize_url(db)).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def prepare_optuna_engine(engine: Engine) -> None:
    """Give an engine that Optuna made the store's SQLite settings (`sqlite_settings`), every transaction
    beginning with BEGIN IMMEDIATE; drops the connections it opened before. Does nothing elsewhere.

    >>> storage = optuna.storages.RDBStorage(url, engine_kwargs=optuna_engine_kwargs(url))
    >>> prepare_optuna_engine(storage.engine)
    """
    if engine.dialect.name != "sqlite":
        return
    event.listen(engine, "connect", sqlite_settings)
    event.listen(engine, "begin", _always_immediate)
    engine.dispose()  # connections opened before the listeners lack the settings
