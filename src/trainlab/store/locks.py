"""Locks shared by processes and machines through PostgreSQL: transaction-level advisory locks.

SQLite needs none of this: its single writer lock (BEGIN IMMEDIATE, see `engine`) already orders
writers, and a lock beside a SQLite file is a file lock, which its user keeps (`search.storage`).

>>> lock = AdvisoryLock("postgresql://user@host/db", namespace=7612)
>>> with lock.hold("my-study"):     # every process holding the same (namespace, name) waits here
...     ...
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

from trainlab.store.engine import hide_password, normalize_url

__all__ = ["xact_lock", "AdvisoryLock"]


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31  # a signed 32-bit int, what the two-key form takes


def xact_lock(conn: Connection, namespace: int, name: str | None = None) -> None:
    """Wait for PostgreSQL's advisory lock ``namespace`` (with ``name``: the lock (namespace, crc32 of
    name)), held until ``conn``'s transaction ends. Does nothing on other databases."""
    if conn.dialect.name != "postgresql":
        return
    if name is None:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:ns)"), {"ns": int(namespace)})
    else:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:ns, :k)"), {"ns": int(namespace), "k": _name_key(name)})


class AdvisoryLock:
    """A lock per name, shared by every process and machine that uses one PostgreSQL database.

    Each `hold` opens its own connection (no pool: safe across ``fork``) and holds the lock for one
    transaction, so a process that dies releases it. Raises ValueError for a URL that is not PostgreSQL.
    """

    def __init__(self, db: str | os.PathLike, namespace: int):
        url = normalize_url(db)
        if make_url(url).get_backend_name() != "postgresql":
            raise ValueError(f"AdvisoryLock: needs a PostgreSQL URL, got {hide_password(url)!r}")
        self.namespace = int(namespace)
        self._engine = sa.create_engine(url, poolclass=NullPool)

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        with self._engine.begin() as conn:  # the lock ends with this transaction
            xact_lock(conn, self.namespace, name)
            yield

    def close(self) -> None:
        self._engine.dispose()
