"""`trainlab export tensorboard|mlflow|csv RUN... | --study NAME [-o DEST]`: runs out to other tools."""

from __future__ import annotations

from trainlab.cli.common import UsageError, add_out, choice, open_store, out, print_json, table

__all__ = ["add_export"]


def _run_ids(tokens: list[str]) -> list[int]:
    ids = []
    for token in tokens:
        for part in token.split(","):
            if part.strip():
                if not part.strip().isdigit():
                    raise UsageError(f"RUN: expected run ids (3 4 or 3,4), got {part.strip()!r}")
                ids.append(int(part))
    return ids


def cmd_export(args) -> int:
    from trainlab.export import DEFAULT_OUT, FORMATS, export_runs, make_logger

    choice("FORMAT", args.format, FORMATS)
    ids = _run_ids(args.runs)
    if bool(ids) == bool(args.study):
        raise UsageError("export: give run ids (trainlab export csv 3 4) or --study NAME, not "
                         + ("both" if ids else "neither"))
    dest = args.out or DEFAULT_OUT[args.format]
    make_logger(args.format, dest)  # a missing library is one line before anything is read or written
    store = open_store(args, read_only=True)
    if args.study:
        ids = [r["id"] for r in store.runs(study=args.study, kind=None)]
        if not ids:
            known = ", ".join(s["name"] for s in store.studies(kind=None)) or "none"
            raise UsageError(f"--study: no runs in study {args.study!r}; studies: {known}")
    else:
        for run_id in ids:
            store.run(run_id)  # RunNotFound before anything is written
    done = export_runs(store, ids, args.format, dest)
    if args.json:
        print_json({"format": args.format, "out": dest, "runs": done})
    else:
        out(table(done, ["id", "name", "study", "status", "rows", "where"]))
        out(f"exported {len(done)} run(s) to {dest}" + {
            "tensorboard": f"; view: tensorboard --logdir {dest}",
            "mlflow": "; view: mlflow ui --backend-store-uri " + __import__("trainlab.export.mlflow", fromlist=["x"])
            .tracking_uri(dest),
            "csv": ""}[args.format])
    live = [str(r["id"]) for r in done if r["status"] == "running"]
    if live:  # a snapshot of what the store has now (a note: stderr)
        print(f"run {', '.join(live)} still running: exported its rows so far; export again when it ends")
    return 0


def add_export(p) -> None:
    from trainlab.export import DEFAULT_OUT, FORMATS

    p.description = ("Every metric series, the hyperparameters and each run's status and reason, written with "
                     "the format's own library (pip install 'trainlab[export]' for tensorboard and mlflow). "
                     "Exporting a run again replaces its earlier export. While training: trainlab train "
                     "--log-to tensorboard:DIR.")
    p.add_argument("format", metavar="FORMAT", help=f"{', '.join(FORMATS)}")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids (3 4 or 3,4)")
    p.add_argument("--study", metavar="NAME", help="every run of this study instead (a search, a recipe)")
    add_out(p, None, "where it goes (default: " + ", ".join(f"{k}: {v}/" for k, v in DEFAULT_OUT.items())
            + "); for mlflow also a tracking URI")
    p.set_defaults(fn=cmd_export)
