"""Where a run's time before its first step goes: the "startup" entry of the run's summary.

`fit()` starts a `Startup` when it begins; `_build` notes how long building the optimizer took (torch imports
`torch._dynamo` with the first optimizer it builds: seconds, paid once per process); the loop notes when its
epochs begin; `steps.Steps` notes the end of the first update (after a device synchronization on CUDA, once);
at the end of the epoch holding it, the mean of the later steps of that epoch is taken and one line is
printed on stderr (unless quiet). Nothing is measured per step beyond one flag test.

The entries (seconds): setup_s (fit() began -> the epochs begin: model, optimizer, data on the device, the
run row), optimizer_s (inside setup_s), torch_dynamo_import_s (inside optimizer_s; 0 when torch._dynamo was
imported already), first_step_s (the first update itself: lazy initialization, allocations, compilation),
later_step_s (the mean of the first epoch's other updates, for comparison).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

import torch

__all__ = ["Startup", "TORCH_IMPORT_S"]

# Set by `trainlab train` when it imported torch itself (seconds): the next first-step line says it, once.
TORCH_IMPORT_S: float | None = None


class Startup:
    def __init__(self, started: float | None = None):
        self.started = time.perf_counter() if started is None else started
        self.optimizer_s = 0.0
        self.dynamo_s = 0.0
        self.loop_started: float | None = None
        self.first_end: float | None = None
        self.first_at = 0
        self.times: dict[str, float] = {}

    @contextmanager
    def building_optimizer(self):
        """Time the block that builds the optimizer (and whether torch._dynamo was imported by it)."""
        dynamo_before, t0 = "torch._dynamo" in sys.modules, time.perf_counter()
        yield
        self.optimizer_s = time.perf_counter() - t0
        self.dynamo_s = self.optimizer_s if not dynamo_before and "torch._dynamo" in sys.modules else 0.0

    def loop_starts(self) -> None:
        self.loop_started = time.perf_counter()

    @property
    def waiting(self) -> bool:
        """True until the first update of this process ended."""
        return self.first_end is None

    def first_step(self, step: int, device: torch.device) -> None:
        """The first update ended (it was update `step - 1`)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.first_end, self.first_at = time.perf_counter(), step
        loop_started = self.loop_started if self.loop_started is not None else self.started
        self.times = {"setup_s": loop_started - self.started, "optimizer_s": self.optimizer_s,
                      "torch_dynamo_import_s": self.dynamo_s, "first_step_s": self.first_end - loop_started}

    def epoch_updates_done(self, step: int, quiet: bool = False) -> None:
        """An epoch's updates ended at update `step`: the later steps' mean, once, and the printed line."""
        if self.first_end is None or "later_step_s" in self.times or step <= self.first_at:
            return
        t = self.times
        t["later_step_s"] = (time.perf_counter() - self.first_end) / (step - self.first_at)
        if not quiet:
            global TORCH_IMPORT_S
            torch_line = f"torch {torch.__version__} imported in {TORCH_IMPORT_S:.1f} s; " \
                if TORCH_IMPORT_S is not None else ""
            TORCH_IMPORT_S = None
            dynamo = (f", of which {self.dynamo_s:.2f} s building the optimizer (torch imports torch._dynamo "
                      "with the first one)") if self.dynamo_s > 0.05 else ""
            print(f"  {torch_line}first step {t['setup_s'] + t['first_step_s']:.2f} s after fit() began: setup {t['setup_s']:.2f} s"
                  f"{dynamo}; the step itself {t['first_step_s'] * 1e3:.0f} ms (later steps "
                  f"{t['later_step_s'] * 1e3:.1f} ms)", file=sys.stderr)

    def first_excess(self) -> float:
        """Seconds the first update took beyond a later one (lazy initialization, allocations): 0 until known."""
        t = self.times
        return max(0.0, t["first_step_s"] - t["later_step_s"]) if "later_step_s" in t else 0.0

    def summary(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.times.items()}
