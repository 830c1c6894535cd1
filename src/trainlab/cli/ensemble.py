"""Ensemble commands: `trainlab ensemble` and the members path of `trainlab train --set seeds=K`."""

from __future__ import annotations

import os
import sys

from trainlab.cli.common import UsageError, loggers_from, open_store, out, print_json, printable, table

__all__ = ["add_ensemble", "cmd_train_members"]


def _run_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = []
    if not ids:
        raise UsageError(f"--runs: expected run ids separated by commas (3,4,5) or best:K, got {text!r}")
    return ids


def _print_result(result, title: str) -> None:
    rows = [{"run": m["run"], "member": f"{m['name']} [{m['source']}]", "acc": m["acc"], "loss": m["loss"]}
            for m in result.members]
    rows.append({"run": "", "member": "members' mean", "acc": result.mean_member_acc})
    rows.append({"run": "", "member": f"ensemble of {len(result.members)}", "acc": result.ensemble_acc,
                 "loss": result.ensemble_loss})
    out(f"{printable(title)}: {result.split} split, {result.n} examples")
    metric = result.metric   # what the "acc" values hold: accuracy, or a regression's headline metric (mse)
    if metric != "acc":
        rows = [{**r, metric: r.get("acc")} for r in rows]
    out(table(rows, ["run", "member", metric, "loss"]))
    gain = result.ensemble_acc - result.mean_member_acc
    out(f"ensemble {metric} {result.ensemble_acc:.4f} vs members' mean {result.mean_member_acc:.4f} ({gain:+.4f})")


def cmd_ensemble(args) -> int:
    from trainlab.ensemble import best_runs, evaluate_ensemble, members_from_runs, members_from_snapshots
    from trainlab.train import resolve_device

    given = [name for name, value in (("--runs", args.runs), ("--study", args.study), ("--snapshots", args.snapshots))
             if value is not None]
    if len(given) != 1:
        raise UsageError("ensemble: give one of --runs ID,ID,... (or best:K), --study NAME [--top K], "
                         f"--snapshots RUN; got {', '.join(given) or 'none'}")
    if args.top is not None and args.study is None:
        raise UsageError("--top: goes with --study NAME")
    if args.last is not None and args.snapshots is None:
        raise UsageError("--last: goes with --snapshots RUN")
    store = open_store(args, read_only=True)
    device = resolve_device("auto")
    if args.snapshots is not None:
        members = members_from_snapshots(store, args.snapshots, args.last, device=device)
        title = f"snapshot ensemble of run {args.snapshots}"
    else:
        if args.task is not None and args.study is None and not args.runs.startswith("best:"):
            raise UsageError("--task: goes with --runs best:K or --study NAME")
        if args.study is not None:
            ids, note = best_runs(store, args.study, args.top, args.task)
            title = f"top {len(ids)} runs of study {args.study!r}, {note}"
        elif args.runs.startswith("best:"):
            try:
                k = int(args.runs[len("best:"):])
            except ValueError:
                raise UsageError(f"--runs: expected best:K with a whole number K, got {args.runs!r}") from None
            ids, note = best_runs(store, None, k, args.task)
            title = f"the {len(ids)} best runs, {note}"
        else:
            ids = _run_ids(args.runs)
            title = "ensemble of runs " + ",".join(map(str, ids))
        members = members_from_runs(store, ids, device=device)
    result = evaluate_ensemble(members, args.split, device=device)
    if args.json:
        print_json(result.as_dict())
    else:
        _print_result(result, title)
    return 0


def cmd_train_members(args, hp) -> int:
    """`trainlab train --set seeds=K`: K independent runs, then their ensemble on the validation split."""
    from trainlab.ensemble import train_members

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("seeds: members are trained one after another in one process; not under torchrun/--nproc")
    store = open_store(args)

    results, ens = train_members(hp, store=store, study=args.study, name=args.name, quiet=args.quiet,
                                 runs_dir=args.runs_dir, loggers=loggers_from(getattr(args, "log_to", [])))
    ids = [r.run_id for r in results]
    if args.json:
        print_json({"runs": [{"run": r.run_id, "seed": hp.seed + i, "status": r.status, "best_metric": r.best_metric,
                              "test": r.test, "checkpoint": r.checkpoint} for i, r in enumerate(results)],
                    "ensemble": ens.as_dict() if ens else None})
    else:
        out(f"trained {len(results)} members (seeds {hp.seed}..{hp.seed + len(results) - 1}): runs "
              + ", ".join(map(str, ids)))
        if ens is not None:
            _print_result(ens, "independent ensemble")
            out(f"on the test split: trainlab ensemble --runs {','.join(map(str, ids))} --split test")
    if any(r.status == "stopped" for r in results):
        return 130
    if any(r.status == "diverged" for r in results):
        print("diverged: " + "; ".join(f"run {r.run_id}: {printable(r.reason)}" for r in results if r.status == "diverged"),
              file=sys.stderr)
        return 1
    return 0


def add_ensemble(p) -> None:
    p.add_argument("--runs", metavar="ID,ID,...", help="runs whose best checkpoints are the members; best:K for "
                   "the K runs with the best validation metric")
    p.add_argument("--study", metavar="NAME", help="members from this study's runs (with --top K: the K best)")
    p.add_argument("--top", type=int, metavar="K", help="with --study: the K runs with the best validation metric")
    p.add_argument("--snapshots", type=int, metavar="RUN", help="the snapshots a cyclic_cosine run saved "
                   "(snapshots=true)")
    p.add_argument("--task", metavar="NAME", help="with best:K or --study: members from this task's runs (default: "
                   "the task trained most recently; runs of different tasks are never mixed)")
    p.add_argument("--last", type=int, metavar="M", help="with --snapshots: only the last M snapshots")
    p.add_argument("--split", choices=("val", "test"), default="val", help="where to measure (default: val)")
    p.set_defaults(fn=cmd_ensemble)
