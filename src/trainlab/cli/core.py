"""Core commands: train, runs, plot, schedule."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from trainlab.cli.common import UsageError, add_out, choice, loggers_from, open_store, out, print_json, printable, table

__all__ = ["add_train", "add_runs", "add_plot", "add_schedule"]

RUN_KINDS = ("train", "check", "step")  # what trainlab itself records; a user's fit(kind=...) may add more


# --- train --------------------------------------------------------------------------------------

def _import_torch(quiet: bool) -> float:
    """Import torch now, timed: the largest part of a training command's time to its first step. Said with
    the run's first-step line (`train.startup`), not now: an error before the run stays one line."""
    already = "torch" in sys.modules
    t0 = time.perf_counter()
    import torch  # noqa: F401

    seconds = 0.0 if already else time.perf_counter() - t0
    if not already:
        from trainlab.train import startup

        startup.TORCH_IMPORT_S = seconds
    return seconds


def cmd_train(args) -> int:
    if args.nproc is not None or args.max_restarts is not None:  # data-parallel: this command under torchrun
        from trainlab.cli.launch import torchrun_train

        return torchrun_train(args)
    from trainlab.config import load_config, make_config

    loggers = loggers_from(args.log_to)  # bad specs and missing libraries fail before torch is imported
    store = open_store(args) if args.resume is not None else None
    if store is not None:  # a resumed run trains its stored config, with its time fit (`minutes`) applied
        from trainlab.config import fitted_hparams

        row = store.run(args.resume)
        hp = make_config(fitted_hparams(row["hparams"], row.get("summary")))
    else:
        hp = load_config(args.config, args.set)
    if args.print_config:
        out(hp.to_yaml().rstrip("\n"))
        return 0
    torch_s = _import_torch(args.quiet)
    from trainlab.cli.launch import exit_code
    from trainlab.preflight import load_checked_task
    from trainlab.train.launch import AlreadyEnded, fit_in_launch

    if args.resume is not None:
        result = fit_in_launch(load_checked_task(hp), hp, store, resume=args.resume, quiet=args.quiet,
                               runs_dir=args.runs_dir, loggers=loggers)  # fit(), one rank under torchrun
    else:
        task = load_checked_task(hp)  # pre-flight: bad data is one line, exit 2, before any run row exists
        if hp.seeds > 1:  # K independent members and their ensemble (cli/ensemble.py)
            from trainlab.cli.ensemble import cmd_train_members

            return cmd_train_members(args, hp)
        store = open_store(args)
        result = fit_in_launch(task, hp, store, quiet=args.quiet, runs_dir=args.runs_dir, study=args.study,
                               name=args.name, loggers=loggers)
    if isinstance(result, AlreadyEnded) or getattr(result, "rank", 0):  # a torchrun restart after the run ended, or rank > 0
        return exit_code(result.status)
    startup = {"torch_import_s": round(torch_s, 3)}
    if result.run_id is not None:
        store.update_run(result.run_id, summary=startup)
        startup.update((store.run(result.run_id).get("summary") or {}).get("startup") or {})
    if args.json:
        print_json({"run": result.run_id, "status": result.status, "reason": result.reason,
                    "best_metric": result.best_metric, "best_epoch": result.best_epoch, "epochs": result.epochs,
                    "steps": result.steps, "test": result.test, "checkpoint": result.checkpoint,
                    "seconds": round(result.seconds, 2), "startup": startup})
    else:
        # the task's headline metric: the first the test measured beyond its loss (acc, mse, a user metric)
        headline = next((k for k in result.test if k != "loss"), "loss") if result.test else None
        test = f"  test/{headline} {result.test[headline]:.4f}" if headline is not None else ""
        judged = (store.run(result.run_id)["hparams"].get("early_stop_metric", "") + " ") if result.run_id is not None else ""
        best = f"  best {judged}{result.best_metric:.4f} at epoch {result.best_epoch}" if result.best_metric is not None else ""
        out(f"run {result.run_id}: {result.status}{best}{test}")
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
    return {"id": run["id"], "name": run["name"], "study": run.get("study"), "kind": run.get("kind"),
            "status": run["status"],
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
    if args.action == "show":
        if args.id is None:
            raise UsageError("runs show: give a run id, e.g. trainlab runs show 3")
        run = open_store(args, read_only=True).run(args.id)
        if args.json:
            print_json(run)
            return 0
        for key in ("id", "name", "study", "kind", "status", "reason", "created", "finished", "best_metric",
                    "best_epoch", "epochs", "checkpoint", "seed", "host", "pid", "heartbeat"):
            out(f"{key:12} {printable(run.get(key))}")
        for key, value in (run.get("summary") or {}).items():
            out(f"{printable(key):12} {printable(value)}")
        out("hyperparameters:")
        for key, value in run["hparams"].items():
            out(f"  {printable(key)}: {printable(value)}")
        return 0
    if args.action is not None:
        raise UsageError(f"runs: unknown action {args.action!r}; use: trainlab runs [show ID]")
    if args.id is not None:
        raise UsageError(f"runs: a run id goes with show: trainlab runs show {args.id}")
    store = open_store(args, read_only=True)
    runs = store.runs(study=args.study, kind=None)
    kinds = tuple(dict.fromkeys([*RUN_KINDS, *(r["kind"] for r in runs), "all"]))
    choice("--kind", args.kind, kinds)
    rows = [_run_row(r) for r in runs if args.kind == "all" or r["kind"] == args.kind]
    if args.json:
        print_json(rows)
    elif rows:
        kind = [] if args.kind != "all" else ["kind"]
        out(table(rows, ["id", "name", "study", *kind, "status", "metric", "best", "test_metric", "test", "epochs",
                         "duration_s"]))
    else:
        where = f" of study {printable(repr(args.study))}" if args.study else ""
        print(f"no {args.kind if args.kind != 'all' else ''} runs{where} in {printable(store.url)}".replace("  ", " "),
              file=sys.stderr)
    return 0


# --- plot ---------------------------------------------------------------------------------------

def cmd_plot(args) -> int:
    from trainlab.figures import plot_ratios, plot_run

    store = open_store(args, read_only=True)
    store.run(args.run)
    path = args.out or (f"ratios-{args.run}.png" if args.ratios else f"curves-{args.run}.png")
    path = (plot_ratios if args.ratios else plot_run)(store, args.run, path)
    if args.json:
        print_json({"run": args.run, "out": str(path)})
    else:
        out(f"wrote {path}")
    return 0


# --- schedule -----------------------------------------------------------------------------------

def _config_params() -> tuple[str, ...]:
    from trainlab.schedules import CONFIG_FIELDS

    return ("lr", "epochs", "steps", *(f for f in CONFIG_FIELDS if f != "schedule"))  # the kind: positional KIND

# make_schedule's names, which this command took before it used the config's: (config name, in updates?)
_OLD_NAMES = {"min_factor": ("min_lr_factor", False), "step_size": ("step_size_epochs", True),
              "milestones": ("milestones_epochs", True), "period": ("restart_period_epochs", True),
              "period_mult": ("restart_mult", False)}


def _schedule_overrides(args) -> dict[str, Any]:
    from trainlab.config import parse_override

    spe = args.steps_per_epoch
    params: dict[str, Any] = {}
    for item in args.set:
        key, value = parse_override(item)
        if key in _OLD_NAMES:  # an old spelling, in updates: converted to the config's epochs
            new, in_updates = _OLD_NAMES[key]
            if in_updates:
                value = [v / spe for v in value] if isinstance(value, list) else value / spe \
                    if isinstance(value, (int, float)) and not isinstance(value, bool) else value
            print(f"note: {key} is spelled {new} in the config" + (" (in epochs)" if in_updates else ""),
                  file=sys.stderr)
            key = new
        if key not in _config_params():
            raise UsageError(f"--set: unknown schedule parameter {key!r}; choose one of {', '.join(_config_params())}")
        params[key] = value
    if args.warmup is not None:
        params["warmup_steps"] = args.warmup
    return params


def cmd_schedule(args) -> int:
    from trainlab.config import load_config
    from trainlab.schedules import from_config

    if args.steps_per_epoch < 1:
        raise UsageError(f"--steps-per-epoch: must be >= 1, got {args.steps_per_epoch}")
    if args.steps is not None and not 1 <= args.steps <= 10_000_000:  # every step's lr is listed
        raise UsageError(f"--steps: must be in [1, 10000000], got {args.steps}")
    if args.lr is not None and not 0 < args.lr <= 1e6:  # also refuses nan and inf
        raise UsageError(f"--lr: must be in (0, 1e6], got {args.lr}")
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup: must be in [0, --steps], got {args.warmup}")
    params = _schedule_overrides(args)
    overrides = {**params, **({"schedule": args.kind} if args.kind else {}), **({"lr": args.lr} if args.lr else {})}
    hp = load_config(args.config, overrides)
    spe = args.steps_per_epoch
    total = args.steps or hp.steps or hp.epochs * spe
    if total > 10_000_000:  # every step's lr is listed
        raise UsageError(f"steps: must be in [1, 10000000] optimizer updates shown, got {total}")
    warmup = hp.warmup_steps or round(hp.warmup_epochs * spe)
    if warmup >= total:
        raise UsageError(f"warmup_steps: must be fewer than the {total} optimizer updates shown, got {warmup}")
    factor, _ = from_config(hp, spe, total, warmup)
    lrs = [hp.lr * factor(s) for s in range(total)]
    shown = {k: getattr(hp, k) for k in _config_params()}
    if args.out:
        from trainlab.figures import plot_schedule

        plot_schedule(lrs, args.out, title=f"{hp.schedule}, lr {hp.lr:g}, warmup {warmup} updates",
                      steps_per_epoch=spe)
    if args.json:
        print_json({"schedule": hp.schedule, "lr": hp.lr, "steps": total, "steps_per_epoch": spe, **shown,
                    "warmup": warmup, "lrs": lrs, "out": args.out})
        return 0
    if hp.lr_scaling != "none":
        print(f"note: lr_scaling={hp.lr_scaling} scales lr by the global batch when training; shown unscaled",
              file=sys.stderr)
    marks = sorted({0, warmup, total // 4, total // 2, 3 * total // 4, total - 1}
                   | set(range(0, total, max(1, total // 10))))
    out(f"{hp.schedule}: lr {hp.lr:g}, {total} optimizer updates ({spe} per epoch), warmup {warmup}")
    out(table([{"step": s, "epoch": f"{s / spe:.2f}", "lr": f"{lrs[s]:.6g}"} for s in marks], ["step", "epoch", "lr"]))
    if args.out:
        out(f"wrote {args.out}")
    return 0


# --- parsers ------------------------------------------------------------------------------------

def add_train(p) -> None:
    from trainlab.config import DEFAULT_RUNS_DIR

    p.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults on mnist1d)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", type=int, metavar="RUN", help="continue a run from its last checkpoint")
    p.add_argument("--study", help="file the run under this study")
    p.add_argument("--name", help="the run's name")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help=f"where checkpoints go (default: {DEFAULT_RUNS_DIR})")
    p.add_argument("--log-to", action="append", default=[], metavar="KIND:DEST",
                   help="also stream the run while it trains: tensorboard:DIR, mlflow:DIR_OR_URI or csv:DIR "
                        "(repeatable; needs pip install 'trainlab[export]' for the first two)")
    p.add_argument("--nproc", type=int, metavar="K", help="data-parallel: run this command under torchrun with K "
                   "processes (torchrun --nproc-per-node K -m trainlab train ...)")
    p.add_argument("--max-restarts", type=int, metavar="N", help="with --nproc: torchrun restarts a failed worker "
                   "group up to N times; each restart resumes the run from its last checkpoint")
    p.set_defaults(fn=cmd_train)


def add_runs(p) -> None:
    p.add_argument("action", nargs="?", metavar="show", help="show: one run in full (default: list the runs)")
    p.add_argument("id", nargs="?", type=int, help="with show: the run's id")
    p.add_argument("--study", metavar="NAME", help="only the runs of this study")
    p.add_argument("--kind", default="train",
                   help=f"which runs: {', '.join(RUN_KINDS)} or all (default: train); check runs are the "
                        "sanity checks, step runs the recipe's steps")
    p.add_argument("--lost-after", type=_seconds, metavar="S", help="a running run whose heartbeat is older than "
                   "S seconds shows as lost (default: 300; a run whose process is gone from this machine at once)")
    p.set_defaults(fn=cmd_runs)


def add_plot(p) -> None:
    p.add_argument("run", type=int, help="the run's id")
    add_out(p, None, "where the PNG goes (default: curves-RUN.png, or ratios-RUN.png with --ratios)", "--output")
    p.add_argument("--ratios", action="store_true", help="update/weight ratio per layer instead (log y, 1e-3 band)")
    p.set_defaults(fn=cmd_plot)


def add_schedule(p) -> None:
    from trainlab.schedules import KINDS

    p.description = ("The learning rate a run with these settings would use at each optimizer update. Parameters "
                     "have the config's names (--set min_lr_factor=0.1, --set milestones_epochs=[30,60]); epochs "
                     "are converted to updates at --steps-per-epoch.")
    p.add_argument("kind", nargs="?", choices=KINDS, metavar="KIND",
                   help=f"the schedule: {', '.join(KINDS)} (default: the config's)")
    p.add_argument("--config", metavar="YAML", help="read lr, epochs and the schedule's parameters from this config")
    p.add_argument("--lr", type=float, help="base learning rate (default: the config's)")
    p.add_argument("--steps", type=int, metavar="N",
                   help="optimizer updates shown (default: the config's steps, else epochs x --steps-per-epoch)")
    p.add_argument("--steps-per-epoch", type=int, default=100, metavar="N",
                   help="optimizer updates per epoch, for the parameters counted in epochs (default: 100; a run "
                        "prints its own in its start line)")
    p.add_argument("--warmup", type=int, metavar="N", help=argparse.SUPPRESS)  # the old spelling of --set warmup_steps=N
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"a schedule parameter of the config: {', '.join(_config_params())}")
    add_out(p, None, "also plot the schedule to this PNG", "--plot")
    p.set_defaults(fn=cmd_schedule)

