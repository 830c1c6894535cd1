"""Run liveness: who holds a running run (host, pid), when it last said so (its heartbeat), and the derived
status "lost" of a running run whose holder is gone.

A run's row carries `host`, `pid`, `node` and `heartbeat`: the process training it writes its heartbeat with
every batch of metric rows and at least every `HEARTBEAT_S` seconds (`trainlab.train.record`). A run stored
as "running" is *lost* when

- its heartbeat is older than `lost_after_s` (default `LOST_AFTER_S`): the process died (SIGKILL, a lost
  machine, the database unreachable until the process gave up), or froze; or
- its holder ran on this very machine (same `node`: host name, boot and pid namespace) and its pid is gone:
  known at once, without waiting for the heartbeat to age.

"lost" is never stored: the row stays "running", and a resume (`Store.claim_run`) takes the run over. A
resume of a run that is running and not lost is refused with `RunBusy`, naming the host and pid holding it.

    derived_status("running", heartbeat, node, pid, now=now(), lost_after_s=300)  # "running" or "lost"
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from functools import lru_cache

__all__ = ["HEARTBEAT_S", "LOST_AFTER_S", "RunBusy", "this_node", "pid_alive", "derived_status", "age_s"]

HEARTBEAT_S = 30.0     # a training process writes its heartbeat at least this often
LOST_AFTER_S = 300.0   # a running run silent for longer is lost (10 heartbeats: a slow validation is not death)


class RunBusy(ValueError):
    """A resume of a run that another live process is training (bad input: exit 2)."""

    def __init__(self, run_id: int, host: str | None, pid: int | None, age: float | None):
        seen = f", heartbeat {age:.0f} s ago" if age is not None else ""
        super().__init__(f"resume: run {run_id} is being trained by pid {pid} on host {host}{seen}; stop that "
                         f"process first (a run whose process is gone shows as lost and can be resumed)")
        self.run_id, self.host, self.pid = run_id, host, pid

    def __reduce__(self):
        return (_rebuild_busy, (self.args[0], self.run_id, self.host, self.pid))


def _rebuild_busy(message: str, run_id: int, host: str | None, pid: int | None) -> RunBusy:
    err = RunBusy.__new__(RunBusy)
    ValueError.__init__(err, message)
    err.run_id, err.host, err.pid = run_id, host, pid
    return err


@lru_cache(maxsize=1)
def _boot_and_namespace() -> str:
    parts = []
    for path, read in (("/proc/sys/kernel/random/boot_id", lambda p: open(p).read().strip()[:8]),
                       ("/proc/self/ns/pid", os.readlink)):
        try:
            parts.append(read(path))
        except OSError:
            parts.append("?")
    return "/".join(parts)


def this_node() -> str:
    """This machine and pid namespace, as stored in a run's `node`: two processes with the same node can
    check each other's pid (host name alone is not enough: containers on one host may share it)."""
    return f"{socket.gethostname()}/{_boot_and_namespace()}"[:255]


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def age_s(stamp: str | None, now: str) -> float | None:
    """Seconds from ISO time `stamp` to `now` (None without a stamp)."""
    if not stamp:
        return None
    try:
        return (datetime.fromisoformat(now) - datetime.fromisoformat(stamp)).total_seconds()
    except ValueError:
        return None


def derived_status(status: str, heartbeat: str | None, node: str | None, pid: int | None, *, now: str,
                   lost_after_s: float, here: str | None = None) -> str:
    """The status to show: `status`, except "lost" for a running run whose heartbeat is older than
    `lost_after_s` seconds, or whose process ran on this node (`here`, default `this_node()`) and is gone."""
    if status != "running":
        return status
    if pid is not None and node is not None and node == (here or this_node()) and not pid_alive(pid):
        return "lost"
    age = age_s(heartbeat, now)
    return "lost" if age is not None and age > lost_after_s else status
