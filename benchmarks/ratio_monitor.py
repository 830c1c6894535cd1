"""What the update/weight-ratio monitor costs: `fit()` with `monitor_every=50` (the default: ratio of every
parameter tensor, gradient norm, end-of-run warnings) against the same `fit()` with `monitor_every=0`.

Same model (mnist1d MLP 40-100-100-10, the loop-overhead benchmark's), data, batch 32, seed, one thread,
a store on disk, no checkpoints, in one process, alternating the two settings so background load hits
both alike; median of `--reps`. Also checks the per-step losses are identical (monitoring must not change
training). Target: ratio <= 1.05 (the loop-overhead budget). Writes benchmarks/results/ratio_monitor.json.

    python benchmarks/ratio_monitor.py [--quick] [--reps 5] [--every 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainlab import Config, Store, fit, load_task

RESULTS = Path(__file__).parent / "results"


def one(task, hp, db) -> tuple[float, float, list[float]]:
    store = Store(db)
    t0, c0 = time.perf_counter(), time.process_time()
    r = fit(task, hp, store=store, quiet=True, evaluate_test=False, checkpoints=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    losses = store.metrics(r.run_id, ["train/loss"])["train/loss"]["value"]
    store.close()
    return wall, cpu, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 epochs, 2 repetitions: a smoke run")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--every", type=int, default=50, help="monitor cadence measured (steps)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    epochs, reps = (3, 2) if args.quick else (20, args.reps)
    base = Config(model="mlp", epochs=epochs)
    task = load_task(base)
    settings = {"off (monitor_every=0)": 0, f"on (monitor_every={args.every})": args.every}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in settings}
    losses: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        one(task, base, f"{tmp}/warm.db")  # imports, allocator, data: not part of either measurement
        for rep in range(reps):
            for name, every in settings.items():
                wall, cpu, loss = one(task, base.model_copy(update={"monitor_every": every}), f"{tmp}/{rep}-{every}.db")
                times[name].append((wall, cpu))
                losses[name] = loss
    off, on = (statistics.median(w for w, _ in times[k]) for k in settings)
    off_cpu, on_cpu = (statistics.median(c for _, c in times[k]) for k in settings)
    a, b = losses.values()
    identical = len(a) == len(b) and all(x == y for x, y in zip(a, b))
    rows = [{"monitor": name, "seconds": w, "ratio": w / off, "cpu_seconds": c, "cpu_ratio": c / off_cpu}
            for name, (w, c) in zip(settings, ((off, off_cpu), (on, on_cpu)))]
    print(f"fit() on mnist1d mlp, {len(a)} steps, batch 32, 1 thread, median of {reps}")
    print(f"{'monitor':28} {'wall s':>8} {'ratio':>6} {'cpu s':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['monitor']:28} {r['seconds']:8.2f} {r['ratio']:6.3f} {r['cpu_seconds']:8.2f} {r['cpu_ratio']:6.3f}")
    print(f"per-step losses identical with and without the monitor: {identical}")
    out = {"steps": len(a), "reps": reps, "threads": 1, "every": args.every, "rows": rows,
           "losses_identical": identical, "target_ratio": 1.05,
           "times": {k: [list(t) for t in v] for k, v in times.items()}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("ratio_monitor_quick.json" if args.quick else "ratio_monitor.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
