"""One rank's share of a training launch: `fit()` alone, or as one rank of a torchrun launch.

Under torchrun every worker joins the process group, resumes the launch's run after a torchrun restart
(found by its launch id), and leaves printing to rank 0.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from trainlab.config import DEFAULT_RUNS_DIR
from trainlab.parallel.ddp import cleanup, init, restarted_run
from trainlab.train.loop import fit

__all__ = ["fit_in_launch", "AlreadyEnded"]


@dataclass(frozen=True)
class AlreadyEnded:
    """A torchrun restart found the launch's run already ended: nothing to train."""

    run_id: int
    status: str


def fit_in_launch(task, hp, store, *, resume: int | None = None, quiet: bool = False,
                  runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, **fit_kwargs):
    """fit() as this process runs it: alone, or as one rank of a torchrun launch.

    Under torchrun: joins the process group (gloo on CPU, NCCL on CUDA); after a torchrun restart
    (`--max-restarts`) resumes the run this launch was training (found by its launch id); leaves the
    output to rank 0. Returns the FitResult (every rank gets one), or AlreadyEnded when a restart finds
    the launch's run finished.
    """
    dist = init(hp.device)
    try:
        if dist.ddp and resume is None:
            found = restarted_run(dist, store, runs_dir)
            if found is not None and found["status"] not in ("running", "lost", "failed"):
                if dist.main:
                    print(f"run {found['id']} already ended: {found['status']}", file=sys.stderr)
                return AlreadyEnded(found["id"], found["status"])
            if found is not None:
                resume = found["id"]
                fit_kwargs = {k: v for k, v in fit_kwargs.items() if k not in ("study", "name")}
        result = fit(task, hp, store=store, resume=resume, quiet=quiet, runs_dir=runs_dir, dist=dist,
                     **fit_kwargs)
    finally:
        cleanup(dist)
    return result
