"""Test-wide settings and fixtures.

One torch thread per process (tests train tiny models; extra threads only contend on a 2-core machine),
inherited by subprocesses through OMP_NUM_THREADS. Fixtures: `pg_url` (a fresh database on a real
PostgreSQL server, tests/pg.py) and `tiny_task` (mnist1d with the tiny MLP of helpers.TINY). Tests that train for long are marked `slow`: `pytest -m "not slow"` is
the quick loop; CI runs everything."""

import os

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
