"""Data loading: the in-memory fast path against the code it replaced, and DataLoader workers on a disk dataset.

1. In-memory tensors (mnist1d, batch 32): `train.data.Batches.iterate` (with `Feed`, keys, the transform hook)
   against the previous implementation's loop (an index into device tensors per batch, copied below as the
   baseline), alternating in one process; the ratio is taken per repetition and the median reported.
2. A disk-backed dataset (examples/image_folder.py: 600 PNG files read with PIL, flip augmentation): `fit()`
   training samples/s with `num_workers` 0 and 2, alternating, median of the epochs' samples/s.

Writes benchmarks/results/data_loading.json (or data_loading_quick.json).

    python benchmarks/data_loading.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainlab import Config, fit, load_task
from trainlab.train.data import Batches, epoch_order

RESULTS = Path(__file__).parent / "results"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "image_folder.py"


def before(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, bs: int):
    """The in-memory path as it was before this change (train/data.py, Batches.iterate's tensor branch)."""
    n_batches = -(-len(order) // bs)
    for b in range(n_batches):
        idx = order[b * bs:(b + 1) * bs]
        yield x[idx], y[idx]


def time_epochs(make_iter, epochs: int, n: int) -> float:
    t0 = time.perf_counter()
    total = 0.0
    for e in range(epochs):
        for xb, yb in make_iter(epoch_order(n, 0, e)):
            total += float(xb.shape[0])  # touch the batch, as the loop would
    return time.perf_counter() - t0


def in_memory(reps: int, epochs: int) -> dict:
    task = load_task(Config(model="mlp"))
    batches = Batches(task.train, 32, torch.device("cpu"))
    x, y = batches.tensors
    n = batches.n
    runs = {"before": lambda o: before(x, y, o, 32), "now": lambda o: batches.iterate(o, 0, 0)}
    times = {k: [] for k in runs}
    for rep in range(reps):
        for name in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
            times[name].append(time_epochs(runs[name], epochs, n))
    ratio = statistics.median(a / b for a, b in zip(times["now"], times["before"]))
    steps = epochs * len(batches)
    return {"batches": steps, "seconds_before": statistics.median(times["before"]),
            "seconds_now": statistics.median(times["now"]), "ratio_now_over_before": ratio,
            "batches_per_s_before": steps / statistics.median(times["before"]),
            "batches_per_s_now": steps / statistics.median(times["now"])}


def workers(reps: int, epochs: int) -> dict:
    spec = importlib.util.spec_from_file_location("image_folder_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = {0: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            for rep in range(reps):
                for nw in ((0, 2) if rep % 2 == 0 else (2, 0)):
                    hp = Config(task=f"{EXAMPLE}:build", epochs=epochs, num_workers=nw, batch_size=32, monitor_every=0)
                    task = load_task(hp)
                    r = fit(task, hp, quiet=True, checkpoints=False, evaluate_test=False)
                    out[nw].append(statistics.median(r.history["samples_per_s"]))
        finally:
            os.chdir(cwd)
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"examples": len(task.train), "samples_per_s_workers_0": med[0], "samples_per_s_workers_2": med[2],
            "speedup_2_over_0": med[2] / med[0], "all": {str(k): v for k, v in out.items()}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reps = 3 if args.quick else 7
    mem = in_memory(reps, 2 if args.quick else 10)
    wk = workers(1 if args.quick else 3, 2 if args.quick else 3)
    load = os.getloadavg()
    print(f"data loading, 1 torch thread, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'path':58} {'before':>10} {'now':>10} {'ratio':>7}")
    print(f"{'in-memory tensors, mnist1d batch 32 (batches/s)':58} {mem['batches_per_s_before']:10.0f} "
          f"{mem['batches_per_s_now']:10.0f} {mem['ratio_now_over_before']:7.3f}  (time now / before)")
    print(f"{'image folder PNG + PIL, fit() samples/s: workers 0 -> 2':58} {wk['samples_per_s_workers_0']:10.0f} "
          f"{wk['samples_per_s_workers_2']:10.0f} {wk['speedup_2_over_0']:7.2f}  (speed-up)")
    RESULTS.mkdir(exist_ok=True)
    out = {"in_memory": mem, "workers": wk, "loadavg": load, "quick": args.quick, "threads": 1}
    (RESULTS / ("data_loading_quick.json" if args.quick else "data_loading.json")).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
