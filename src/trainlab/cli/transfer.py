"""Transfer commands: `trainlab transfer [advise|compare|run|probe] --source RUN|FILE --target TASK`."""

from __future__ import annotations

from trainlab.cli.common import UsageError, open_store, out, print_json, printable, table

__all__ = ["add_transfer"]

ACTIONS = ("advise", "compare", "run", "probe")
_COLUMNS = ["strategy", "val_acc", "test_acc", "seconds", "trainable", "run", "detail"]


def _setup(args):
    """(store, source, target task with its validation split, hyperparameters) from the arguments."""
    from trainlab.config import apply_overrides, load_config, parse_override
    from trainlab.tasks import load_task
    from trainlab.transfer import load_source, prepare_target

    if not args.source:
        raise UsageError("transfer: give --source RUN (a run id) or --source FILE --arch ARCH")
    if not args.target:
        raise UsageError("transfer: give --target TASK (mnist1d, mnist1d-shuffle, digits, file.py:build)")
    overrides = dict(parse_override(item) for item in args.set)
    if args.source.isdigit():
        store = open_store(args)
        if args.arch:
            raise UsageError("--arch: a run source brings its own architecture; use --arch with a weights file")
        source = load_source(int(args.source), store=store)
        hp = apply_overrides(source.hp, {"task": args.target, **overrides})
        task = load_task(hp)
    else:
        if not args.arch:
            raise UsageError(f"--arch: the weights file {args.source!r} needs its architecture "
                             "(mlp, cnn, resnet, torchvision:NAME, timm:NAME or file.py:fn)")
        hp = load_config(None, {"task": args.target, **overrides})
        task = load_task(hp)
        source = load_source(args.source, arch=args.arch, hp=hp, input_shape=tuple(task.train[0][0].shape))
        hp = source.hp  # with model=ARCH for a built-in architecture, so the runs record it
        store = open_store(args)
    return store, source, prepare_target(task, hp), hp


def _table(rows: list[dict], result, columns: list[str] = _COLUMNS) -> str:
    """`rows` as a table whose val_acc/test_acc columns are headed by the metric they hold: val_acc and test_acc
    for a classifier judged by accuracy, else the metrics' names (val/loss, test/mse)."""
    names = ({} if (result.metric, result.test_metric) == ("val/acc", "test/acc")
             else {"val_acc": result.metric, "test_acc": result.test_metric})
    shown = [{**r, **{names[k]: r.get(k) for k in names}} for r in rows]
    return table(shown, [names.get(c, c) for c in columns])


def _print_result(result, as_json: bool) -> None:
    if as_json:
        print_json(result.row() | ({"probes": result.probes} if result.probes else {}))
        return
    if result.probes:
        out(_table(result.probes, result, ["stage", "dim", "val_acc", "test_acc", "seconds", "run"]))
    out(_table([result.row()], result))


def cmd_transfer(args) -> int:
    from trainlab.transfer import FeatureCache, compare, parse_strategy, train_strategy
    from trainlab.transfer.advisor import advise

    common = dict(study=args.study, quiet=not args.verbose, runs_dir=args.runs_dir)
    if args.action == "run" and not args.strategy:
        raise UsageError("transfer run: give --strategy (linear, probe, finetune:K, full or scratch)")
    if args.action != "run" and args.strategy:
        raise UsageError(f"--strategy: only for transfer run, got it with transfer {args.action}")
    if args.strategy:
        parse_strategy(args.strategy)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    for s in strategies or ():
        parse_strategy(s)
    store, source, task, hp = _setup(args)
    cache = FeatureCache(source.model, task)

    if args.action == "advise":
        advice = advise(source, task, cache)
        result = train_strategy(source, task, advice.strategy, hp, store=store, cache=cache, **common) if args.run else None
        if args.json:
            print_json(advice.to_dict() | ({"result": result.row()} if result else {}))
            return 0
        size = "very little data" if advice.size == "little" else "quite a lot of data"
        similarity = "similar to" if advice.similarity == "similar" else "very different from"
        out(f"target {printable(task.name)}: {size}, {similarity} {printable(source.name)} -> {advice.strategy}")
        for reason in advice.reasons:
            out(f"  - {printable(reason)}")
        if result:
            _print_result(result, False)
        return 0
    if args.action == "compare":
        def report(r):
            if not args.quiet:
                print(f"{r.strategy}: {r.metric} {r.val_acc:.4f}  {r.test_metric} {r.test_acc:.4f}  {r.seconds:.1f}s",
                      flush=True)

        results = compare(source, task, hp, strategies, store=store, cache=cache, report=report, **common)
        rows = [r.row() for r in results]
        if args.json:
            print_json(rows)
        else:
            out(_table(rows, results[0]) if results else table(rows, _COLUMNS))
        return 0
    strategy = args.strategy if args.action == "run" else "probe"
    _print_result(train_strategy(source, task, strategy, hp, store=store, cache=cache, **common), args.json)
    return 0


def add_transfer(p) -> None:
    from trainlab.config import DEFAULT_RUNS_DIR

    p.description = ("advise: place the target in the lecture's 2x2 table and recommend a strategy (--run trains "
                     "it); compare: train every strategy; run: train one; probe: a linear classifier on each stage")
    p.add_argument("action", nargs="?", default="advise", choices=ACTIONS, help="default: advise")
    p.add_argument("--source", help="a run id (its best checkpoint) or a local weights file (.pt, .safetensors)")
    p.add_argument("--arch", help="with a weights file: mlp, cnn, resnet, torchvision:NAME, timm:NAME or file.py:fn")
    p.add_argument("--target", help="the target task: a built-in name or path/to/file.py:build")
    p.add_argument("--strategy", help="run: linear, probe, finetune:K, full or scratch")
    p.add_argument("--strategies", help="compare: comma-separated (default: every strategy)")
    p.add_argument("--run", action="store_true", help="advise: train the recommended strategy")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a hyperparameter of the target runs (e.g. epochs=5, backbone_lr_mult=0.1)")
    p.add_argument("--study", help="file the runs under this study (default: transfer-<source>-<target>)")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help=f"where checkpoints go (default: {DEFAULT_RUNS_DIR})")
    p.add_argument("--verbose", action="store_true", help="show each run's progress (stderr)")
    p.set_defaults(fn=cmd_transfer)
