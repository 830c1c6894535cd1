"""What a database error means for the user: bad input (exit 2), a fault that may pass (exit 1), or a bug.

SQLAlchemy wraps the driver's error (sqlite3, psycopg2, psycopg) in its own classes; the message is the
driver's. `classify(err)` reads both and answers a `StoreFault` with one line, or None for an error that is
not about reaching or reading the database (an integrity error, a programming error: a bug, shown in full).

- bad input (exit 2): the file is not a SQLite database or is corrupted, cannot be opened (its folder is
  unreadable), or the server refuses the database name or the credentials;
- unavailable (exit 1, *transient*: a training run keeps its rows in memory and retries): the server cannot
  be reached or went away, the disk is full, the database is locked past the busy timeout, a write fails
  with an I/O error or on a read-only file.

    try:
        store.log_metrics(run, rows)
    except Exception as err:
        fault = classify(err, store.url)
        if fault is None or not fault.transient:
            raise
"""

from __future__ import annotations

import sqlalchemy as sa

from trainlab.store.engine import hide_password

__all__ = ["StoreFault", "StoreUnavailable", "StoreUnusable", "classify", "is_transient"]


class StoreFault(Exception):
    """A database error explained in one line; `exit_code` is what the command line exits with."""

    exit_code = 1
    transient = False


class StoreUnavailable(StoreFault, RuntimeError):
    """The database cannot be reached or written now (server down, disk full, locked): exit 1; may pass."""

    exit_code = 1
    transient = True


class StoreUnusable(StoreFault, ValueError):
    """The database named is not a usable store (not a database, corrupted, unreadable, unknown name): exit 2."""

    exit_code = 2
    transient = False


# (substring of the driver's message, lower case) -> class; the first match wins
_PATTERNS = (
    ("file is not a database", StoreUnusable),
    ("malformed", StoreUnusable),
    ("unable to open database file", StoreUnusable),
    ("does not exist", StoreUnusable),
    ("authentication failed", StoreUnusable),
    ("no password supplied", StoreUnusable),
    ("permission denied for", StoreUnusable),
    ("database or disk is full", StoreUnavailable),
    ("no space left", StoreUnavailable),
    ("could not extend file", StoreUnavailable),
    ("disk i/o error", StoreUnavailable),
    ("database is locked", StoreUnavailable),
    ("readonly database", StoreUnavailable),
    ("read-only", StoreUnavailable),
    ("connection refused", StoreUnavailable),
    ("could not connect", StoreUnavailable),
    ("connection to server", StoreUnavailable),
    ("server closed the connection", StoreUnavailable),
    ("terminating connection", StoreUnavailable),
    ("connection already closed", StoreUnavailable),
    ("the database system is", StoreUnavailable),  # ... starting up / shutting down / in recovery mode
    ("timeout expired", StoreUnavailable),
    ("could not translate host name", StoreUnusable),
    ("ssl syscall error", StoreUnavailable),
)


def _driver_message(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err).strip()
    return text.splitlines()[0].strip() if text else type(orig or err).__name__


def _database_error(err: BaseException) -> BaseException | None:
    """`err`, or the database error it was raised from (a ValueError may wrap an OperationalError)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, sa.exc.DBAPIError) or type(err).__module__.split(".")[0] in ("sqlite3", "psycopg2",
                                                                                        "psycopg"):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def classify(err: BaseException, url: str | None = None, doing: str = "cannot use") -> StoreFault | None:
    """`err` as a StoreFault with one line ("db: <doing> '<url>': <the driver's reason>"), or None when it is
    not a failure to reach or read the database (already a StoreFault: returned as it is)."""
    if isinstance(err, StoreFault):
        return err
    found = _database_error(err)
    if found is None:
        return None
    if isinstance(found, (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.DataError)):
        return None
    message = _driver_message(found)
    low = message.lower()
    kind = next((cls for pattern, cls in _PATTERNS if pattern in low), None)
    if kind is None:
        if isinstance(found, (sa.exc.OperationalError, sa.exc.InterfaceError)) or \
                getattr(found, "connection_invalidated", False):
            kind = StoreUnavailable
        elif isinstance(found, sa.exc.DatabaseError):
            kind = StoreUnusable
        else:
            return None
    where = f" {hide_password(url)!r}" if url else " the store"
    out = kind(f"db: {doing}{where}: {hide_password(message)}")
    out.__cause__ = None
    return out


def is_transient(err: BaseException, url: str | None = None) -> bool:
    """Whether `err` is a database fault that may pass (retry later)."""
    fault = classify(err, url)
    return fault is not None and fault.transient
