"""Halt: why a run must stop now, set from outside the loop: SIGTERM, or the store (its memory bound during an
outage, the run taken over by another process).

SIGTERM is what Slurm, Kubernetes, `docker stop` and systemd send before SIGKILL, after a grace period (often
10 to 30 s). `fit()` installs `Halt` as the SIGTERM handler for the duration of the run: the handler only
records the reason; the loop reads it after each update (one attribute read) and stops as Ctrl-C stops a run,
but at a clean point: the last checkpoint written at the exact position (mid-epoch), the best weights
restored, the status "stopped", resumable. Under data parallelism the ranks agree at the next read of the
losses (`steps.DRAIN` updates, the all-reduce that reads them carries the flag), so no rank is left waiting
in a collective. Further SIGTERMs while stopping are ignored: Slurm and torchrun may each send one.

    with Halt() as halt:      # the SIGTERM handler, restored on exit (only from the main thread)
        ...
        if halt.reason: ...   # "terminated (SIGTERM)"
"""

from __future__ import annotations

import signal
import threading

__all__ = ["Halt", "resume_hint"]


def resume_hint(run_id: int | None, run_dir, world_size: int = 1) -> str:
    """"; resume with: trainlab train --resume 7" (with --nproc K under DDP), or "" when nothing can resume."""
    if run_id is None or run_dir is None:
        return ""
    return f"; resume with: trainlab train --resume {run_id}" + (f" --nproc {world_size}" if world_size > 1 else "")


class Halt:
    """The reason to stop now (None: go on). `stop(reason)` sets it once; the SIGTERM handler calls it."""

    def __init__(self):
        self.reason: str | None = None
        self._old = None
        self._installed = False

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def _on_sigterm(self, signum, frame) -> None:
        self.stop("terminated (SIGTERM)")

    def __enter__(self) -> Halt:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._old = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._old if self._old is not None else signal.SIG_DFL)
            self._installed = False
