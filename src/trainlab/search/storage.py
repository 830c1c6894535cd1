"""Where a search's Optuna study lives: Optuna's RDBStorage on the store's URL (SQLite with the store's
connection settings and BEGIN IMMEDIATE, or PostgreSQL), the lock that makes asking for a trial atomic
across worker processes and machines, and opening a study that must already exist. See `search` for why.
The engine settings and the SQL of the locks are the store's (`trainlab.store.engine`, `.locks`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import threading
import warnings
from typing import Any, Iterator
from urllib.parse import unquote

from trainlab.config import ConfigError
from trainlab.store import (
    AdvisoryLock,
    hide_password,
    normalize_url,
    optuna_engine_kwargs,
    prepare_optuna_engine,
    read_only_url,
    sqlite_file,
)

__all__ = ["open_storage", "open_existing_storage", "load_study", "StudyLock", "is_sqlite"]


_ADVISORY_NAMESPACE = 7612  # the first key of the PostgreSQL advisory locks of StudyLock


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def open_storage(url: str | os.PathLike | None, *, heartbeat_s: int | None = None, grace_s: int | None = None,
                 on_stale=None, check: bool = True, read_only: bool = False):
    """Optuna's RDBStorage on `url` (a path or SQLAlchemy URL; None: ./trainlab.db).

    SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE (see the module docstring). With `heartbeat_s`,
    running trials record a heartbeat and a trial silent for `grace_s` (default 3 intervals) is stale;
    `on_stale(study, frozen_trial)` runs for each stale trial that `fail_stale_trials` fails.
    `check=False` skips Optuna's schema-version check (about 0.3 s) when this process already made it.
    `read_only`: opened through the store's read-only URL (`read_only_url`: a SQLite file as ``mode=ro``, never
    created; PostgreSQL in read-only transactions), creating no table and leaving the journal mode alone;
    ValueError (one line) when the database holds no Optuna tables.
    """
    import optuna

    if read_only:
        return _open_read_only(url)
    url = normalize_url(url)
    kwargs: dict[str, Any] = {}
    if heartbeat_s is not None:
        kwargs = {"heartbeat_interval": int(heartbeat_s), "grace_period": int(grace_s or 3 * heartbeat_s),
                  "heartbeat_stale_trial_callback": on_stale}
    with warnings.catch_warnings(), _ctrl_c_deferred():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=optuna_engine_kwargs(url),
                                                 skip_compatibility_check=not check, **kwargs)
        except ImportError as err:
            raise ValueError(f"storage: cannot open {hide_password(url)!r}: driver not installed ({err})") from None
        except Exception as err:  # sqlalchemy OperationalError and friends: one line, the cause
            detail = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
            raise ValueError(f"storage: cannot open {hide_password(url)!r}: {detail}") from None
    prepare_optuna_engine(storage.engine)  # SQLite: the store's settings, every transaction BEGIN IMMEDIATE
    return storage


def _open_read_only(url: str | os.PathLike | None):
    import optuna

    shown = hide_password(normalize_url(url))
    ro = read_only_url(url)  # ValueError naming a missing SQLite file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            # skip_table_creation: nothing is created; the version manager only reads when Optuna's tables exist
            return optuna.storages.RDBStorage(ro, engine_kwargs=optuna_engine_kwargs(url), skip_table_creation=True,
                                              skip_compatibility_check=True)
        except ImportError as err:
            raise ValueError(f"storage: cannot open {shown!r}: driver not installed ({err})") from None
        except Exception as err:
            causes = []  # Optuna wraps the driver's error ("An exception is raised during the commit")
            while err is not None and len(causes) < 10:
                causes.append(str(getattr(err, "orig", None) or err).strip())
                err = err.__cause__ or err.__context__
            if any("no such table" in c or "does not exist" in c for c in causes):
                raise ValueError(f"storage: {shown!r} holds no search study (no Optuna tables)") from None
            detail = (causes[-1] or causes[0]).splitlines()[0] if causes else "unknown error"
            raise ValueError(f"storage: cannot open {shown!r}: {detail}") from None


def _as_given(url: str) -> str:
    """A read-only SQLite URI (`read_only_url`) shown as the file's URL the user gave."""
    m = re.fullmatch(r"sqlite:///file:(.*)\?mode=ro&uri=true", url)
    return f"sqlite:///{unquote(m.group(1))}" if m else url


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
        self._advisory = None
        if is_sqlite(url):
            database = sqlite_file(url)
            if database is not None:  # an in-memory database or a file: URI lives in one process
                self._path = database + ".search-lock"
        elif url.startswith("postgresql"):
            self._advisory = AdvisoryLock(url, namespace=_ADVISORY_NAMESPACE)
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
            elif self._advisory is not None:
                with self._advisory.hold(name):
                    yield
            else:
                yield

    def close(self) -> None:
        if self._advisory is not None:
            self._advisory.close()


def open_existing_storage(url: str | os.PathLike | None, read_only: bool = False):
    """open_storage for reading what is there: ConfigError, not a new empty file, when a SQLite file is missing.
    `read_only`: see `open_storage`."""
    url = normalize_url(url)
    database = sqlite_file(url)
    if database is not None and not os.path.isfile(database):
        raise ConfigError(f"study: no database file {database!r} (give --db or --storage)")
    return open_storage(url, read_only=read_only)


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
        where = _as_given(hide_password(getattr(st, "url", "") or str(storage)))
        raise ConfigError(f"study: no study named {name!r} in {where}{listed}") from None
