"""Test-wide settings and fixtures.

One torch thread per process (tests train tiny models; extra threads only contend on a 2-core machine),
inherited by subprocesses through OMP_NUM_THREADS. Fixtures: `pg_url` (a fresh database on a real
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
