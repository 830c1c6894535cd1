"""Where a search's Optuna study lives: Optuna's RDBStorage on the store's URL (SQLite with the store's
connection settings and BEGIN IMMEDIATE, or PostgreSQL), the lock that makes asking for a trial atomic
across worker processes and machines, and opening a study that must already exist. See `search` for why.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import warnings
import zlib
from typing import Any, Iterator

from trainlab.config import ConfigError
from trainlab.store import BUSY_TIMEOUT_S, hide_password, normalize_url, sqlite_settings

__all__ = ["open_storage", "open_existing_storage", "load_study", "StudyLock", "is_sqlite"]


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_on_begin(conn: Any) -> None:
    # Optuna's sessions read, then write. A deferred transaction cannot wait for the write lock once
    # another process has written, so SQLite would fail it at once ("database is locked"); taking the
    # lock up front lets the busy timeout apply. Optuna's transactions are short, so serializing is cheap.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_storage(url: str | os.PathLike | None, *, heartbeat_s: int | None = None, grace_s: int | None = None,
                 on_stale=None, check: bool = True):
    """Optuna's RDBStorage on `url` (a path or SQLAlchemy URL; None: ./trainlab.db).

    SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE (see the module docstring). With `heartbeat_s`,
    running trials record a heartbeat and a trial silent for `grace_s` (default 3 intervals) is stale;
    `on_stale(study, frozen_trial)` runs for each stale trial that `fail_stale_trials` fails.
    `check=False` skips Optuna's schema-version check (about 0.3 s) when this process already made it.
    """
    import optuna
    from sqlalchemy import event

    url = normalize_url(url)
    kwargs: dict[str, Any] = {}
    if heartbeat_s is not None:
        kwargs = {"heartbeat_interval": int(heartbeat_s), "grace_period": int(grace_s or 3 * heartbeat_s),
                  "heartbeat_stale_trial_callback": on_stale}
    engine_kwargs = {"connect_args": {"timeout": BUSY_TIMEOUT_S}} if is_sqlite(url) else {"pool_pre_ping": True}
    with warnings.catch_warnings(), _ctrl_c_deferred():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_compatibility_check=not check,
                                                 **kwargs)
        except ImportError as err:
            raise ValueError(f"storage: cannot open {hide_password(url)!r}: driver not installed ({err})") from None
        except Exception as err:  # sqlalchemy OperationalError and friends: one line, the cause
            detail = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
            raise ValueError(f"storage: cannot open {hide_password(url)!r}: {detail}") from None
    if is_sqlite(url):
        event.listen(storage.engine, "connect", sqlite_settings)
        event.listen(storage.engine, "begin", _sqlite_on_begin)
        storage.engine.dispose()  # connections opened by RDBStorage's constructor lack the listeners
    return storage


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) until the block ends, then deliver it to the handler that was there.

    RDBStorage's constructor writes Optuna's schema version in a transaction of its own; an interrupt
    in the middle of it left that connection holding SQLite's write lock, and the interrupted command
    then could not record that it stopped ("database is locked"). Only the main thread can swap handlers;
    elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, caught[0])
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


class StudyLock:
    """A lock shared by every worker of a storage: an flock file beside a SQLite database, a PostgreSQL
    advisory lock otherwise. Held only for a few short storage calls (count, ask, first heartbeat)."""

    def __init__(self, url: str):
        self.url = url
        self._local = threading.Lock()
        self._path = None
        self._engine = None
        if is_sqlite(url):
            from sqlalchemy.engine import make_url

            database = make_url(url).database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                self._path = os.path.abspath(database) + ".search-lock"
        elif url.startswith("postgresql"):
            import sqlalchemy as sa

            self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        else:
            raise ValueError(f"storage: search workers need SQLite or PostgreSQL, got {hide_password(url)!r}")

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        with self._local:
            if self._path is not None:
                with open(self._path, "a") as f:
                    fcntl.flock(f, fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        fcntl.flock(f, fcntl.LOCK_UN)
            elif self._engine is not None:
                import sqlalchemy as sa

                key = zlib.crc32(name.encode()) - 2**31  # a signed 32-bit int
                with self._engine.begin() as conn:  # the xact lock ends with this transaction
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7612, :k)"), {"k": key})
                    yield
            else:
                yield

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def open_existing_storage(url: str | os.PathLike | None):
    """open_storage for reading what is there: ConfigError, not a new empty file, when a SQLite file is missing."""
    url = normalize_url(url)
    if is_sqlite(url):
        from sqlalchemy.engine import make_url

        database = make_url(url).database or ""
        if database and not database.startswith("file:") and database != ":memory:" and not os.path.isfile(database):
            raise ConfigError(f"study: no database file {database!r} (give --db or --storage)")
    return open_storage(url)


def load_study(name: str, storage=None):
    """The Optuna study `name` in `storage` (a URL, a path or an Optuna storage); ConfigError naming the
    studies there when it is missing."""
    import optuna

    st = storage if isinstance(storage, optuna.storages.BaseStorage) else open_existing_storage(storage)
    try:
        return optuna.load_study(study_name=name, storage=st)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
        listed = f"; studies there: {', '.join(names[:10])}" if names else "; there are none"
        where = hide_password(getattr(st, "url", "") or str(storage))
        raise ConfigError(f"study: no study named {name!r} in {where}{listed}") from None
