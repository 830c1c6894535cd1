"""Search commands: `trainlab search [CONFIG] --space SPACE.yaml ...` and `trainlab search report STUDY -o DIR`."""

from __future__ import annotations

import sys

from trainlab.cli.common import UsageError, add_out, out, print_json, printable, table

__all__ = ["add_search"]

_MAX_ROWS = 25  # leaderboard rows printed; the rest are in the store (trainlab runs --study NAME)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def leaderboard_table(rows: list[dict], metric: str) -> str:
    names = list(dict.fromkeys(k for r in rows for k in r["params"]))
    shown = [{"rank": r["rank"], "trial": r["trial"], "run": r["run"], "status": r["status"],
              **{n: _fmt(r["params"][n]) if n in r["params"] else "" for n in names},
              metric: r["value"], "epochs": r["epochs"]} for r in rows[:_MAX_ROWS]]
    text = table(shown, ["rank", "trial", "run", "status", *names, metric, "epochs"])
    if len(rows) > _MAX_ROWS:
        text += f"\n... {len(rows) - _MAX_ROWS} more"
    return text


def cmd_search(args) -> int:
    import optuna

    from trainlab.config import load_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    targets = list(args.target)
    if targets and targets[0] == "report":
        return cmd_report(args, targets[1:])
    if len(targets) > 1:
        raise UsageError(f"search: expected at most one CONFIG, got {' '.join(targets)}")
    if args.out:
        raise UsageError("search: -o/--out belongs to: trainlab search report STUDY -o DIR")
    config = targets[0] if targets else None
    from trainlab.search import run_search

    join = args.space is None
    if join and args.study is None:
        raise UsageError("search: give --space SPACE.yaml (or --study NAME to join an existing study)")
    if join and (config or args.set):
        raise UsageError("search: a config or --set needs --space too (joining a study uses its own settings)")
    hp = None if join else load_config(config, args.set)
    try:
        result = run_search(hp, args.space, strategy=args.strategy, trials=args.trials, workers=args.workers,
                            study=args.study, db=args.db, storage=args.storage, prune=args.prune,
                            epochs=args.epochs, seed=args.seed, runs_dir=args.runs_dir,
                            heartbeat_s=args.heartbeat_s, quiet=args.quiet)
    except KeyboardInterrupt:
        print("search interrupted; the running trial is queued again. Re-run the same command to resume.",
              file=sys.stderr)
        return 130
    if args.json:
        print_json(result.to_dict())
    else:
        out(f"study {printable(result.study)}: {result.strategy}" + (f" + {result.prune}" if result.prune != "none" else "")
              + f", {len(result.leaderboard)} trials ("
              + ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items())) + f") in {result.seconds:.0f} s")
        if result.leaderboard:
            out(leaderboard_table(result.leaderboard, result.metric))
        if result.best:
            out(f"best: trial {result.best['trial']} (run {result.best['run']}), {result.metric} "
                  f"{result.best['value']:.4f}")
    if not result.complete:
        print(f"search {printable(result.study)} is incomplete ({result.counts}); re-run the same command to resume",
              file=sys.stderr)
        return 1
    return 0


def cmd_report(args, rest: list[str]) -> int:
    from trainlab.search.report import write_search_report

    if len(rest) != 1:
        raise UsageError("search report: give one study name, e.g. trainlab search report search-random-1a2b3c4d")
    folder = args.out or f"report-{rest[0]}"
    page = write_search_report(rest[0], folder, db=args.db, storage=args.storage)
    if args.json:
        print_json({"study": rest[0], "out": str(page)})
    else:
        out(f"wrote {page}")
    return 0


def add_search(p) -> None:
    from trainlab.config import DEFAULT_RUNS_DIR
    from trainlab.search import (
        DEFAULT_HEARTBEAT_S,
        DEFAULT_PRUNE,
        DEFAULT_STRATEGY,
        DEFAULT_TRIALS,
        DEFAULT_WORKERS,
        GRACE_HEARTBEATS,
        PRUNERS,
        STRATEGIES,
    )

    p.description = ("trainlab search [CONFIG] --space SPACE.yaml --strategy grid|random|tpe ...  |  "
                     "trainlab search report STUDY [-o DIR]")
    p.add_argument("target", nargs="*", metavar="CONFIG", help="YAML config the space varies (default: built-in "
                   "defaults); or: report STUDY")
    p.add_argument("--space", help="search space YAML: lr: loguniform(1e-4, 1e-1), width: int(32, 256, log), ...")
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=STRATEGIES, help=f"default: {DEFAULT_STRATEGY}")
    p.add_argument("--prune", default=DEFAULT_PRUNE, choices=PRUNERS,
                   help=f"stop bad trials early on the per-epoch validation metric (default: {DEFAULT_PRUNE})")
    p.add_argument("--trials", type=int, help="the study's total number of trials (default: the grid's size, "
                   f"else {DEFAULT_TRIALS}); re-running resumes until that many have finished")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help=f"worker processes on this machine (default {DEFAULT_WORKERS})")
    p.add_argument("--study", help="study name (default: derived from config, space, strategy and pruning)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: --db); postgresql://... "
                   "lets workers on many machines share one study")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--epochs", type=int, help="epochs per trial (overrides the config)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the config's seed)")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help=f"where checkpoints go (default: {DEFAULT_RUNS_DIR})")
    p.add_argument("--heartbeat-s", type=int, default=DEFAULT_HEARTBEAT_S,
                   help=f"seconds between trial heartbeats; a trial silent for {GRACE_HEARTBEATS} of them is "
                        f"retried once (default {DEFAULT_HEARTBEAT_S})")
    add_out(p, None, "search report: folder for index.html and its figures (default: report-STUDY)", "--output")
    p.set_defaults(fn=cmd_search)
