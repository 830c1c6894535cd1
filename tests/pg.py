"""A real PostgreSQL server for tests: Debian's `postgresql` binaries, a data directory in /tmp, a loopback port.

Every test module gets the fixture from tests/conftest.py:

    def test_something(pg_url):
        store = Store(pg_url)

One server is started per test session (on first use) and stopped at exit; every test gets its own
database. initdb refuses to run as root, so as root the server runs as the `postgres` user (created by
the Debian package) with `runuser`. Tests skip with the reason when the binaries are absent.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

__all__ = ["pg_url", "pg_server", "PostgresServer", "find_pg_bin"]


def find_pg_bin() -> str | None:
    """The bin folder of the newest installed PostgreSQL (/usr/lib/postgresql/<version>/bin), or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    found.sort(key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl start in a temporary directory; `url(db)` gives a psycopg2 SQLAlchemy URL."""

    def __init__(self, bin_dir: str):
        self.bin = bin_dir
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="trainlab-pg-")  # under /tmp: reachable by the postgres user
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.as_user = None
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user for initdb") from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = "postgres"

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode:
            log = open(self.log).read()[-2000:] if os.path.exists(self.log) else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()} {log}")

    def start(self) -> "PostgresServer":
        self._run(f"{self.bin}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server again on its data directory and port (after `pause`)."""
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-o", opts, "-l", self.log, "-w", "-t", "60", "start")

    def pause(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping its data: a database outage."""
        self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")

    def stop(self) -> None:
        try:
            self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg2

        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()
        return self.url(name)


_server: PostgresServer | None = None


def _shared_server() -> PostgresServer:
    global _server
    if _server is None:
        bin_dir = find_pg_bin()
        if bin_dir is None:
            pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); "
                        "install Debian's postgresql package (scripts/system-deps.sh does)")
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            pytest.skip("psycopg2 is not installed (pip install -e '.[test]')")
        server = PostgresServer(bin_dir)
        started = time.monotonic()
        try:
            server.start()
        except Exception:
            server.stop()
            raise
        atexit.register(server.stop)
        server.seconds = time.monotonic() - started
        _server = server
    return _server


@pytest.fixture
def pg_server():
    """A PostgreSQL server of the test's own (its `url()`, `pause()` and `resume()`): for outages mid-run."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
    pytest.importorskip("psycopg2")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url() -> str:
    """The SQLAlchemy URL of a new, empty database on the session's PostgreSQL server."""
    return _shared_server().create_database()
