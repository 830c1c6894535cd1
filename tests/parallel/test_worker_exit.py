"""How a process that joined a process group ends: through `ddp.exit_process`, never the interpreter's teardown.

DDP keeps the gloo group and its threads alive after destroy_process_group (torch 2.13); a teardown racing
them aborted a restarted torchrun worker with SIGABRT ("terminate called without an active exception").
Real processes, real gloo groups."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> dict:
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.path.abspath(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# `python -m trainlab` with main() replaced by a command that joins a one-process group and wraps a model in DDP
MAIN = textwrap.dedent("""
    import atexit, runpy, sys
    import trainlab.cli

    def command():
        import torch
        from trainlab.parallel.ddp import cleanup, init, wrap_ddp
        dist = init("cpu")
        wrap_ddp(torch.nn.Linear(3, 2), dist)
        cleanup(dist)
        print("trained", flush=True)
        if sys.argv[1] == "raise":
            raise RuntimeError("the run failed")
        return 3

    trainlab.cli.main = command  # entry() calls it
    atexit.register(lambda: print("teardown ran", flush=True))
    runpy.run_module("trainlab", run_name="__main__")  # trainlab.cli.entry()
""")


@pytest.mark.parametrize("how, code", [("return", 3), ("raise", 1)])
def test_a_worker_that_joined_a_group_skips_the_teardown_with_its_exit_status(how, code):
    proc = subprocess.run([sys.executable, "-c", MAIN, how], env=_env(0, 1, _free_port()), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert "trained" in proc.stdout and "teardown ran" not in proc.stdout, proc.stdout
    if how == "raise":
        assert "RuntimeError: the run failed" in proc.stderr  # the traceback is still printed


def test_a_command_that_joined_no_group_ends_as_usual():
    script = MAIN.replace('dist = init("cpu")', 'dist = init("cpu", env={})')
    proc = subprocess.run([sys.executable, "-c", script, "return"], env=_env(0, 1, _free_port()),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "teardown ran" in proc.stdout, proc.stdout + proc.stderr


# two ranks leave with collectives of a DDP-wrapped model still finishing on the group's threads
IN_FLIGHT = textwrap.dedent("""
    import torch, torch.distributed as tdist
    from trainlab.parallel.ddp import cleanup, exit_process, init, joined_group, wrap_ddp
    dist = init("cpu")
    wrap_ddp(torch.nn.Linear(3, 2), dist)
    for _ in range(6):
        tdist.all_reduce(torch.ones(4_000_000), async_op=True)
    cleanup(dist)
    assert joined_group()
    exit_process(0)
""")


@pytest.mark.slow
def test_ranks_leaving_with_collectives_in_flight_exit_cleanly():
    for _ in range(3):  # with the interpreter's teardown instead, 1 to 3 launches in 6 aborted
        port = _free_port()
        procs = [subprocess.Popen([sys.executable, "-c", IN_FLIGHT], env=_env(rank, 2, port), stderr=subprocess.PIPE,
                                  text=True) for rank in (0, 1)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert [rc for rc, _ in results] == [0, 0], "\n".join(err for _, err in results)
        assert not any("terminate called" in err for _, err in results)
