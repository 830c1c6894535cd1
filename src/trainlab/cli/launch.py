"""`trainlab train --nproc K`: the same command again under torchrun; and one rank's share of `train`.

`trainlab train CONFIG --nproc 2` runs `python -m torch.distributed.run --nproc-per-node 2 -m trainlab
train CONFIG` (without --nproc), which is also what a user may type directly. Each worker then calls
`trainlab.train.launch.fit_in_launch`.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from trainlab.cli.common import UsageError, out

__all__ = ["torchrun_command", "torchrun_train", "exit_code"]

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
    from trainlab.cli.common import open_store
    from trainlab.config import load_config, make_config

    if args.nproc is None:
        raise UsageError("--max-restarts: only with --nproc K (under torchrun directly, use its --max-restarts)")
    if args.nproc < 1:
        raise UsageError(f"--nproc: must be at least 1, got {args.nproc}")
    if args.max_restarts is not None and args.max_restarts < 0:
        raise UsageError(f"--max-restarts: must be >= 0, got {args.max_restarts}")
    hp = make_config(open_store(args).run(args.resume)["hparams"]) if args.resume is not None \
        else load_config(args.config, args.set)
    if args.print_config:
        out(hp.to_yaml().rstrip("\n"))
        return 0
    if hp.seeds > 1:
        raise UsageError(f"--nproc: trains one run data-parallel, not an ensemble of seeds; got seeds={hp.seeds}")
    cmd = torchrun_command(args.argv, args.nproc, args.max_restarts or 0)
    if any(t.split("=", 1)[0] not in _OURS and any(o.startswith(t.split("=", 1)[0]) for o in _OURS)
           for t in args.argv if t.startswith("--") and len(t.split("=", 1)[0]) > 2):
        raise UsageError("--nproc/--max-restarts: write the option out in full")
    if not args.quiet:
        print("launching: " + " ".join(cmd[1:]), file=sys.stderr)
    return _wait_forwarding(subprocess.Popen(cmd))


def _wait_forwarding(proc: subprocess.Popen) -> int:
    """Wait for torchrun, handing it the SIGTERM this process gets (Slurm, docker stop, systemd signal only
    the process they started): torchrun passes it to every worker, which stop with a last checkpoint. A
    Ctrl-C reaches torchrun and the workers from the terminal; this process waits for them to finish."""
    def forward(signum, frame):
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    old = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # torchrun got the same Ctrl-C and stops its workers: wait for them
                continue
    finally:
        signal.signal(signal.SIGTERM, old)
