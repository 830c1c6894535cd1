"""Threads: a run at several torch threads drops to one when other jobs slow its updates (`ThreadGuard`),
and `idle_cores` counts the cores nobody uses. The slowdown is made by a callback that sleeps (as a lost
core would stretch every update), on a real training; the busy cores by real processes."""

import subprocess
import sys
import time

import pytest
import torch

from trainlab.search.workers import cpu_cores, idle_cores
from trainlab.store import Store
from trainlab.train import fit
from trainlab.train.steps import DRAIN
from trainlab.train.threads import ThreadGuard
import helpers


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _stretch(guard, step, updates, seconds_each):
    time.sleep(updates * seconds_each)
    guard.check(step + updates)
    return step + updates


def test_the_guard_drops_to_one_thread_after_two_slow_stretches_not_one(two_threads):
    guard = ThreadGuard.start(0, distributed=False)
    step = 0
    for _ in range(3):
        step = _stretch(guard, step, 10, 0.002)
    step = _stretch(guard, step, 10, 0.02)        # one slow stretch (a checkpoint's save): kept
    assert torch.get_num_threads() == 2 and not guard.summary
    step = _stretch(guard, step, 10, 0.002)
    step = _stretch(guard, step, 10, 0.02)
    step = _stretch(guard, step, 10, 0.02)        # two in a row: a lost core
    assert torch.get_num_threads() == 1
    assert guard.summary["from"] == 2 and guard.summary["to"] == 1 and guard.summary["at_update"] == step
    assert guard.summary["slowdown"] > 2 and "threads: 2 -> 1" in guard.said()
    guard.restore()
    assert torch.get_num_threads() == 2


def test_no_guard_at_one_thread_or_under_ddp(two_threads):
    assert ThreadGuard.start(0, distributed=True) is None
    torch.set_num_threads(1)
    assert ThreadGuard.start(0, distributed=False) is None


def test_a_run_slowed_down_drops_to_one_thread_keeps_it_in_its_summary_and_restores_it(tiny_task, tmp_path,
                                                                                        two_threads):
    store = Store(tmp_path / "t.db")
    slow_from = 4 * DRAIN
    r = fit(tiny_task, helpers.tiny(epochs=1, steps=8 * DRAIN, batch_size=8), store=store, quiet=True,
            runs_dir=tmp_path / "runs", callbacks=[helpers.Slowdown(slow_from, 0.01)])
    assert r.status == "completed" and r.steps == 8 * DRAIN
    threads = store.run(r.run_id)["summary"]["threads"]
    assert threads["from"] == 2 and threads["to"] == 1 and threads["at_update"] > slow_from, threads
    assert torch.get_num_threads() == 2   # the process's count, restored when the run ended


def test_idle_cores_counts_the_cores_other_processes_leave():
    assert 1 <= idle_cores() <= cpu_cores()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpu_cores())]
    try:
        time.sleep(0.5)
        assert idle_cores() == 1   # every core busy: one thread, never none
    finally:
        for h in hogs:
            h.kill()
            h.wait()
