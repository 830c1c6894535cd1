"""A search stopped by a signal to its parent alone (`kill -INT PID`, or SIGTERM from a scheduler), with real
worker processes: the workers stop, their trials are queued again and their runs are `stopped`, exit 130;
and no more worker processes start than there are trials left. Processes are frozen (SIGSTOP) while their
children are counted, so nothing moves on between looking and asserting."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from trainlab.search.workers import workers_needed

SRC = str(Path(__file__).parents[2] / "src")


def start_search(tmp_path: Path, workers: int, trials: int, grace_s: float | None = None) -> subprocess.Popen:
    (tmp_path / "space.yaml").write_text("lr: loguniform(1e-3, 1e-1)\n")
    patch = f"import trainlab.search.workers as w; w.STOP_GRACE_S = {grace_s}; " if grace_s is not None else ""
    code = (f"import sys; {patch}from trainlab.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = ["search", "--space", "space.yaml", "--set", "model=mlp", "--set", "width=16", "--epochs", "500",
            "--trials", str(trials), "--workers", str(workers), "--db", "s.db", "--quiet"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def query(db: Path, sql: str) -> list:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def wait_running(proc: subprocess.Popen, db: Path, n: int, timeout_s: float = 240, stepping: bool = False) -> None:
    """Until `n` runs are training (the workers started and claimed their trials); `stepping`: and each has
    stored losses, so it is past its setup (torch's first optimizer can take seconds) and acts on a signal at
    its next update."""
    sql = ("SELECT count(DISTINCT r.id) FROM tl_runs r JOIN tl_metrics m ON m.run_id = r.id "
           "WHERE r.status = 'running' AND m.key = 'train/loss'") if stepping else \
        "SELECT count(*) FROM tl_runs WHERE status = 'running'"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if query(db, sql) == [(n,)]:
            return
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"{n} runs never ran: {proc.communicate()}")


def worker_pids(parent: int) -> list[int]:
    """The parent's spawned worker processes (not multiprocessing's resource tracker)."""
    children = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def frozen_workers(proc: subprocess.Popen) -> list[int]:
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        return worker_pids(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def freeze_outside_a_write(db: Path, pid: int) -> None:
    """SIGSTOP `pid` while this test holds the store's write lock, so the frozen process cannot be holding it
    (frozen mid-write, it would block every other process's last write until the parent kills it too)."""
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        os.kill(pid, signal.SIGSTOP)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def trials_by_state(db: Path) -> dict[str, int]:
    return dict(query(db, "SELECT state, count(*) FROM trials GROUP BY state"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_parent_alone_stops_workers_and_requeues(tmp_path, sig):
    db = tmp_path / "s.db"
    proc = start_search(tmp_path, workers=6, trials=2)  # capped: 2 trials, so 2 processes, not 6
    wait_running(proc, db, 2, stepping=True)  # each past its setup, so each stops its own trial at an update
    pids = frozen_workers(proc)
    assert len(pids) == 2, pids
    os.kill(proc.pid, sig)  # the parent alone, as `kill -INT PID` does (a terminal's Ctrl-C reaches all)
    out, err = proc.communicate(timeout=120)  # a guard against a hang, not a speed claim
    assert proc.returncode == 130, err
    assert "search interrupted; the running trial is queued again" in err and "Traceback" not in err
    assert all(gone(p) for p in pids)
    runs = query(db, "SELECT name, status, reason FROM tl_runs ORDER BY name")
    assert [(name, status) for name, status, _ in runs] == [("trial-0", "stopped"), ("trial-1", "stopped")]
    # each worker stopped its own trial (the parent did not have to kill it)
    assert all(reason.startswith("search interrupted at step ") for _, _, reason in runs), runs
    assert trials_by_state(db) == {"FAIL": 2, "WAITING": 2}
    stopped = query(db, "SELECT t.number, p.param_value FROM trials t JOIN trial_params p USING (trial_id) "
                        "WHERE t.state = 'FAIL' ORDER BY t.number")
    queued = query(db, "SELECT p.param_value FROM trials t JOIN trial_params p USING (trial_id) "
                       "WHERE t.state = 'WAITING'")
    assert sorted(v for (v,) in queued) == sorted(v for _, v in stopped)  # the same points run again on resume


@pytest.mark.slow
def test_a_frozen_worker_is_killed_after_the_grace_and_its_trial_requeued(tmp_path):
    db = tmp_path / "s.db"
    proc = start_search(tmp_path, workers=2, trials=4, grace_s=3)
    wait_running(proc, db, 2, stepping=True)  # the worker left running must be able to stop within the grace
    pids = frozen_workers(proc)
    assert len(pids) == 2
    freeze_outside_a_write(db, pids[0])  # stuck: it cannot act on the parent's SIGTERM
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert all(gone(p) for p in pids)
    reasons = sorted(r for (r,) in query(db, "SELECT reason FROM tl_runs WHERE status = 'stopped'"))
    assert len(reasons) == 2 and query(db, "SELECT count(*) FROM tl_runs WHERE status != 'stopped'") == [(0,)]
    assert any(f"worker {os.uname().nodename}:{pids[0]} killed after 3 s" in r for r in reasons), reasons
    assert any(r.startswith("search interrupted at step ") for r in reasons), reasons
    assert trials_by_state(db) == {"FAIL": 2, "WAITING": 2}


def test_workers_are_capped_at_the_trials_left_also_on_resume():
    study = optuna.create_study()
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.COMPLETE):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": dist}, value=1.0,
                                                  state=state))
    trials = study.get_trials(deepcopy=False)
    assert workers_needed(trials, budget=5, workers=6) == 3     # 3 of 5 left
    assert workers_needed(trials, budget=2, workers=6) == 1     # none left: one, for a stale trial's retry
    assert workers_needed(trials, budget=10, workers=4) == 4
    study.enqueue_trial({"x": 0.25})                             # an interrupted trial, queued again
    trials = study.get_trials(deepcopy=False)
    assert workers_needed(trials, budget=3, workers=6) == 1     # the queued trial takes the last place
    assert workers_needed(trials, budget=2, workers=6) == 1     # over the budget, yet queued: still run


@pytest.mark.slow
def test_sigterm_to_a_single_process_search_stops_and_requeues(tmp_path):
    db = tmp_path / "s.db"
    proc = start_search(tmp_path, workers=3, trials=1)  # one trial: trained in this process, no workers
    wait_running(proc, db, 1)
    assert frozen_workers(proc) == []
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert query(db, "SELECT name, status FROM tl_runs") == [("trial-0", "stopped")]
    assert trials_by_state(db) == {"FAIL": 1, "WAITING": 1}
