"""The store's engines and locks: read-only stores that cannot write or create, the engine Optuna gets
(WAL, busy timeout, BEGIN IMMEDIATE, read back from real connections), PostgreSQL advisory locks."""

import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa

from trainlab.store import (
    AdvisoryLock,
    Store,
    make_engine,
    optuna_engine_kwargs,
    prepare_optuna_engine,
    read_only_url,
    sqlite_file,
)
from trainlab.store.locks import xact_lock


@pytest.fixture
def stored(tmp_path):
    """A SQLite store with one run and its metrics, closed."""
    path = tmp_path / "runs.db"
    with Store(path) as store:
        run = store.create_run(name="r", hparams={"lr": 0.1}, study="s")
        store.log_metrics(run, [(s, 0, "loss", 1.0 / (s + 1)) for s in range(40)])
    return path, run


def _tables(path):
    with sqlite3.connect(path) as db:
        return {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# ------------------------------------------------------------------------------ read-only


def test_read_only_store_reads_and_refuses_every_write(stored):
    path, run = stored
    store = Store(path, read_only=True)
    assert store.read_only and "mode=ro" in store.url
    assert store.run(run)["name"] == "r" and len(store.metrics(run)["loss"]["value"]) == 40
    with pytest.raises(sa.exc.OperationalError, match="attempt to write a readonly database"):
        store.create_run(name="x", hparams={})
    with pytest.raises(sa.exc.OperationalError, match="attempt to write a readonly database"):
        store.log_metrics(run, [(99, 1, "loss", 0.0)])
    with pytest.raises(sa.exc.OperationalError, match="attempt to write a readonly database"):
        store.update_run(run, epochs=7)
    store.close()
    with Store(path) as writer:  # nothing changed
        assert [r["id"] for r in writer.runs()] == [run] and writer.run(run)["epochs"] == 0
        assert len(writer.metrics(run)["loss"]["step"]) == 40


def test_read_only_engine_refuses_writes_even_through_a_uri_that_names_its_mode(stored):
    path, _ = stored
    for db in (path, f"sqlite:///file:{path}?uri=true", f"sqlite:///file:{path}?mode=rw&uri=true"):
        engine = make_engine(db, read_only=True)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 1
            assert conn.exec_driver_sql("SELECT count(*) FROM tl_runs").scalar() == 1
            with pytest.raises(sa.exc.OperationalError, match="attempt to write a readonly database"):
                conn.exec_driver_sql("CREATE TABLE intruder (a)")
        engine.dispose()
    assert "intruder" not in _tables(path)


def test_read_only_never_creates_a_missing_file_or_tables(tmp_path):
    missing = tmp_path / "nope.db"
    with pytest.raises(ValueError, match=r"^db: no store at .*nope\.db \(train something first"):
        Store(missing, read_only=True)
    with pytest.raises(ValueError, match=r"^db: no store at "):
        make_engine(missing, read_only=True)
    assert not missing.exists()
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE trials (id INTEGER)").connection.close()
    with pytest.raises(ValueError, match=r"^db: '.*other\.db.*' holds no trainlab store \(missing table tl_metric_blocks, "
                                         r"tl_metrics, tl_runs, tl_studies;"):
        Store(tmp_path / "other.db", read_only=True)
    assert _tables(tmp_path / "other.db") == {"trials"}
    with pytest.raises(ValueError, match=r"^db: cannot open 'sqlite://' read-only: a new in-memory database is empty"):
        Store("sqlite://", read_only=True)


def test_read_only_reads_an_older_store_without_adding_its_blocks(stored):
    path, run = stored
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE tl_metric_blocks")
    with Store(path, read_only=True) as store:
        got = store.metric_buckets([run], ["loss"], 2)[run]["loss"]
    # from the rows: 20 steps a bucket (whole blocks of 8 would give 24)
    assert (got["width"], got["first"], got["max"]) == (20, [0, 20], [1.0, 1 / 21])
    assert "tl_metric_blocks" not in _tables(path)


@pytest.mark.parametrize("db, url", [
    ("/x/runs.db", "sqlite:///file:/x/runs.db?mode=ro&uri=true"),
    ("/x/a b.db", "sqlite:///file:/x/a%20b.db?mode=ro&uri=true"),
    ("sqlite:///file:/x/r.db?uri=true", "sqlite:///file:/x/r.db?uri=true&mode=ro"),
    ("sqlite:///file:m?mode=memory&cache=shared&uri=true", "sqlite:///file:m?mode=memory&cache=shared&uri=true"),
    ("postgresql+psycopg2://u:p@h/db", "postgresql+psycopg2://u:p@h/db?options=-c+default_transaction_read_only%3Don"),
    ("postgresql+psycopg2://h/db?options=-c+x%3D1", "postgresql+psycopg2://h/db?options=-c+x%3D1"),
])
def test_read_only_url(monkeypatch, db, url):
    monkeypatch.setattr("os.path.isfile", lambda p: True)  # the files named need not exist for the URL
    assert read_only_url(db) == url
    assert read_only_url(url) == url  # once read-only, it stays as it is


@pytest.mark.parametrize("db, path", [
    ("/x/runs.db", "/x/runs.db"),
    ("sqlite:////x/runs.db", "/x/runs.db"),
    ("sqlite://", None),
    ("sqlite:///:memory:", None),
    ("sqlite:///file:/x/r.db?mode=ro&uri=true", None),
    ("postgresql+psycopg2://h/db", None),
])
def test_sqlite_file(db, path):
    assert sqlite_file(db) == path


# ----------------------------------------------------------------------------------- Optuna


def _pragmas(engine):
    with engine.connect() as conn:
        return tuple(conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "busy_timeout",
                                                                             "synchronous"))


