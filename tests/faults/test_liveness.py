"""Run liveness: a heartbeat (host, pid, time) on every running run; a run whose process is gone shows as
`lost` in `trainlab runs`, the dashboard's API and the doctor; a resume takes a lease: a second resume of a
live run is refused naming the host and pid, a lost run can be resumed, and of two racing resumes exactly
one trains."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3

import pytest
import sqlalchemy as sa

from conftest import TINY_YAML, in_process, one_line_error, run_row, trainlab, wait_for
from trainlab.cli import main
from trainlab.doctor import diagnose_run
from trainlab.store import RunBusy, Store
from trainlab.store.liveness import derived_status, this_node
from trainlab.store.schema import tl_runs
from trainlab.store.values import now


def _set(db, run_id: int, **values) -> None:
    with Store(db)._write() as conn:
        conn.execute(tl_runs.update().where(tl_runs.c.id == run_id).values(**values))


def test_a_run_carries_a_heartbeat_and_shows_lost_when_it_is_old(tmp_path):
    db = tmp_path / "t.db"
    store = Store(db, lost_after_s=60)
    run = store.create_run(name="r", hparams={})
    row = store.run(run)
    assert (row["pid"], row["node"], row["host"]) == (os.getpid(), this_node(), socket.gethostname())
    assert row["heartbeat"] and row["status"] == "running"
    store.log_metrics(run, [(0, 1, "loss", 1.0)], beat=True)
    assert store.run(run)["heartbeat"] > row["heartbeat"], "the rows carry the heartbeat"
    # another machine's run, silent for 2 minutes: lost; for 30 s: running
    _set(db, run, node="elsewhere", pid=1, host="gpu7", heartbeat="2020-01-01T00:00:00.000000+00:00")
    lost = store.run(run)
    assert lost["status"] == "lost" and "no heartbeat since 2020-01-01" in lost["reason"]
    assert "pid 1 on host gpu7" in lost["reason"] and "trainlab train --resume" in lost["reason"]
    assert [r["id"] for r in store.runs(status="lost")] == [run] and store.runs(status="running") == []
    _set(db, run, heartbeat=now())
    assert store.run(run)["status"] == "running"
    # on this machine a dead pid is lost at once, whatever the heartbeat says
    _set(db, run, node=this_node(), pid=2**22 + 12345)
    assert store.run(run)["status"] == "lost"
    assert derived_status("completed", None, None, None, now=now(), lost_after_s=1) == "completed"


def test_a_claim_is_refused_while_the_live_holder_keeps_the_write_lock(tmp_path):
    """A holder frozen mid-write keeps SQLite's write lock: the refusal must not wait for it (and fail on
    "database is locked" after the busy timeout) but come from reading the run."""
    db = tmp_path / "t.db"
    store = Store(db, lost_after_s=60)
    run = store.create_run(name="r", hparams={})
    _set(db, run, node="elsewhere", pid=4242, host="gpu7", heartbeat=now())
    frozen = sqlite3.connect(db, isolation_level=None)
    frozen.execute("BEGIN IMMEDIATE")
    frozen.execute("UPDATE tl_runs SET updated = updated")
    try:
        with pytest.raises(RunBusy, match=r"^resume: run 1 is being trained by pid 4242 on host gpu7"):
            Store(db, lost_after_s=60).claim_run(run)
    finally:
        frozen.execute("ROLLBACK")
        frozen.close()


def test_study_counts_show_lost_runs(tmp_path):
    store = Store(tmp_path / "t.db")
    a = store.create_run(name="a", hparams={}, study="s")
    store.create_run(name="b", hparams={}, study="s")
    _set(tmp_path / "t.db", a, node=this_node(), pid=2**22 + 12345)
    (study,) = store.studies()
    assert study["status"] == {"running": 1, "lost": 1} and study["runs"] == 2


def test_the_lease_refuses_a_live_holder_and_takes_a_lost_run(tmp_path):
    db = tmp_path / "t.db"
    store = Store(db, lost_after_s=60)
    run = store.create_run(name="r", hparams={})
    _set(db, run, node="elsewhere", pid=4242, host="gpu7", heartbeat=now())
    with pytest.raises(RunBusy, match=r"^resume: run 1 is being trained by pid 4242 on host gpu7, heartbeat \d+ s ago"):
        store.claim_run(run)
    assert store.run(run)["pid"] == 4242, "a refused claim changes nothing"
    _set(db, run, heartbeat="2020-01-01T00:00:00.000000+00:00")
    store.claim_run(run)
    row = store.run(run)
    assert (row["status"], row["pid"], row["node"]) == ("running", os.getpid(), this_node())
    assert store.beat(run) is True
    _set(db, run, pid=4242)  # another process took it over: our heartbeat says so
    assert store.beat(run) is False
    store.finish_run(run, "completed")
    with pytest.raises(ValueError, match=r"^resume: run 1 is completed: nothing to resume$"):
        store.claim_run(run, refuse=("completed",))


def test_an_older_store_gets_the_liveness_columns_and_its_dead_runs_show_lost(tmp_path):
    db = tmp_path / "old.db"
    Store(db).create_run(name="old", hparams={})
    con = sqlite3.connect(db)
    for column in ("pid", "node", "heartbeat"):
        con.execute(f"ALTER TABLE tl_runs DROP COLUMN {column}")
    con.execute("UPDATE tl_runs SET updated = '2021-05-01T00:00:00.000000+00:00'")
    con.commit()
    con.close()
    store = Store(db)
    run = store.run(1)
    assert run["heartbeat"] == "2021-05-01T00:00:00.000000+00:00", "filled from its last write"
    assert run["status"] == "lost"
    cols = {c["name"] for c in sa.inspect(sa.create_engine(f"sqlite:///{db}")).get_columns("tl_runs")}
    assert {"pid", "node", "heartbeat"} <= cols


@pytest.mark.slow
def test_a_killed_run_is_lost_everywhere_and_can_be_resumed(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_YAML + "epochs: 8\n")
    db, runs = tmp_path / "t.db", tmp_path / "runs"
    proc = trainlab("train", str(cfg), "--db", str(db), "--runs-dir", str(runs), "--quiet")
    wait_for(lambda: (run_row(db) or {}).get("epochs", 0) >= 1 and (runs / "run-1" / "last.pt").is_file())
    proc.send_signal(signal.SIGSTOP)
    assert run_row(db)["status"] == "running" and run_row(db)["pid"] == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    assert main(["runs", "--db", str(db), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "lost"
    from trainlab.dashboard import api
    from trainlab.dashboard.cache import SeriesCache
    from trainlab.dashboard.findings import Doctor

    store = Store(db)
    doctor = Doctor(store)
    page = json.loads(api.study(store, SeriesCache(store), doctor, "none")[0])
    assert page["status_counts"] == {"lost": 1} and page["runs"][0]["status"] == "lost"
    assert any(b["name"] == "lost" for b in page["runs"][0]["badges"])
    assert diagnose_run(store, 1).status == "lost"

    resumed = trainlab("train", "--resume", "1", "--db", str(db), "--runs-dir", str(runs), "--quiet")
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    assert run_row(db)["status"] == "completed"
    assert Store(db).metrics(1, ["train/loss"])["train/loss"]["step"] == list(range(8 * 113))


def _stopped_run(tmp_path, epochs: int):
    """A run stopped after its first epoch (a Deadline-like stop through SIGTERM): resumable."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_YAML + f"epochs: {epochs}\n")
    db, runs = tmp_path / "t.db", tmp_path / "runs"
    proc = trainlab("train", str(cfg), "--db", str(db), "--runs-dir", str(runs), "--quiet")
    wait_for(lambda: (run_row(db) or {}).get("epochs", 0) >= 1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert run_row(db)["status"] == "stopped"
    return db, runs


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` now (the SigCgt mask of /proc/PID/status)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)


@pytest.mark.slow
def test_a_second_resume_of_a_live_run_is_refused_naming_host_and_pid(tmp_path, capsys):
    db, runs = _stopped_run(tmp_path, epochs=12)
    first = trainlab("train", "--resume", "1", "--db", str(db), "--runs-dir", str(runs), "--quiet")
    # its lease taken and its SIGTERM handler in place (fit() claims the run a moment before it installs the
    # handler: a SIGTERM in between ends the process by default and leaves the run 'lost', not 'stopped')
    wait_for(lambda: (run_row(db) or {}).get("pid") == first.pid and run_row(db)["status"] == "running"
             and _catches(first.pid, signal.SIGTERM))
    first.send_signal(signal.SIGSTOP)  # frozen, yet alive: its lease holds
    try:  # the second resume in this process: its refusal is one line and exit 2 (two real resumes race below)
        code, _, err = in_process(capsys, "train", "--resume", "1", "--db", str(db), "--runs-dir", str(runs), "--quiet")
        assert code == 2, err
        line = one_line_error(err)
        assert f"run 1 is being trained by pid {first.pid} on host {socket.gethostname()}" in line
    finally:
        first.send_signal(signal.SIGCONT)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert run_row(db)["status"] == "stopped"


@pytest.mark.slow
def test_two_racing_resumes_exactly_one_trains(tmp_path):
    db, runs = _stopped_run(tmp_path, epochs=6)
    procs = [trainlab("train", "--resume", "1", "--db", str(db), "--runs-dir", str(runs), "--quiet") for _ in range(2)]
    results = [(p.pid, p.returncode, err) for p in procs for _, err in [p.communicate(timeout=300)]]
    codes = sorted(code for _, code, _ in results)
    assert codes == [0, 2], results
    (loser,) = [r for r in results if r[1] == 2]
    line = one_line_error(loser[2])
    assert "is being trained by pid" in line or "is completed: nothing to resume" in line, line
    run = run_row(db)
    assert run["status"] == "completed" and run["epochs"] == 6
    loss = Store(db).metrics(1, ["train/loss", "lr"])
    assert loss["train/loss"]["step"] == list(range(6 * 113)) and loss["lr"]["step"] == list(range(6 * 113))
