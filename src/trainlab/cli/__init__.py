"""The `trainlab` command: argument parsing only; each command is a few lines over the library.

Commands are registered lazily: the table below names each command's module and one-line help, and only
the command being run has its module imported and its options built (`trainlab --help` and `trainlab runs`
import no torch and start in a fraction of a second). The conventions every command follows (global
options before or after the command, stdout for the result only, -o/--out, exit statuses) live in
`common.py`. Bad input exits with status 2 and one line naming the field and the value; a diverged
run exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from trainlab.cli.common import GLOBALS, Streams, UsageError, printable, top_level_globals

__all__ = ["main", "entry", "parse", "build_parser", "COMMANDS"]

# command -> (module under trainlab.cli that builds it with add_<command>(parser), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("core", "train one model"),
    "runs": ("core", "list runs, or show one"),
    "plot": ("core", "plot a run's curves"),
    "schedule": ("core", "print (and plot) a learning-rate schedule, with the config's parameter names"),
    "search": ("search", "hyperparameter search (grid, random, TPE; pruning; workers); "
                         "'search report STUDY' writes an HTML report"),
    "dashboard": ("dashboard", "serve the command center (a read-only web dashboard)"),
    "ensemble": ("ensemble", "average the predicted probabilities of several models"),
    "check": ("diagnostics", "sanity checks: init, overfit, lr (exit 0 on pass, 1 on fail)"),
    "diagnose": ("diagnostics", "the learning-curve doctor on a stored run"),
    "transfer": ("transfer", "transfer learning from a run or a weights file to a target task"),
    "recipe": ("recipe", "choose hyperparameters end to end (7 steps) within a time budget; writes an HTML report"),
    "export": ("export", "export runs or a study to TensorBoard, MLflow or CSV"),
}


def build_parser(only: str | None = "*") -> argparse.ArgumentParser:
    """The parser. `only`: the command whose options are built ("*": every command's; None: none, just
    the list of commands, which is all `trainlab --help` needs)."""
    parser = argparse.ArgumentParser(prog="trainlab", description="Train neural networks the careful way.",
                                     epilog="Global options go before or after the command. "
                                            "trainlab COMMAND --help shows a command's options.")
    top_level_globals(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help, parents=[GLOBALS])
        if only == "*" or only == name:
            getattr(import_module(f"{__name__}.{module}"), f"add_{name}")(p)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The command named in `argv` (the first word that is one), skipping the global options' values."""
    takes_value = {"--db", "--threads"}
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in takes_value:
            skip = True
        elif token in COMMANDS:
            return token
        elif not token.startswith("-"):
            return None  # an unknown command: argparse says so, with the choices
    return None


def _told_whole() -> tuple[type, ...]:
    """The errors whose whole message is the news (printed escaped, on one line): UsageError, the config's
    ConfigError (PreflightError among them), the checkpoint's CheckpointError and the store's RunNotFound
    (a KeyError), each only when its module was imported (never imported: never raised), so that light
    commands import neither torch nor the store to name them."""
    found: list[type] = [UsageError]
    for module, name in (("trainlab.config", "ConfigError"), ("trainlab.checkpoint", "CheckpointError"),
                         ("trainlab.store.store", "RunNotFound")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            found.append(getattr(loaded, name))
    return tuple(found)


def _set_threads(threads: int | None) -> None:
    """Torch reads OMP_NUM_THREADS when imported; set it before (worker processes inherit it), and set the
    running torch too when something imported it already."""
    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS") or 1)
    if threads < 1:
        raise UsageError(f"--threads: must be >= 1, got {threads}")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _late_positionals(parser: argparse.ArgumentParser, args, extra: list[str]) -> None:
    """Give positionals typed after options their place (`trainlab export csv --db x.db 3`, `runs --db x.db
    show 3`): argparse fills optional positionals at the first option and leaves later words unrecognized."""
    command = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001 (argparse has no API)
    while getattr(command, "_subparsers", None) is not None and getattr(args, "check", None):  # check init|...
        command = command._subparsers._group_actions[0].choices[args.check]
    positionals = [a for a in command._actions if not a.option_strings and a.nargs != argparse.PARSER]
    for token in extra:
        if token.startswith("-") and token != "-":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        for action in positionals:
            value = getattr(args, action.dest, None)
            if action.nargs in ("*", "+"):
                converted = command._get_value(action, token)
                command._check_value(action, converted)
                setattr(args, action.dest, [*(value or []), converted])
                break
            if value is None or value == action.default:
                converted = command._get_value(action, token)
                command._check_value(action, converted)
                setattr(args, action.dest, converted)
                positionals.remove(action)
                break
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments of `trainlab ARGV`, as main() reads them (argparse's usage error: SystemExit 2)."""
    parser = build_parser(_command_in(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        _late_positionals(parser, args, extra)
    args.argv = argv  # the command as typed (train --nproc relaunches it)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    with Streams():
        return _run(args)


def entry() -> int:
    """The `trainlab` program (`python -m trainlab`, the console script): main()'s exit status. A torchrun
    worker that joined a process group ends on every path through `trainlab.parallel.ddp.exit_process`: the
    interpreter's teardown would race the group's threads (docs/data-parallel.md, "How a worker ends")."""
    try:
        code = main()
    except BaseException as err:
        if not _joined_group():
            raise
        if isinstance(err, SystemExit):
            code = err.code if isinstance(err.code, int) else int(err.code is not None)
        elif isinstance(err, KeyboardInterrupt):
            code = 130
        else:
            sys.excepthook(type(err), err, err.__traceback__)  # the traceback Python would print
            code = 1
    if _joined_group():
        sys.modules["trainlab.parallel.ddp"].exit_process(code)
    return code


def _joined_group() -> bool:
    ddp = sys.modules.get("trainlab.parallel.ddp")  # not imported (nor torch) unless the command trained
    return ddp is not None and ddp.joined_group()


def _run(args) -> int:
    try:
        args.threads_chosen = args.threads is not None or "OMP_NUM_THREADS" in os.environ
        _set_threads(args.threads)
        return args.fn(args)
    except _told_whole() as err:  # evaluated only on an error
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"trainlab: error: {printable(msg)}", file=sys.stderr)
        return 2
    except ValueError as err:  # the store's checks (StoreUnusable among them) and other bad values
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"trainlab: error: {printable(msg)}", file=sys.stderr)
        return 2
    except Exception as err:  # faults of the machine: the database, the disk. A bug keeps its traceback.
        found = _fault(err)
        if found is None:
            raise
        code, msg = found
        print(f"trainlab: error: {msg}", file=sys.stderr)
        return code


def _fault(err: Exception) -> tuple[int, str] | None:
    """(exit status, one line) for an error of the machine rather than of trainlab: a database that cannot
    be reached or read (`store.errors.classify`: 2 bad input, 1 fault), a checkpoint that cannot be written
    (its `exit_code`), any other OSError (1: disk full, permission denied...); None for anything else."""
    from trainlab.store.errors import classify

    fault = classify(err)
    if fault is not None:
        return fault.exit_code, str(fault).splitlines()[0]
    if type(err).__name__ == "CheckpointWriteError":  # trainlab.checkpoint (torch): not imported here
        return getattr(err, "exit_code", 1), str(err).splitlines()[0]
    if isinstance(err, OSError):
        return 1, (str(err).strip().splitlines() or [type(err).__name__])[0]
    return None
