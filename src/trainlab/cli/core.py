"""Core commands: train, runs, plot, schedule."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trainlab.cli.common import UsageError, add_db, open_store, print_json, printable, table
from trainlab.config import DEFAULT_RUNS_DIR

__all__ = ["register"]


# --- train --------------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from trainlab.cli.launch import exit_code
    from trainlab.config import load_config
    from trainlab.preflight import load_checked_task
    from trainlab.train.launch import AlreadyEnded, fit_in_launch

    if args.nproc is not None or args.max_restarts is not None:  # data-parallel: this command under torchrun
        from trainlab.cli.launch import torchrun_train

        return torchrun_train(args)
    store = None
    if args.resume is not None:
        from trainlab.config import make_config

        store = open_store(args)
        run = store.run(args.resume)
        hp = make_config(run["hparams"])
        result = fit_in_launch(load_checked_task(hp), hp, store, resume=args.resume, quiet=args.quiet,
                               runs_dir=args.runs_dir)  # fit(), one rank under torchrun
    else:
        hp = load_config(args.config, args.set)
        if args.print_config:
            print(hp.to_yaml(), end="")
            return 0
        task = load_checked_task(hp)  # pre-flight: bad data is one line, exit 2, before any run row exists
        if hp.seeds > 1:  # K independent members and their ensemble (cli/ensemble.py)
            from trainlab.cli.ensemble import cmd_train_members

            return cmd_train_members(args, hp)
        store = open_store(args)
        result = fit_in_launch(task, hp, store, quiet=args.quiet, runs_dir=args.runs_dir, study=args.study,
                               name=args.name)
    if isinstance(result, AlreadyEnded) or result.rank:  # a torchrun restart after the run ended, or rank > 0
        return exit_code(result.status)
    if args.json:
        print_json({"run": result.run_id, "status": result.status, "reason": result.reason,
                     "best_metric": result.best_metric, "best_epoch": result.best_epoch, "epochs": result.epochs,
                     "steps": result.steps, "test": result.test, "checkpoint": result.checkpoint,
                     "seconds": round(result.seconds, 2)})
    if result.status == "diverged":
        print(f"diverged: {printable(result.reason)}", file=sys.stderr)
        return 1
    return 130 if result.status == "stopped" else 0


# --- runs ---------------------------------------------------------------------------------------

def _run_row(run: dict) -> dict:
    """A run's line: its best value named by the metric it was chosen on (`early_stop_metric`: val/acc, or
    val/loss for a regression task), and the test result of the task's headline metric (acc, mse, ...)."""
    summary = run.get("summary") or {}
    seconds = summary.get("seconds")
    headline = (summary.get("metrics") or {}).get("headline", "acc")
    return {"id": run["id"], "name": run["name"], "study": run.get("study"), "status": run["status"],
            "metric": (run.get("hparams") or {}).get("early_stop_metric"), "best": run["best_metric"],
            "test_metric": f"test/{headline}", "test": summary.get(f"test/{headline}"),
            "best_val": run["best_metric"], "test_acc": summary.get("test/acc"), "epochs": run["epochs"],
            "duration_s": round(seconds, 1) if seconds is not None else None}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def cmd_runs(args) -> int:
    store = open_store(args, read_only=True)
    if args.action == "show":
        if args.id is None:
            raise UsageError("runs show: give a run id, e.g. trainlab runs show 3")
        run = store.run(args.id)
        if args.json:
            print_json(run)
            return 0
        for key in ("id", "name", "study", "kind", "status", "reason", "created", "finished", "best_metric",
                    "best_epoch", "epochs", "checkpoint", "seed", "host", "pid", "heartbeat"):
            print(f"{key:12} {printable(run.get(key))}")
        for key, value in (run.get("summary") or {}).items():
            print(f"{printable(key):12} {printable(value)}")
        print("hyperparameters:")
        for key, value in run["hparams"].items():
            print(f"  {printable(key)}: {printable(value)}")
        return 0
    if args.action is not None:
        raise UsageError(f"runs: unknown action {args.action!r}; use: trainlab runs [show ID]")
    kind = None if args.kind == "all" else args.kind
    rows = [_run_row(r) for r in store.runs(study=args.study, kind=kind)]
    if args.json:
        print_json(rows)
    elif rows:
        print(table(rows, ["id", "name", "study", "status", "metric", "best", "test_metric", "test", "epochs",
                           "duration_s"]))
    else:
        print(f"no runs in {printable(store.url)}")
    return 0


