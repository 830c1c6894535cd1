"""Test-wide settings and fixtures.

One torch thread per process (tests train tiny models; extra threads only contend on a 2-core machine),
inherited by subprocesses through OMP_NUM_THREADS. Temporary folders on /dev/shm where it is a tmpfs with room
(below). Fixtures: `pg_url` (a fresh database on a real
PostgreSQL server, tests/pg.py), `tiny_task` (mnist1d with the tiny MLP of helpers.TINY) and `regression_recipe`
(one real `trainlab recipe` on the regression example, shared by the files that read it). Tests that train for long
are marked `slow`: `pytest -m "not slow"` is the quick loop; CI runs everything."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def _ram_temp_root(path: str = "/dev/shm", least_free: int = 2 << 30) -> str | None:
    """`path` when it is a tmpfs with `least_free` bytes free, else None (a container's default /dev/shm is 64 MiB)."""
    try:
        with open("/proc/mounts") as f:
            tmpfs = any(line.split()[1:3] == [path, "tmpfs"] for line in f)
        st = os.statvfs(path)
    except OSError:
        return None
    return path if tmpfs and st.f_bavail * st.f_frsize >= least_free and os.access(path, os.W_OK) else None


# tmp_path and friends on a RAM file system where there is one: what the tests write is thrown away, so waiting
# for it to reach the disk buys nothing (the session's PostgreSQL runs with fsync=off for the same reason).
# SQLite's checkpoints, MLflow's migrations of its store (seconds per test on a disk) and every checkpoint file then
# cost no fsync (3.4 ms each on the disk here). Measured, alternating: `pytest -m "not slow"` 121-138 s with the
# temporary folders on the disk, 109-110 s on /dev/shm. The same files, databases and processes; only where they live.
# pytest reads PYTEST_DEBUG_TEMPROOT when a test first asks for a temporary folder; --basetemp still wins.
if "PYTEST_DEBUG_TEMPROOT" not in os.environ and (_ram := _ram_temp_root()):
    os.environ["PYTEST_DEBUG_TEMPROOT"] = _ram

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402

from helpers import TINY  # noqa: E402
from pg import pg_server, pg_url  # noqa: E402,F401  (fixtures: a fresh PostgreSQL database; a server of one's own)


@pytest.fixture(scope="session")
def tiny_task():
    """The mnist1d task with the tiny MLP (helpers.TINY), loaded once per session."""
    from trainlab import Config, load_task

    return load_task(Config(**TINY))


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SINE = f"{EXAMPLES / 'regression.py'}:build"


@pytest.fixture(scope="session")
def regression_recipe(tmp_path_factory):
    """`trainlab recipe --set task=examples/regression.py:build --budget 0.5 --json` as a real process, once per
    session (it fills its 30 s budget): tests/test_own_job.py runs every example through the recipe and
    tests/test_task_metrics_everywhere.py reads what this one chose, stored and drew. Read-only afterwards:
    {"cwd": its folder (trainlab.db, recipe-report/), "result": the JSON, "stdout", "stderr", "budget_min",
    "wall": its seconds from the outside, start-up included, "load": the higher load average of its start and end}."""
    cwd = tmp_path_factory.mktemp("regression-recipe")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load, t0 = os.getloadavg()[0], time.time()
    r = subprocess.run([sys.executable, "-m", "trainlab", "recipe", "--set", f"task={SINE}", "--budget", "0.5",
                        "--json"], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    wall = time.time() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    return {"cwd": cwd, "result": json.loads(r.stdout), "stdout": r.stdout, "stderr": r.stderr, "budget_min": 0.5,
            "wall": wall, "load": max(load, os.getloadavg()[0])}
