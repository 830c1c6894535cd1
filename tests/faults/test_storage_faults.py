"""Storage faults. Every command given an unusable database (random bytes, a corrupted SQLite file), an
unreachable server or a full disk says so in one line, exit 2 (bad input) or 1 (fault), never a traceback.
A database outage during training does not stop it: the rows wait in memory and land when the database is
back (a real PostgreSQL stopped and started mid-run; a SQLite file on a disk that fills up and frees);
past the memory bound the run stops cleanly with its checkpoint."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from conftest import in_process, one_line_error, trainlab
from trainlab.checkpoint import load_checkpoint
from trainlab.config import Config
from trainlab.store import Store
from trainlab.tasks import load_task
from trainlab.train import fit
import trainlab.train.record as record

TINY = dict(model="mlp", width=32, batch_size=32, monitor_every=0, seed=3)
COMMANDS = [["runs"], ["runs", "show", "1"], ["plot", "1", "-o", "{tmp}/x.png"], ["diagnose", "1"],
            ["train", "--set", "epochs=1"]]


def _corrupt(tmp_path):
    """A real store whose pages are then overwritten in the middle: 'database disk image is malformed'."""
    db = tmp_path / "bad.db"
    store = Store(db)
    run = store.create_run(name="r", hparams={})
    store.log_metrics(run, [(i, 1, "train/loss", 1.0) for i in range(5000)])
    store.close()
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(db.read_bytes())
    data[4096:len(data) - 4096] = b"\x5a" * (len(data) - 8192)
    db.write_bytes(bytes(data))
    return db


def _command(command: list[str], db: str, tmp_path, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `trainlab COMMAND --db DB`: the light commands as real processes; `train` in this
    process (its error line is the same; a fresh interpreter would spend seconds importing torch first)."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    if command[0] == "train":
        code, _, err = in_process(capsys, *args, "--db", db, "--runs-dir", str(tmp_path / "runs"))
        return code, err
    proc = trainlab(*args, "--db", db, cwd=tmp_path)
    _, err = proc.communicate(timeout=240)
    return proc.returncode, err


@pytest.mark.parametrize("what", ["random-bytes", "corrupted"])
def test_an_unusable_database_file_is_one_line_and_exit_2_from_every_command(tmp_path, what, capsys):
    if what == "random-bytes":
        db = tmp_path / "x.db"
        db.write_bytes(bytes(range(256)) * 64)
    else:
        db = _corrupt(tmp_path)
    before = db.read_bytes()
    for command in COMMANDS:
        code, err = _command(command, str(db), tmp_path, capsys)
        assert code == 2, (command, err)
        line = one_line_error(err)
        assert str(db) in line and ("not a database" in line or "malformed" in line), (command, line)
    assert db.read_bytes() == before, "nothing written to the file"


def test_an_unreachable_server_is_one_line_and_exit_1(tmp_path, capsys):
    url = "postgresql+psycopg2://user:secret@127.0.0.1:1/nothing"
    for command in COMMANDS:
        code, err = _command(command, url, tmp_path, capsys)
        assert code == 1, (command, err)
        line = one_line_error(err)
        assert "Connection refused" in line and "secret" not in line, line


def test_a_full_disk_under_the_database_is_one_line_and_exit_1(tmp_path, small_fs, capsys):
    small_fs.fill()
    db = small_fs.path / "t.db"
    code, _, err = in_process(capsys, "train", "--set", "epochs=1", "--db", str(db), "--runs-dir",
                              str(tmp_path / "runs"), "--quiet")
    line = one_line_error(err)
    assert code == 1 and ("disk is full" in line or "No space left" in line), line


class _Outage:
    """Takes the database away at update `down` and brings it back at update `up` (None: at the fit's end,
    before the run is recorded), with `stop()` / `start()`."""

    def __init__(self, down: int, up: int | None, stop, start):
        self.down, self.up, self.stop, self.start = down, up, stop, start
        self.is_down = False

    def on_step_end(self, state):
        if state.step == self.down:
            self.stop()
            self.is_down = True
        elif state.step == self.up and self.is_down:
            self.start()
            self.is_down = False

    def on_epoch_end(self, state):
        return None

    def on_fit_end(self, state):
        if self.is_down:
            self.start()
            self.is_down = False


def _check_complete(store: Store, run_id: int, steps: int, runs) -> None:
    loss = store.metrics(run_id, ["train/loss", "lr"])
    assert loss["train/loss"]["step"] == list(range(steps)), "every step's row landed, once"
    assert loss["lr"]["step"] == list(range(steps))
    load_checkpoint(runs / f"run-{run_id}" / "last.pt")
    load_checkpoint(runs / f"run-{run_id}" / "best.pt")


@pytest.mark.slow
def test_postgresql_stopped_and_started_mid_run(tmp_path, pg_server):
    url = pg_server.url()
    store = Store(url)
    task = load_task(Config(**TINY))
    # down during epoch 1 (a checkpoint written during the outage) and back in epoch 3
    outage = _Outage(60, 300, pg_server.pause, pg_server.resume)
    result = fit(task, Config(**TINY, epochs=4), store=store, runs_dir=tmp_path / "runs", quiet=True,
                 callbacks=[outage])
    assert result.status == "completed"
    run = Store(url).run(result.run_id)
    assert run["status"] == "completed" and run["epochs"] == 4 and run["reason"] is None
    _check_complete(Store(url), result.run_id, 4 * 113, tmp_path / "runs")
    assert Store(url).metrics(result.run_id, ["val/acc"])["val/acc"]["epoch"] == [1, 2, 3, 4]


@pytest.mark.slow
def test_past_the_memory_bound_the_run_stops_with_its_checkpoint(tmp_path, pg_server, monkeypatch):
    monkeypatch.setattr(record, "MAX_BUFFERED_ROWS", 300)  # 150 updates' rows
    url = pg_server.url()
    task = load_task(Config(**TINY))
    outage = _Outage(60, None, pg_server.pause, pg_server.resume)  # back only as the run ends
    result = fit(task, Config(**TINY, epochs=4), store=Store(url), runs_dir=tmp_path / "runs", quiet=True,
                 callbacks=[outage])
    assert result.status == "stopped" and result.steps < 4 * 113
    run = Store(url).run(result.run_id)
    assert run["status"] == "stopped" and run["reason"].startswith("store unreachable for ")
    assert "metric rows held in memory, the most a run keeps" in run["reason"]
    assert run["reason"].endswith(f"at step {result.steps}; resume with: trainlab train --resume {result.run_id}")
    last = load_checkpoint(tmp_path / "runs" / f"run-{result.run_id}" / "last.pt")
    assert last["step"] == result.steps
    _check_complete(Store(url), result.run_id, result.steps, tmp_path / "runs")

    monkeypatch.setattr(record, "MAX_BUFFERED_ROWS", 500_000)
    again = fit(task, Config(**TINY, epochs=4), store=Store(url), runs_dir=tmp_path / "runs", quiet=True,
                resume=result.run_id)
    assert again.status == "completed"
    _check_complete(Store(url), result.run_id, 4 * 113, tmp_path / "runs")


@pytest.mark.slow
def test_sqlite_on_a_disk_that_fills_up_and_frees_mid_run(tmp_path, small_fs):
    db = small_fs.path / "t.db"
    store = Store(db)
    task = load_task(Config(**TINY))
    outage = _Outage(60, 300, small_fs.fill, small_fs.free)
    result = fit(task, Config(**TINY, epochs=4), store=store, runs_dir=tmp_path / "runs", quiet=True,
                 callbacks=[outage])
    assert result.status == "completed"
    assert Store(db).run(result.run_id)["status"] == "completed"
    _check_complete(Store(db), result.run_id, 4 * 113, tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs")