# --- plot ---------------------------------------------------------------------------------------

def cmd_plot(args) -> int:
    from trainlab.figures import plot_ratios, plot_run

    store = open_store(args, read_only=True)
    store.run(args.run)
    path = (plot_ratios if args.ratios else plot_run)(store, args.run, args.output)
    print(f"wrote {path}")
    return 0


# --- schedule -----------------------------------------------------------------------------------

_SCHEDULE_KEYS = {"min_factor": float, "step_size": int, "milestones": list, "gamma": float, "period": int,
                  "period_mult": float, "timescale": int}


def cmd_schedule(args) -> int:
    from trainlab.config import parse_override
    from trainlab.schedules import make_schedule

    params: dict[str, Any] = {}
    for item in args.set:
        key, value = parse_override(item)
        if key not in _SCHEDULE_KEYS:
            raise UsageError(f"--set: unknown schedule parameter {key!r}; choose one of {', '.join(_SCHEDULE_KEYS)}")
        params[key] = value
    if not 0 < args.lr <= 1e6:  # also refuses nan and inf
        raise UsageError(f"--lr: must be in (0, 1e6], got {args.lr}")
    if not 1 <= args.steps <= 10_000_000:  # every step's lr is listed
        raise UsageError(f"--steps: must be in [1, 10000000], got {args.steps}")
    if not 0 <= args.warmup <= args.steps:
        raise UsageError(f"--warmup: must be in [0, --steps], got {args.warmup}")
    factor = make_schedule(args.kind, args.steps, warmup_steps=args.warmup, **params)
    lrs = [args.lr * factor(s) for s in range(args.steps)]
    if args.plot:
        from trainlab.figures import plot_schedule

        plot_schedule(lrs, args.plot, title=f"{args.kind} (warmup {args.warmup})")
    if args.json:
        print_json({"kind": args.kind, "lr": args.lr, "steps": args.steps, "warmup": args.warmup, **params,
                     "lrs": lrs})
        return 0
    marks = sorted({0, args.warmup, args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps - 1}
                   | set(range(0, args.steps, max(1, args.steps // 10))))
    print(table([{"step": s, "lr": f"{lrs[s]:.6g}"} for s in marks], ["step", "lr"]))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


# --- parser -------------------------------------------------------------------------------------

def register(sub) -> None:
    from trainlab.config import SCHEDULES

    p = add_db(sub.add_parser("train", help="train one model"))
    p.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults on mnist1d)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", type=int, metavar="RUN", help="continue a run from its last checkpoint")
    p.add_argument("--study", help="file the run under this study")
    p.add_argument("--name", help="the run's name")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help=f"where checkpoints go (default: {DEFAULT_RUNS_DIR})")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--nproc", type=int, metavar="K", help="data-parallel: run this command under torchrun with K "
                   "processes (torchrun --nproc-per-node K -m trainlab train ...)")
    p.add_argument("--max-restarts", type=int, metavar="N", help="with --nproc: torchrun restarts a failed worker "
                   "group up to N times; each restart resumes the run from its last checkpoint")
    p.set_defaults(fn=cmd_train)

    p = add_db(sub.add_parser("runs", help="list runs, or show one"))
    p.add_argument("action", nargs="?", help="show")
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--study")
    p.add_argument("--kind", default="train", help="train (default), check, step, or all")
    p.add_argument("--json", action="store_true")
    p.add_argument("--lost-after", type=_seconds, metavar="S", help="a running run whose heartbeat is older than "
                   "S seconds shows as lost (default: 300; a run whose process is gone from this machine at once)")
    p.set_defaults(fn=cmd_runs)

    p = add_db(sub.add_parser("plot", help="plot a run's curves"))
    p.add_argument("run", type=int)
    p.add_argument("-o", "--output", default="curves.png")
    p.add_argument("--ratios", action="store_true", help="update/weight ratio per layer instead (log y, 1e-3 band)")
    p.set_defaults(fn=cmd_plot)

    p = sub.add_parser("schedule", help="print (and plot) a learning-rate schedule")
    p.add_argument("kind", choices=SCHEDULES)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1000, help="optimizer updates")
    p.add_argument("--warmup", type=int, default=0, help="warmup updates")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"schedule parameter, in steps: {', '.join(_SCHEDULE_KEYS)}")
    p.add_argument("--plot", metavar="PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_schedule)