def _writer_can_start(path) -> bool:
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as err:
        assert "database is locked" in str(err)
        return False
    finally:
        other.close()


def test_optuna_engine_gets_wal_busy_timeout_and_begin_immediate(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    plain = sa.create_engine(url, **optuna_engine_kwargs(url))
    assert _pragmas(plain) == ("delete", 30000, 2)  # SQLite's defaults (the timeout from connect_args)
    engine = sa.create_engine(url, **optuna_engine_kwargs(url))
    prepare_optuna_engine(engine)
    assert _pragmas(engine) == ("wal", 30000, 1)  # WAL, 30 s, synchronous=NORMAL
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1").scalar()  # a read, yet the transaction took the write lock
        assert not _writer_can_start(tmp_path / "optuna.db")
    assert _writer_can_start(tmp_path / "optuna.db")
    plain.dispose()
    engine.dispose()


def test_optuna_storage_engine_has_the_store_settings(tmp_path):
    from trainlab.search.storage import open_storage

    storage = open_storage(tmp_path / "s.db")
    assert _pragmas(storage.engine) == ("wal", 30000, 1)
    assert storage.get_all_studies() == []
    storage.engine.dispose()


def test_optuna_engine_kwargs_elsewhere():
    assert optuna_engine_kwargs("postgresql+psycopg2://h/db") == {"pool_pre_ping": True}
    engine = sa.create_engine("postgresql+psycopg2://h/db", **optuna_engine_kwargs("postgresql+psycopg2://h/db"))
    prepare_optuna_engine(engine)  # nothing to do: it does not connect (no server answers at h)


# ------------------------------------------------------------------------------------ locks


def test_advisory_lock_serializes_holders_of_one_name(pg_url):  # noqa: F811
    first, second = AdvisoryLock(pg_url, namespace=7612), AdvisoryLock(pg_url, namespace=7612)
    order = []
    held = threading.Event()

    def hold_then_release():
        with first.hold("study-a"):
            order.append("first in")
            held.set()
            time.sleep(0.5)
            order.append("first out")

    thread = threading.Thread(target=hold_then_release)
    thread.start()
    held.wait(10)
    start = time.perf_counter()
    with second.hold("study-b"):  # another name: no wait
        assert time.perf_counter() - start < 0.4
    with second.hold("study-a"):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    first.close()
    second.close()


def test_advisory_lock_needs_postgresql_and_xact_lock_is_a_no_op_elsewhere(tmp_path):
    with pytest.raises(ValueError, match=r"^AdvisoryLock: needs a PostgreSQL URL, got 'sqlite:///"):
        AdvisoryLock(tmp_path / "x.db", namespace=1)
    engine = make_engine(tmp_path / "x.db")
    with engine.begin() as conn:
        xact_lock(conn, 1, "name")
    engine.dispose()
