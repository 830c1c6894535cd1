"""trainlab recipe: the seven steps for choosing hyperparameters, within a time budget, with a report."""

from __future__ import annotations

import math
import os
from pathlib import Path

from trainlab.cli.common import UsageError, add_out, out, print_json

__all__ = ["add_recipe"]


def cmd_recipe(args) -> int:
    from trainlab.config import load_config
    from trainlab.recipe import run_recipe

    if not math.isfinite(args.budget) or not 0 < args.budget <= 1e6:
        raise UsageError(f"--budget: must be a positive number of minutes (at most 1e6), got {args.budget:g}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: must be at least 1, got {args.workers}")
    overrides = list(args.set) + ([f"task={args.task}"] if args.task else [])
    hp = load_config(args.config, overrides)
    # --threads or $OMP_NUM_THREADS: the user's count (set by the command line already); else the idle
    # cores where this model trains faster on them
    threads = None if getattr(args, "threads_chosen", True) else "auto"
    started = _process_start()
    result = run_recipe(hp, budget_minutes=args.budget, workers=args.workers, out=args.out, db=args.db,
                        fresh=args.fresh, force=args.force, quiet=args.quiet, runs_dir=args.runs_dir,
                        started_at=started, threads=threads)
    if args.json:
        print_json(result.to_dict())
    else:
        out(f"recipe {result.status}" + (f": report {result.report}" if result.report else ""))
    code = 130 if result.status == "interrupted" else 0 if result.status == "completed" else 1
    if started is not None:  # run as the command: skip the interpreter's teardown of torch
        from trainlab.parallel.ddp import exit_process

        exit_process(code, run_atexit=True)
    return code


def _process_start() -> float | None:
    """time.time() at which this process started (Linux: /proc), so that the budget counts torch's import;
    None unless this process was started as the command (`trainlab ...` or `python -m trainlab ...`): main()
    called inside another process (a notebook, a test session) counts from the call."""
    import sys
    import time

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if Path(sys.argv[0]).name != "trainlab" and getattr(spec, "name", None) != "trainlab.__main__":
        return None
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def add_recipe(p) -> None:
    from trainlab.config import DEFAULT_RUNS_DIR
    from trainlab.recipe import DEFAULT_BUDGET_MINUTES, DEFAULT_REPORT_DIR
    from trainlab.search.workers import MAX_DEFAULT_WORKERS

    p.add_argument("config", nargs="?", help="YAML config to start from (default: the built-in defaults)")
    p.add_argument("--task", help="mnist1d (default), mnist1d-shuffle, digits, or path/to/file.py:build")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_MINUTES, metavar="MINUTES",
                   help=f"wall-clock budget (default: {DEFAULT_BUDGET_MINUTES:g})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help=f"search worker processes (default: the machine's cores, at most {MAX_DEFAULT_WORKERS})")
    add_out(p, DEFAULT_REPORT_DIR, f"report directory (default: {DEFAULT_REPORT_DIR})")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help=f"where checkpoints go (default: {DEFAULT_RUNS_DIR})")
    p.add_argument("--fresh", action="store_true", help="start a new study instead of resuming the last one")
    p.add_argument("--force", action="store_true", help="go on after a failed check")
    p.set_defaults(fn=cmd_recipe)
