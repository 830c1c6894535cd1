"""Tests of the run store: round trips, metrics, errors, and many processes writing one SQLite file."""

import importlib.util
import math
import multiprocessing
import os
import sqlite3
import threading
import time
import traceback
from datetime import datetime, timedelta, timezone

import pytest

import numpy as np

from trainlab.store import METRIC_BLOCK, StoreFault, STORED_STATUSES, MetricBuffer, RunNotFound, Store, normalize_url


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "runs.db")
    yield s
    s.close()


# ------------------------------------------------------------------ round trip


def test_run_round_trip_every_field(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = Store(url)
    hparams = {"lr": 0.1, "schedule": {"name": "multistep", "milestones": [30, 60, [1, 2]]}, "tags": ["a", None]}
    run_id = store.create_run(name="baseline", hparams=hparams, seed=7, study="sweep", host="box1")
    store.update_run(run_id, epochs=3, best_metric=0.75, best_epoch=2, checkpoint=tmp_path / "best.pt")
    store.update_run(run_id, summary={"test_acc": 0.9, "verdict": "ok"})
    store.update_run(run_id, summary={"verdict": "overfits", "snapshots": ["a.pt", "b.pt"]})
    store.finish_run(run_id, "stopped", reason="early stopping at epoch 3", epochs=4)
    store.close()

    again = Store(url)  # a fresh Store reads what the first one wrote
    run = again.run(run_id)
    assert run["id"] == run_id
    assert run["name"] == "baseline"
    assert run["study"] == "sweep"
    assert run["study_id"] == again.study_id("sweep", create=False)
    assert run["kind"] == "train"
    assert run["hparams"] == hparams
    assert run["seed"] == 7
    assert run["host"] == "box1"
    assert run["status"] == "stopped"
    assert run["reason"] == "early stopping at epoch 3"
    assert run["epochs"] == 4
    assert run["best_metric"] == 0.75
    assert run["best_epoch"] == 2
    assert run["checkpoint"] == str(tmp_path / "best.pt")
    # merged, not replaced: test_acc survives the second update
    assert run["summary"] == {"test_acc": 0.9, "verdict": "overfits", "snapshots": ["a.pt", "b.pt"]}
    created = datetime.fromisoformat(run["created"])
    finished = datetime.fromisoformat(run["finished"])
    assert created.utcoffset() == timedelta(0) and finished.utcoffset() == timedelta(0)
    assert created <= finished <= datetime.now(timezone.utc)
    assert set(run) == {
        "id", "study_id", "study", "name", "kind", "hparams", "status", "reason", "created", "updated",
        "finished", "best_metric", "best_epoch", "epochs", "checkpoint", "seed", "host", "summary", "pid", "node",
        "heartbeat",
    }  # fmt: skip
    again.close()


def test_create_run_defaults(store):
    run = store.run(store.create_run(name="r", hparams={}))
    assert run["status"] == "running"
    assert run["kind"] == "train"
    assert run["study"] is None and run["study_id"] is None
    assert run["summary"] == {}
    assert run["epochs"] == 0
    assert run["finished"] is None and run["best_metric"] is None and run["seed"] is None
    assert run["host"]  # this machine's name


@pytest.mark.parametrize("status", STORED_STATUSES[1:])
def test_every_final_status_round_trips(store, status):
    run_id = store.create_run(name="r", hparams={})
    store.finish_run(run_id, status, reason=f"because {status}")
    run = store.run(run_id)
    assert (run["status"], run["reason"]) == (status, f"because {status}")
    assert run["finished"] is not None
    assert [r["id"] for r in store.runs(status=status)] == [run_id]


def test_finish_run_takes_given_time_in_utc(store):
    run_id = store.create_run(name="r", hparams={})
    at = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    store.finish_run(run_id, "completed", finished=at)
    assert store.run(run_id)["finished"] == "2024-05-01T12:00:00.000000+00:00"


def test_study_id(store):
    assert store.study_id("a", create=False) is None
    a = store.study_id("a")
    assert store.study_id("a") == a == store.study_id("a", create=False)
    assert store.study_id("b") != a


def test_runs_filters_and_order(store):
    a = store.create_run(name="a", hparams={}, study="s1")
    b = store.create_run(name="b", hparams={}, study="s2")
    c = store.create_run(name="c", hparams={}, study="s1", kind="check")
    d = store.create_run(name="d", hparams={}, study="s1")
    store.finish_run(d, "diverged", reason="loss is NaN at step 12")
    assert [r["id"] for r in store.runs()] == [a, b, d]
    assert [r["id"] for r in store.runs(kind=None)] == [a, b, c, d]
    assert [r["id"] for r in store.runs(study="s1")] == [a, d]
    assert [r["id"] for r in store.runs(study="s1", kind="check")] == [c]
    assert [r["id"] for r in store.runs(status="diverged")] == [d]
    assert store.runs(study="nope") == []
    assert store.study_id("nope", create=False) is None  # a read never creates


def test_studies_aggregates(store):
    assert store.studies() == []
    s1 = [store.create_run(name=f"r{i}", hparams={}, study="s1") for i in range(5)]
    store.finish_run(s1[0], "completed", best_metric=0.5)
    store.finish_run(s1[1], "completed", best_metric=0.9)
    store.finish_run(s1[2], "pruned", best_metric=0.3)
    store.finish_run(s1[3], "failed", reason="CUDA out of memory")
    check = store.create_run(name="check", hparams={}, study="s1", kind="check")
    store.update_run(check, best_metric=5.0)
    store.study_id("empty")
    store.create_run(name="free", hparams={})  # no study

    s1_row, empty = store.studies()
    assert s1_row["name"] == "s1" and empty["name"] == "empty"
    assert s1_row["runs"] == 5
    assert s1_row["status"] == {"completed": 2, "pruned": 1, "failed": 1, "running": 1}
    assert s1_row["best_metric"] == 0.9  # the check run's 5.0 is not a training result
    assert s1_row["last_activity"] == max(r["updated"] for r in store.runs(study="s1"))
    assert empty == {
        "id": empty["id"], "name": "empty", "created": empty["created"], "runs": 0,
        "best_metric": None, "status": {}, "last_activity": empty["created"],
    }  # fmt: skip
    everything = store.studies(kind=None)[0]
    assert everything["runs"] == 6 and everything["best_metric"] == 5.0


# --------------------------------------------------------------------- metrics


def test_metrics_nan_inf_round_trip_and_order(store):
    run_id = store.create_run(name="r", hparams={})
    rows = [
        (2, 0, "loss", float("nan")),
        (0, 0, "loss", 2.5),
        (1, 0, "loss", float("inf")),
        (3, 1, "loss", float("-inf")),
        (0, None, "lr", 0.1),
        (10, 1, "val_acc", 0.5),
        (1, None, "lr", 0.2),
    ]
    store.log_metrics(run_id, rows)
    got = store.metrics(run_id)
    assert list(got) == ["loss", "lr", "val_acc"]
    loss = got["loss"]
    assert loss["step"] == [0, 1, 2, 3]
    assert loss["epoch"] == [0, 0, 0, 1]
    assert loss["value"][0] == 2.5
    assert loss["value"][1] == math.inf
    assert math.isnan(loss["value"][2])
    assert loss["value"][3] == -math.inf
    assert got["lr"] == {"step": [0, 1], "epoch": [None, None], "value": [0.1, 0.2]}
    assert store.metrics(run_id, keys=["val_acc", "missing"]) == {
        "val_acc": {"step": [10], "epoch": [1], "value": [0.5]}
    }
    assert store.metric_keys(run_id) == ["loss", "lr", "val_acc"]


def test_metrics_are_per_run(store):
    a = store.create_run(name="a", hparams={})
    b = store.create_run(name="b", hparams={})
    store.log_metrics(a, [(0, 0, "loss", 1.0)])
    assert store.metrics(b) == {}
    assert store.metric_keys(b) == []


def test_delete_metrics_after(store):
    run_id = store.create_run(name="r", hparams={})
    other = store.create_run(name="o", hparams={})
    store.log_metrics(run_id, [(s, s // 10, k, float(s)) for s in range(30) for k in ("loss", "lr")])
    store.log_metrics(other, [(s, 0, "loss", 0.0) for s in range(30)])
    store.delete_metrics_after(run_id, 19)
    got = store.metrics(run_id)
    assert got["loss"]["step"] == list(range(20)) and got["lr"]["step"] == list(range(20))
    # resuming relogs the deleted steps: no duplicates
    store.log_metrics(run_id, [(s, 2, "loss", -1.0) for s in range(20, 25)])
    assert store.metrics(run_id, ["loss"])["loss"]["step"] == list(range(25))
    assert len(store.metrics(other)["loss"]["step"]) == 30  # other runs untouched


def _buckets_of(values: np.ndarray, width: int) -> dict:
    """What metric_buckets must answer for a series logged at steps 0..n-1, computed here from the values."""
    out = {"width": width, "first": [], "last": [], "min": [], "max": [], "mean": [], "count": [], "nan": []}
    for start in range(0, len(values), width):
        chunk = values[start:start + width]
        ok = chunk[~np.isnan(chunk)]
        out["first"].append(start)
        out["last"].append(start + len(chunk) - 1)
        out["min"].append(float(ok.min()) if len(ok) else None)
        out["max"].append(float(ok.max()) if len(ok) else None)
        out["mean"].append(float(ok.mean()) if len(ok) else None)
        out["count"].append(len(chunk))
        out["nan"].append(len(chunk) - len(ok))
    return out


def _assert_buckets(got: dict, want: dict) -> None:
    assert {k: v for k, v in got.items() if k != "mean"} == {k: v for k, v in want.items() if k != "mean"}
    nan = [math.nan if v is None else v for v in got["mean"]], [math.nan if v is None else v for v in want["mean"]]
    assert nan[0] == pytest.approx(nan[1], rel=1e-12, nan_ok=True)


def _check_long_series(store: Store) -> None:
    """Written in uneven batches that split blocks, cut back by a resume in the middle of a block and
    written again: the buckets read from the blocks equal the ones computed from the rows."""
    rng = np.random.default_rng(3)
    values = rng.standard_normal(3001)
    values[[5, 6, 7, 2000]] = np.nan  # step 5..7: a whole block of NaN but for step 4
    values[1234] = 80.0
    run = store.create_run(name="long", hparams={})
    for lo, hi in [(0, 3), (3, 1001), (1001, 1500), (1500, 2203)]:
        store.log_metrics(run, [(s, 1, "loss", float(values[s])) for s in range(lo, hi)])
    store.log_metrics(run, [(s, 1, "loss", 123.0) for s in range(2203, 2600)])  # replaced after the resume
    store.delete_metrics_after(run, 2202)
    store.log_metrics(run, [(s, 1, "loss", float(values[s])) for s in range(2203, 3001)])
    store.log_metrics(run, [(s, 1, "sparse", float(s)) for s in range(0, 3001, 30)])  # 101 points

    got = store.metric_buckets([run], ["loss", "sparse"], 150)[run]
    width = math.ceil(math.ceil(3001 / 150) / METRIC_BLOCK) * METRIC_BLOCK
    assert width == 24
    _assert_buckets(got["loss"], _buckets_of(values, width))
    assert got["loss"]["max"][1234 // width] == 80.0
    assert got["sparse"]["width"] == 21 and got["sparse"]["max"] == [float(s) for s in range(0, 3001, 30)]
    _assert_buckets(store.metric_buckets([run], ["loss"], 3000)[run]["loss"], _buckets_of(values, 2))  # rows
    with store._engine.connect() as conn:
        assert tuple(conn.exec_driver_sql(
            "SELECT count(*), sum(n_rows) FROM tl_metric_blocks WHERE key = 'loss'").one()) == (
            math.ceil(3001 / METRIC_BLOCK), 3001)


def test_metric_buckets_of_long_series_come_from_the_summary_blocks(store):
    _check_long_series(store)


def test_metric_blocks_on_postgresql(pg_url):  # noqa: F811
    store = Store(pg_url)
    _check_long_series(store)
    store.close()


def test_an_older_store_without_blocks_is_read_and_then_upgraded(tmp_path):
    path = tmp_path / "old.db"
    store = Store(path)
    rng = np.random.default_rng(4)
    values = rng.standard_normal(2000)
    run = store.create_run(name="r", hparams={})
    store.log_metrics(run, [(s, 1, "loss", float(v)) for s, v in enumerate(values)])
    store.close()
    with sqlite3.connect(path) as db:  # as written before the blocks existed
        db.execute("DROP TABLE tl_metric_blocks")
    want = _buckets_of(values, 16)

    read_only = Store(f"sqlite:///file:{path}?mode=ro&uri=true")  # cannot add the table: reads the rows
    got = read_only.metric_buckets([run], ["loss"], 125)[run]["loss"]
    _assert_buckets(got, want)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'tl_metric_blocks'").fetchone() == (0,)

    upgraded = Store(path)  # a writer adds the table and fills it from the rows
    _assert_buckets(upgraded.metric_buckets([run], ["loss"], 125)[run]["loss"], want)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*), sum(n_rows) FROM tl_metric_blocks").fetchone() == (250, 2000)


def test_log_metrics_many_rows_in_chunks(store):
    run_id = store.create_run(name="r", hparams={})
    store.log_metrics(run_id, ((s, None, "loss", s * 0.5) for s in range(1234)))  # any iterable
    values = store.metrics(run_id)["loss"]["value"]
    assert values == [s * 0.5 for s in range(1234)]


def test_metric_buffer_batches(store):
    run_id = store.create_run(name="r", hparams={})
    buf = MetricBuffer(store, run_id, max_rows=10)
    for step in range(9):
        buf.add(step, 0, "loss", float(step))
    assert store.metrics(run_id) == {}  # nothing written before max_rows
    buf.add(9, 0, "loss", 9.0)
    assert len(store.metrics(run_id)["loss"]["step"]) == 10 and len(buf) == 0
    with buf:
        buf.add(10, 1, "loss", 10.0)
    assert store.metrics(run_id)["loss"]["step"] == list(range(11))


def test_metric_buffer_keeps_rows_when_flush_fails(store):
    buf = MetricBuffer(store, 999, max_rows=100)
    buf.add(0, 0, "loss", 1.0)
    with pytest.raises(RunNotFound):
        buf.flush()
    assert len(buf) == 1


# ---------------------------------------------------------------------- errors


def test_run_not_found(tmp_path):
    store = Store(tmp_path / "x.db")
    expected = f"no run with id 7 in sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(RunNotFound, match=f"^{expected}$") as info:
        store.run(7)
    assert isinstance(info.value, KeyError)
    assert str(info.value) == info.value.args[0] == expected  # the CLI prints args[0]
    assert (info.value.run_id, info.value.url) == (7, f"sqlite:///{tmp_path / 'x.db'}")
    for call in (
        lambda: store.update_run(7, epochs=1),
        lambda: store.finish_run(7, "completed"),
        lambda: store.log_metrics(7, [(0, 0, "loss", 1.0)]),
        lambda: store.metrics(7),
        lambda: store.metric_keys(7),
        lambda: store.delete_metrics_after(7, 0),
    ):
        with pytest.raises(RunNotFound, match="no run with id 7"):
            call()
    store.close()


def test_run_not_found_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(RunNotFound(3, "sqlite:///a.db")))
    assert str(err) == "no run with id 3 in sqlite:///a.db"
    assert (err.run_id, err.url) == (3, "sqlite:///a.db")


def test_url_password_is_hidden_in_messages():
    err = RunNotFound(1, "x")
    assert str(err) == "no run with id 1 in x"
    for url in (
        "postgresql+nosuchdriver://user:secret@localhost/db",  # unknown kind
        "postgresql://user:secret@localhost:notaport/db",  # malformed
        "postgresql+psycopg2://user:secret@127.0.0.1:1/db",  # nothing listens (or no driver): StoreUnavailable
    ):
        with pytest.raises((ValueError, StoreFault), match=r"^db: cannot open 'postgresql\S*://user:\*\*\*@") as info:
            Store(url)
        assert "secret" not in str(info.value)


def test_unknown_status_and_field(store):
    run_id = store.create_run(name="r", hparams={})
    with pytest.raises(ValueError, match=r"^status must be one of running, completed, .*pruned; got 'done'$"):
        store.update_run(run_id, status="done")
    with pytest.raises(ValueError, match=r"^update_run: unknown field 'best_acc'; known fields: status, "):
        store.update_run(run_id, best_acc=0.9)
    with pytest.raises(ValueError, match=r"^status must be one of completed, .*; got 'running'$"):
        store.finish_run(run_id, "running")
    with pytest.raises(ValueError, match=r"^status must be one of .*; got 'nope'$"):
        store.runs(status="nope")
    with pytest.raises(ValueError, match=r"^summary: expected a dict, got list"):
        store.update_run(run_id, summary=[1])
    with pytest.raises(ValueError, match=r"^epochs: expected an integer, got 1.5$"):
        store.update_run(run_id, epochs=1.5)
    with pytest.raises(ValueError, match=r"^hparams: not JSON-serializable: "):
        store.create_run(name="r", hparams={"f": object()})
    with pytest.raises(ValueError, match=r"^log_metrics: bad row \(0, 0, 'loss'\)"):
        store.log_metrics(run_id, [(0, 0, "loss")])
    assert store.run(run_id)["status"] == "running"  # nothing written by the failed calls
    assert store.runs(kind=None) == store.runs()  # the bad create_run left no run
    assert len(store.runs()) == 1


@pytest.mark.parametrize(
    "db, url",
    [
        (None, "sqlite:///trainlab.db"),
        ("x.db", "sqlite:///x.db"),
        ("runs/x.db", "sqlite:///runs/x.db"),
        ("/abs/x.db", "sqlite:////abs/x.db"),
        ("sqlite:///y.db", "sqlite:///y.db"),
        ("postgresql+psycopg2://u:p@host:5432/db", "postgresql+psycopg2://u:p@host:5432/db"),
        ("postgresql+psycopg://host/db", "postgresql+psycopg://host/db"),
    ],
)
def test_normalize_url(db, url):
    assert normalize_url(db) == url


def test_normalize_url_bare_postgresql_gets_an_installed_driver():
    url = normalize_url("postgresql://u:p@host:5432/db")
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        assert url == "postgresql+psycopg2://u:p@host:5432/db"
    else:
        assert url == "postgresql://u:p@host:5432/db"


def test_normalize_url_path_objects(tmp_path):
    assert normalize_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert normalize_url("~/a.db") == "sqlite:///" + os.path.expanduser("~/a.db")


@pytest.mark.parametrize(
    "db, message",
    [
        ("foo://x", r"^db: cannot open 'foo://x': unknown database kind 'foo'"),
        ("postgresql://host:notaport/db", r"^db: cannot open 'postgresql://host:notaport/db': "),
        ("", r"^db: cannot open '': empty"),
        (3, r"^db: cannot open 3: expected a path or a database URL$"),
    ],
)
def test_normalize_url_rejects(db, message):
    with pytest.raises(ValueError, match=message):
        normalize_url(db)


def test_missing_folder_is_a_clear_error(tmp_path):
    path = tmp_path / "nope" / "x.db"
    with pytest.raises(ValueError, match=r"^db: cannot open '.*x\.db': folder '.*nope' does not exist$"):
        Store(path)
    assert not (tmp_path / "nope").exists()  # not created behind the user's back


def test_unopenable_file_is_a_clear_error(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(ValueError, match=r"^db: cannot open '.*dir\.db': "):
        Store(tmp_path / "dir.db")


def test_in_memory_store_is_one_database_across_threads():
    store = Store("sqlite://")
    run_id = store.create_run(name="r", hparams={})
    seen = []
    thread = threading.Thread(target=lambda: seen.append(store.run(run_id)["name"]))
    thread.start()
    thread.join()
    assert seen == ["r"]


def test_store_package_imports_no_torch_or_numpy():
    import subprocess
    import sys

    code = ("import sys, trainlab.store\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'numpy')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- SQLite locks


def test_sqlite_settings(tmp_path):
    path = tmp_path / "runs.db"
    store = Store(path)
    store.create_run(name="r", hparams={})
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent, per file
    names = {n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert names == {"tl_studies", "tl_runs", "tl_metrics", "tl_metric_blocks"}  # nothing that clashes with Optuna's tables
    indexes = {n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_tl_metrics_run_key", "ix_tl_metrics_run_step"} <= indexes
    raw.close()
    with store._engine.connect() as conn:  # per-connection settings
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    store.close()


def test_reads_never_wait_for_a_writer_and_writes_wait(tmp_path):
    path = tmp_path / "runs.db"
    store = Store(path)
    run_id = store.create_run(name="r", hparams={}, study="s")
    store.log_metrics(run_id, [(0, 0, "loss", 1.0)])

    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    locker.execute("UPDATE tl_runs SET reason = 'locked' WHERE id = ?", (run_id,))
    try:
        start = time.perf_counter()
        reader = Store(path)  # opening an existing store only reads
        assert reader.run(run_id)["reason"] is None  # the last committed state
        assert reader.metrics(run_id)["loss"]["value"] == [1.0]
        assert reader.studies()[0]["runs"] == 1
        assert [r["id"] for r in reader.runs()] == [run_id]
        assert time.perf_counter() - start < 2.0  # did not wait out the 30 s busy timeout

        def release():
            time.sleep(0.5)
            locker.execute("COMMIT")

        thread = threading.Thread(target=release)
        thread.start()
        start = time.perf_counter()
        store.update_run(run_id, epochs=1)  # waits for the lock instead of failing
        waited = time.perf_counter() - start
        thread.join()
        assert 0.3 < waited < 10
    finally:
        locker.close()
    run = reader.run(run_id)
    assert run["reason"] == "locked" and run["epochs"] == 1
    reader.close()
    store.close()


def test_store_survives_fork(tmp_path):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(name="parent", hparams={})
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_forked_child, args=(store, run_id))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert store.metrics(run_id)["loss"]["step"] == [0, 1]
    store.close()


def _forked_child(store, run_id):
    store.log_metrics(run_id, [(0, 0, "loss", 1.0), (1, 0, "loss", 0.5)])


# ----------------------------------------------------------------- concurrency

_PROCESSES = 4
_ROWS_PER_PROCESS = 20_000


def _concurrent_writer(url, index, barrier, results):
    """One training process: its own Store, a run, metrics through a buffer, updates in between."""
    try:
        store = Store(url)
        barrier.wait(60)  # every process starts writing at once
        start = time.perf_counter()
        run_id = store.create_run(name=f"worker-{index}", hparams={"index": index}, seed=index, study="race")
        buf = MetricBuffer(store, run_id, max_rows=500)
        keys = ("train_loss", "lr", "grad_norm", "update_ratio")
        steps = _ROWS_PER_PROCESS // len(keys)
        for step in range(steps):
            for key in keys:
                buf.add(step, step // 1000, key, float(step))
            if step % 1000 == 999:
                # read-then-write transactions between metric batches, as at an epoch end
                store.update_run(run_id, epochs=step // 1000 + 1, summary={f"epoch{step // 1000}": step})
                assert store.run(run_id)["epochs"] == step // 1000 + 1
        buf.flush()
        store.finish_run(run_id, "completed", best_metric=float(index))
        store.close()
        results.put((index, run_id, time.perf_counter() - start, None))
    except BaseException:
        results.put((index, None, None, traceback.format_exc()))


@pytest.mark.slow
def test_many_processes_write_one_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    Store(url).close()  # the file exists, as when a search starts its workers
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(_PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_concurrent_writer, args=(url, i, barrier, results)) for i in range(_PROCESSES)]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    elapsed = time.perf_counter() - start

    errors = [err for (_, _, _, err) in outcomes if err is not None]
    assert errors == [], "\n".join(errors)  # in particular no "database is locked"
    assert all(proc.exitcode == 0 for proc in procs)

    store = Store(url)
    raw = sqlite3.connect(tmp_path / "shared.db")
    assert raw.execute("SELECT count(*) FROM tl_metrics").fetchone()[0] == _PROCESSES * _ROWS_PER_PROCESS
    raw.close()
    runs = store.runs(study="race")
    assert len(runs) == _PROCESSES
    for run in runs:
        assert run["status"] == "completed" and run["epochs"] == 5
        assert run["summary"] == {f"epoch{e}": e * 1000 + 999 for e in range(5)}
        metrics = store.metrics(run["id"])
        assert sum(len(series["step"]) for series in metrics.values()) == _ROWS_PER_PROCESS
        assert metrics["lr"]["step"] == list(range(_ROWS_PER_PROCESS // 4))
    assert store.studies()[0]["status"] == {"completed": _PROCESSES}
    store.close()
    print(
        f"\n{_PROCESSES} processes x {_ROWS_PER_PROCESS} rows: {elapsed:.2f} s in all, "
        f"writing {max(t for (_, _, t, _) in outcomes):.2f} s at most"
    )
