"""Diagnostics commands: `check init|overfit|lr` (exit 0 on pass, 1 on fail) and `diagnose RUN`."""

from __future__ import annotations

import math
import sys

from trainlab.cli.common import UsageError, add_out, open_store, out, print_json, printable, table

__all__ = ["add_check", "add_diagnose"]


def _setup(args):
    from trainlab.config import load_config
    from trainlab.preflight import load_checked_task

    hp = load_config(args.config, args.set)
    task = load_checked_task(hp)  # pre-flight: bad data is one line, exit 2, before the store is opened
    return hp, task, open_store(args)


def _drop(x) -> str:
    """A relative drop of the loss as text: '29.0%' lower, or '-0.7%' (it rose)."""
    return "" if x is None or not math.isfinite(x) else f"{x:.1%}"


# --- check init / overfit -----------------------------------------------------------------------

def cmd_check_init(args) -> int:
    from trainlab.checks import check_init

    if args.batches < 1:
        raise UsageError(f"--batches: must be >= 1, got {args.batches}")
    hp, task, store = _setup(args)
    result = check_init(task, hp, store, batches=args.batches, study=args.study)
    return _report(args, result)


def cmd_check_overfit(args) -> int:
    from trainlab.checks import check_overfit

    if args.batches < 1:
        raise UsageError(f"--batches: must be >= 1, got {args.batches}")
    if args.max_steps < 1:
        raise UsageError(f"--max-steps: must be >= 1, got {args.max_steps}")
    hp, task, store = _setup(args)
    if not args.quiet:
        print(f"overfitting {args.batches} minibatches of {hp.batch_size} from {task.name} with {hp.model}, "
              f"{hp.optimizer} lr {hp.lr:g}, regularization off, at most {args.max_steps} steps ...", file=sys.stderr,
              flush=True)
    result = check_overfit(task, hp, store, batches=args.batches, max_steps=args.max_steps, study=args.study,
                           runs_dir=args.runs_dir)
    return _report(args, result)


def _report(args, result) -> int:
    if args.json:
        print_json(result.to_dict())
    else:
        out(f"check {result.name}: {result.verdict.upper()}: {printable(result.message)}")
        if result.run_id is not None:
            out(f"recorded as run {result.run_id}")
    return 0 if result.passed else 1


# --- check lr -----------------------------------------------------------------------------------

def _sweep_rows(sweep: dict) -> list[dict]:
    """About two rows per decade of the sweep, plus its minimum and its cut."""
    lrs, raw, smooth = sweep["lrs"], sweep["raw"], sweep["smoothed"]
    if not lrs:
        return []
    marks, last = set(), None
    for i, lr in enumerate(lrs):
        if last is None or math.log10(lr) - math.log10(last) >= 0.5 - 1e-9:
            marks.add(i)
            last = lr
    marks.add(len(lrs) - 1)
    if sweep["min_index"] is not None:
        marks.add(sweep["min_index"])
    rows = []
    for i in sorted(marks):
        note = []
        if i < sweep["skip"]:
            note.append("skipped")
        if i >= sweep["cut"]:
            note.append("after cut")
        if i == sweep["min_index"]:
            note.append("<- minimum of smoothed loss")
        rows.append({"step": i, "lr": f"{lrs[i]:.3g}", "loss": f"{raw[i]:.4g}", "smoothed": f"{smooth[i]:.4g}",
                     "": ", ".join(note)})
    return rows


def cmd_check_lr(args) -> int:
    from trainlab.checks import check_lr

    hp, task, store = _setup(args)
    if not args.quiet:
        print(f"LR range test on {task.name}/{hp.model}: {hp.optimizer}, batch {hp.batch_size}, weight decay "
              f"{args.weight_decay:g}, method {args.method} ...", file=sys.stderr, flush=True)
    result = check_lr(task, hp, store, method=args.method, steps=args.steps, sweep_steps=args.sweep_steps,
                      weight_decay=args.weight_decay, plot=args.out, study=args.study)
    if args.json:
        print_json(result.to_dict())
        return 0 if result.passed else 1
    if result.table:
        out(f"\ndiscrete trial: {args.steps} steps at each lr, constant, from the same initialization")
        rows = [{"lr": f"{r['lr']:g}", "start": r["start"], "end": r["end"], "drop": _drop(r["drop"]),
                 "status": r["status"], "": "<- picked" if r["picked"] else r["why"] if r["status"] != "ok" else ""}
                for r in result.table]
        out(table(rows, ["lr", "start", "end", "drop", "status", ""]))
    if result.sweep is not None:
        s = result.sweep
        lo, hi = result.settings["sweep_range"]
        out(f"\nexponential sweep: {args.sweep_steps} steps, lr {lo:g} -> {hi:g}; loss smoothed (bias-corrected EMA), "
              f"first {s['skip']} points skipped"
              + (f", {s['dropped_nonfinite']} NaN/Inf dropped" if s["dropped_nonfinite"] else "")
              + (f"; cut: {s['cut_reason']}" if s["cut_reason"] else "; no divergence in range"))
        out(table(_sweep_rows(s), ["step", "lr", "loss", "smoothed", ""]))
        if s["suggested_lr"] is not None:
            out(f"sweep rule: {s['rule']}: {s['lr_at_min']:.3g} / 10 = {s['suggested_lr']:.3g}")
        if s["note"]:
            out(f"note: {s['note']}")
    out()
    if result.agree is not None:
        out(f"agreement: discrete {result.discrete_lr:g} vs sweep {result.sweep_lr:.3g}: "
              f"{'agree' if result.agree else 'DISAGREE'} ({result.agreement})")
    out(f"check lr: {result.verdict.upper()}: {result.message}")
    out(f"rule: {result.rule}")
    if result.suggested_lr is not None:
        out(f"to use it: trainlab train --set lr={result.suggested_lr:.3g}")
    if result.plot:
        out(f"wrote {result.plot}")
    if result.run_id is not None:
        out(f"recorded as run {result.run_id}")
    return 0 if result.passed else 1


