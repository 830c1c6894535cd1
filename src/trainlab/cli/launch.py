"""`trainlab train --nproc K`: the same command again under torchrun; and one rank's share of `train`.

`trainlab train CONFIG --nproc 2` runs `python -m torch.distributed.run --nproc-per-node 2 -m trainlab
train CONFIG` (without --nproc), which is also what a user may type directly. Each worker then calls
`fit_in_launch`, which joins the process group, resumes the launch's run after a torchrun restart, and
leaves printing to rank 0.
"""

from __future__ import annotations

import subprocess
import sys

from .common import UsageError

__all__ = ["torchrun_command", "torchrun_train", "fit_in_launch", "exit_code"]

_OURS = ("--nproc", "--max-restarts")  # our options; torchrun gets its own equivalents instead


def exit_code(status: str) -> int:
    """The exit status of `trainlab train` for a run's final status: diverged 1, stopped 130, else 0."""
    return {"diverged": 1, "stopped": 130}.get(status, 0)


def torchrun_command(argv: list[str], nproc: int, max_restarts: int = 0) -> list[str]:
    """The torchrun command line for `trainlab <argv>` minus our launcher options.

    >>> torchrun_command(["train", "c.yaml", "--nproc", "2", "--set", "lr=0.1"], 2)[1:]
    ['-m', 'torch.distributed.run', '--nproc-per-node=2', '-m', 'trainlab', 'train', 'c.yaml', '--set', 'lr=0.1']
    """
    rest, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in _OURS:
            skip = "=" not in token
            continue
        rest.append(token)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if max_restarts:
        cmd.append(f"--max-restarts={max_restarts}")
    return cmd + ["-m", "trainlab", *rest]


def torchrun_train(args) -> int:
    """Run this `trainlab train` command under torchrun with `args.nproc` processes; torchrun's exit status.

    The config (or the run to resume) is checked here first, so bad input is one line and exit 2, once.
    """
    from ..config import load_config, make_config
    from .common import open_store

    if args.nproc is None:
        raise UsageError("--max-restarts: only with --nproc K (under torchrun directly, use its --max-restarts)")
    if args.nproc < 1:
        raise UsageError(f"--nproc: must be at least 1, got {args.nproc}")
    if args.max_restarts is not None and args.max_restarts < 0:
        raise UsageError(f"--max-restarts: must be >= 0, got {args.max_restarts}")
    hp = make_config(open_store(args).run(args.resume)["hparams"]) if args.resume is not None \
        else load_config(args.config, args.set)
    if args.print_config:
        print(hp.to_yaml(), end="")
        return 0
    if hp.seeds > 1:
        raise UsageError(f"--nproc: trains one run data-parallel, not an ensemble of seeds; got seeds={hp.seeds}")
    cmd = torchrun_command(args.argv, args.nproc, args.max_restarts or 0)
    if any(t.split("=", 1)[0] not in _OURS and any(o.startswith(t.split("=", 1)[0]) for o in _OURS)
           for t in args.argv if t.startswith("--") and len(t.split("=", 1)[0]) > 2):
        raise UsageError("--nproc/--max-restarts: write the option out in full")
    if not args.quiet:
        print("launching: " + " ".join(cmd[1:]), file=sys.stderr)
    try:
        return subprocess.run(cmd).returncode
    except KeyboardInterrupt:  # torchrun got the same Ctrl-C and stops its workers
        return 130


def fit_in_launch(task, hp, store, args, *, resume: int | None = None, **fit_kwargs):
    """fit() as this process runs it: alone, or as one rank of a torchrun launch.

    Under torchrun: joins the process group (gloo on CPU, NCCL on CUDA); after a torchrun restart
    (`--max-restarts`) resumes the run this launch was training (found by its launch id); leaves the
    output to rank 0. Returns the FitResult on rank 0 or alone, else the exit status to return.
    """
    from ..distributed import cleanup, init, restarted_run
    from ..train import fit

    dist = init(hp.device)
    try:
        if dist.ddp and resume is None:
            found = restarted_run(dist, store, args.runs_dir)
            if found is not None and found["status"] not in ("running", "failed"):
                if dist.main:
                    print(f"run {found['id']} already ended: {found['status']}", file=sys.stderr)
                return exit_code(found["status"])
            if found is not None:
                resume = found["id"]
                fit_kwargs = {k: v for k, v in fit_kwargs.items() if k not in ("study", "name")}
        result = fit(task, hp, store=store, resume=resume, quiet=args.quiet, runs_dir=args.runs_dir, dist=dist,
                     **fit_kwargs)
    finally:
        cleanup(dist)
    return result if dist.main else exit_code(result.status)
