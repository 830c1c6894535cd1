"""The `trainlab` command: argument parsing only; each command is a few lines over the library.

Each module here registers its subcommands. Bad input exits with status 2 and one line naming the
field and the value; a diverged run exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from trainlab.cli import core, dashboard, diagnostics, ensemble, recipe, search, transfer
from trainlab.cli.common import UsageError, printable

__all__ = ["main", "build_parser"]

COMMAND_MODULES = [core, search, dashboard, ensemble, diagnostics, transfer, recipe]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainlab", description="Train neural networks the careful way.")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads per process (default: $OMP_NUM_THREADS, else 1: the built-in "
                             "models are small, and a second thread mostly waits on a busy core)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _checkpoint_error() -> type:
    """train's CheckpointError, without importing torch for commands that never train (dashboard, runs)."""
    checkpoint = sys.modules.get(f"{__package__.rpartition('.')[0]}.checkpoint")
    return checkpoint.CheckpointError if checkpoint is not None else UsageError  # not imported: not raised


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


def main(argv: list[str] | None = None) -> int:
    from trainlab.config import ConfigError
    from trainlab.store import RunNotFound

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed (train --nproc relaunches it)
    try:
        _set_threads(args.threads)
        return args.fn(args)
    except (ConfigError, _checkpoint_error(), UsageError, RunNotFound) as err:  # evaluated only on an error
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"trainlab: error: {printable(msg)}", file=sys.stderr)
        return 2
    except ValueError as err:
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