# --- diagnose -----------------------------------------------------------------------------------

def cmd_diagnose(args) -> int:
    from trainlab.doctor.diagnose import diagnose_run

    if args.num_classes is not None and args.num_classes < 2:
        raise UsageError(f"--num-classes: must be >= 2, got {args.num_classes}")
    store = open_store(args, read_only=True)
    d = diagnose_run(store, args.run, num_classes=args.num_classes)
    if args.json:
        print_json(d.to_dict())
        return 0
    reason = f": {printable(d.reason)}" if d.reason else ""
    out(f"run {d.run_id}: {printable(d.name)} ({printable(d.status)}{reason}; {d.epochs} epochs, {d.steps} steps)")
    if d.num_classes is None:
        out("  (number of classes unknown: initial-loss rule skipped; pass --num-classes)")
    if d.healthy:
        out("no problems found: the curves look healthy")
        return 0
    for i, f in enumerate(d.findings, 1):
        out(f"{i}. {f.name} ({f.confidence} confidence): {printable(f.diagnosis)}")
        out(f"   evidence: {printable(f.evidence)}")
        out(f"   try: {printable(f.action)}")
    return 0


# --- parser -------------------------------------------------------------------------------------

def _common(p):
    p.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults on mnist1d)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--study", help="file the check's run under this study")
    return p


def add_check(check) -> None:
    from trainlab.cli.common import GLOBALS
    from trainlab.config import DEFAULT_RUNS_DIR
    from trainlab.doctor.lr_range import LR_TEST_WEIGHT_DECAY, SWEEP_STEPS, TRIAL_STEPS

    which = check.add_subparsers(dest="check", required=True, metavar="CHECK")

    def sub(name, help):
        return _common(which.add_parser(name, help=help, description=help, parents=[GLOBALS]))

    p = sub("init", "loss at initialization against log(C), weight decay off")
    p.add_argument("--batches", type=int, default=10, help="minibatches the initial loss is averaged over (default 10)")
    p.set_defaults(fn=cmd_check_init)

    p = sub("overfit", "reach 100%% training accuracy on a few minibatches")
    p.add_argument("--batches", type=int, default=5, help="minibatches in the small sample (default 5)")
    p.add_argument("--max-steps", type=int, default=1000, help="give up after this many updates (default 1000)")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help=f"where checkpoints go (default: {DEFAULT_RUNS_DIR})")
    p.set_defaults(fn=cmd_check_overfit)

    p = sub("lr", "learning-rate range test: discrete trial and exponential sweep")
    p.add_argument("--method", choices=("both", "discrete", "sweep"), default="both",
                   help="both (default): a short constant-lr trial per candidate and an exponential sweep; or one")
    p.add_argument("--steps", type=int, default=TRIAL_STEPS, help=f"updates per discrete trial (default {TRIAL_STEPS})")
    p.add_argument("--sweep-steps", type=int, default=SWEEP_STEPS,
                   help=f"updates of the exponential sweep (default {SWEEP_STEPS})")
    p.add_argument("--weight-decay", type=float, default=LR_TEST_WEIGHT_DECAY,
                   help=f"weight decay during the test (default {LR_TEST_WEIGHT_DECAY:g})")
    add_out(p, "lr-test.png", "where the figure goes (default lr-test.png)", "--plot")
    p.set_defaults(fn=cmd_check_lr)


def add_diagnose(p) -> None:
    p.add_argument("run", type=int, help="the run's id (trainlab runs lists them)")
    p.add_argument("--num-classes", type=int, help="for the initial-loss rule (default: recorded by the run)")
    p.set_defaults(fn=cmd_diagnose)
