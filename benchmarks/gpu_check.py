"""GPU check: the default training on a CUDA machine in every precision, with and without torch.compile, and
data-parallel over NCCL on every visible GPU; one table of samples/s, test accuracy and peak memory.

    python benchmarks/gpu_check.py [--quick] [--task mnist1d|shapes32] [--epochs E]

Rows: precision fp32, bf16, fp16 (GradScaler) x compile off/on on one GPU, then DDP over NCCL with one
process per visible GPU (`torchrun --nproc-per-node N`, the precision `auto` picks). samples/s is the
median over epochs after the first (the first pays for compilation and cuDNN autotuning); peak memory is
`torch.cuda.max_memory_allocated` (the largest over the ranks for DDP). On a machine without CUDA it says
"no CUDA device" and exits 0 at once. `--cpu-dry-run` runs the same matrix for a few steps on the CPU
(gloo, 2 processes) to check the script itself where no GPU is at hand.

Writes benchmarks/results/gpu_check.json (gpu_check_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _hp(args, **over):
    from trainlab import Config

    base = dict(task=args.task, epochs=args.epochs, monitor_every=0, batch_size=128)
    if args.task == "shapes32":
        base.update(model="resnet", width=32)
    if args.cpu_dry_run:
        base.update(steps=20, epochs=1, device="cpu", width=8)
    return Config(**{**base, **over})


def _row(name: str, result, seconds: float, peak: float | None) -> dict:
    speeds = result.history.get("samples_per_s", [])
    speed = statistics.median(speeds[1:] or speeds) if speeds else float("nan")
    return {"run": name, "status": result.status, "samples_per_s": speed,
            "test_acc": result.test["acc"] if result.test else None, "peak_mem_mib": peak, "seconds": round(seconds, 1)}


def _one_gpu(args) -> list[dict]:
    import torch

    from trainlab import fit, load_task
    from trainlab.config import ConfigError

    rows = []
    task = load_task(_hp(args))
    cuda = torch.cuda.is_available() and not args.cpu_dry_run
    for compile_ in ((False,) if args.cpu_dry_run else (False, True)):  # the dry run skips minutes of compiling
        for precision in ("fp32", "bf16", "fp16"):
            name = f"1 GPU {precision}{' compiled' if compile_ else ''}"
            hp = _hp(args, precision=precision, compile=compile_)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            try:
                result = fit(task, hp, quiet=True)
            except ConfigError as err:  # e.g. bf16 on a GPU without it: a row that says why
                rows.append({"run": name, "status": f"refused: {err}"})
                continue
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
            rows.append(_row(name, result, time.perf_counter() - t0, peak))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp(args) -> dict:
    """DDP over every visible GPU (NCCL), through torchrun, this script as the worker."""
    import torch

    n = 2 if args.cpu_dry_run else torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}", f"--master-port={_free_port()}",
               __file__, "--worker", str(out), "--task", args.task, "--epochs", str(args.epochs)]
        if args.cpu_dry_run:
            cmd.append("--cpu-dry-run")
        t0 = time.perf_counter()
        code = subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if code or not out.is_file():
            return {"run": f"DDP x{n}", "status": f"failed (torchrun exit {code})"}
        row = json.loads(out.read_text())
        row["seconds"] = round(time.perf_counter() - t0, 1)
        return row


def _worker(args) -> int:
    """One torchrun worker: join the group (NCCL on CUDA), train, rank 0 writes the row."""
    import torch
    import torch.distributed as tdist

    from trainlab import fit, load_task
    from trainlab.parallel.ddp import cleanup, init

    hp = _hp(args)
    dist = init("cpu" if args.cpu_dry_run else "cuda")
    try:
        t0 = time.perf_counter()
        result = fit(load_task(hp), hp, quiet=True, dist=dist)
        peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**20 if dist.device.type == "cuda" else 0.0],
                            device=dist.device)
        tdist.all_reduce(peak, op=tdist.ReduceOp.MAX)
        backend = tdist.get_backend()
        if dist.main:
            row = _row(f"DDP x{dist.world_size} ({backend}, precision auto)", result, time.perf_counter() - t0,
                       peak.item() if dist.device.type == "cuda" else None)
            Path(args.worker).write_text(json.dumps(row))
    finally:
        cleanup(dist)
    return 0


def _gpu_driver() -> bool:
    """A GPU driver is present (NVIDIA or ROCm): only then is importing torch to ask CUDA worth it."""
    return any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")) or bool(shutil.which("nvidia-smi"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--task", default="mnist1d", choices=["mnist1d", "shapes32"])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--cpu-dry-run", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.epochs = args.epochs or (3 if args.quick else 20)
    if args.worker:
        return _worker(args)
    if not args.cpu_dry_run and not _gpu_driver():  # answer at once, without the seconds torch takes to import
        print("gpu_check: no CUDA device: nothing to check on this machine (exit 0)")
        return 0
    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("gpu_check: no CUDA device: nothing to check on this machine (exit 0)")
        return 0
    torch.backends.cudnn.benchmark = True
    device = "cpu (dry run)" if args.cpu_dry_run else \
        ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    rows = _one_gpu(args) + [_ddp(args)]
    print(f"\ngpu_check: {args.task}, default config, {args.epochs} epochs, batch 128; {device}")
    print(f"{'run':36} {'samples/s':>10} {'test acc':>9} {'peak MiB':>9}  status")
    for r in rows:
        fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "-"  # noqa: E731
        print(f"{r['run']:36} {fmt(r.get('samples_per_s'), '10.0f')} {fmt(r.get('test_acc'), '9.4f')} "
              f"{fmt(r.get('peak_mem_mib'), '9.0f')}  {r['status']}")
    out = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "platform": platform.platform(),
           "task": args.task, "epochs": args.epochs, "rows": rows}
    if not args.cpu_dry_run:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / ("gpu_check_quick.json" if args.quick else "gpu_check.json")).write_text(json.dumps(out, indent=2))
    return 0 if all(r["status"] == "completed" or r["status"].startswith("refused") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
