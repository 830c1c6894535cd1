"""Large batches and data parallelism on mnist1d (Goyal et al. 2017 at small scale), and measured throughput.

1. Large-batch rule: the mnist1d CNN (no BatchNorm), SGD with momentum, cosine schedule, the same epochs,
   3 seeds: batch 32 at lr a; batch 256 at lr 8a (lr_scaling: linear, base_batch_size: 32) with the
   default 5-epoch warmup; and the same without warmup (scaling_warmup_epochs: 0).
2. Throughput of the real command line: `trainlab train` in 1 process (1 and 2 threads) against
   `trainlab train --nproc 2` (torchrun, gloo, 1 thread each), same global batch; samples/s are the loop's
   own per-epoch figures (training only, without validation and start-up), median over epochs.

Timings on a shared 2-core CPU machine are noisy: read the ratios, not the absolute numbers.
Writes benchmarks/results/distributed[_quick].json and distributed[_quick].png.

    python benchmarks/distributed.py [--quick] [--epochs 15] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainlab import Config, Store, fit, load_task

RESULTS = Path(__file__).parent / "results"
LR = 0.05  # a: lr of batch 32
ARMS = {
    "batch 32, lr a": dict(batch_size=32),
    "batch 256, lr 8a, warmup": dict(batch_size=256, lr_scaling="linear", base_batch_size=32),
    "batch 256, lr 8a, no warmup": dict(batch_size=256, lr_scaling="linear", base_batch_size=32,
                                        scaling_warmup_epochs=0.0),
}


def large_batch(epochs: int, seeds: list[int]) -> dict:
    base = dict(model="cnn", width=32, optimizer="momentum", lr=LR, weight_decay=5e-4, schedule="cosine",
                epochs=epochs, monitor_every=0)
    task = load_task(Config(**base))
    out = {}
    for name, arm in ARMS.items():
        runs = []
        for seed in seeds:
            hp = Config(**base, **arm, seed=seed)
            t0 = time.perf_counter()
            r = fit(task, hp, quiet=True)
            runs.append({"seed": seed, "status": r.status, "final_val_acc": r.history["val/acc"][-1] if r.history else None,
                         "best_val_acc": r.best_metric, "test_acc": r.test["acc"], "val_acc": r.history.get("val/acc", []),
                         "seconds": time.perf_counter() - t0})
            print(f"  {name:30} seed {seed}: test/acc {r.test['acc']:.4f} ({r.status}, {runs[-1]['seconds']:.0f} s)",
                  flush=True)
        tests = [r["test_acc"] for r in runs]
        out[name] = {"hparams": {**base, **arm}, "runs": runs, "test_acc_mean": statistics.mean(tests),
                     "test_acc_sd": statistics.stdev(tests) if len(tests) > 1 else 0.0}
    return out


def _train(tmp: Path, name: str, nproc: int | None, threads: int, batch: int, epochs: int) -> float:
    """samples/s of one real `trainlab train` command: the median of its epochs' training throughput."""
    db = tmp / f"{name}.db"
    cmd = [sys.executable, "-m", "trainlab", "train", "--set", "model=cnn", "--set", "width=32", "--set",
           f"batch_size={batch}", "--set", f"epochs={epochs}", "--set", "monitor_every=0", "--db", str(db),
           "--runs-dir", str(tmp / name), "--quiet"]
    if nproc:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    store = Store(db)
    (run,) = store.runs()
    return statistics.median(store.metrics(run["id"], ["samples_per_s"])["samples_per_s"]["value"])


def throughput(epochs: int, reps: int) -> dict:
    setups = [("1 process, 1 thread, batch 128", None, 1, 128),
              ("1 process, 2 threads, batch 128", None, 2, 128),
              ("2 processes (torchrun, gloo), 1 thread each, 2 x 64", 2, 1, 64)]
    got: dict[str, list[float]] = {s[0]: [] for s in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):  # alternate, so background load hits every setup alike
            for label, nproc, threads, batch in setups:
                got[label].append(_train(Path(tmp), f"r{rep}-{len(got[label])}-{nproc}-{threads}", nproc, threads,
                                         batch, epochs))
                print(f"  {label:55} {got[label][-1]:8.0f} samples/s", flush=True)
    ref = statistics.median(got[setups[0][0]])
    return {label: {"samples_per_s": statistics.median(v), "runs": v, "ratio": statistics.median(v) / ref}
            for label, v in got.items()}


def figure(lb: dict, tp: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, arm in lb.items():
        curves = [r["val_acc"] for r in arm["runs"] if r["val_acc"]]
        n = min(len(c) for c in curves)
        mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
        a.plot(range(1, n + 1), mean, label=f"{name} (test {arm['test_acc_mean']:.3f})")
    a.set_xlabel("epoch")
    a.set_ylabel("val/acc (mean over seeds)")
    a.set_title("mnist1d CNN: large batch with the linear scaling rule")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    labels = list(tp)
    if not labels:
        b.set_axis_off()
    b.barh(range(len(labels)), [tp[k]["samples_per_s"] for k in labels])
    b.set_yticks(range(len(labels)), [k.replace(", ", "\n", 1) for k in labels], fontsize=8)
    b.set_xlabel("training samples/s (median)")
    b.set_title("throughput, shared 2-core CPU (noisy)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 seed, 6 epochs, 1 throughput repetition (smoke run)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of every large-batch arm (default 15)")
    parser.add_argument("--skip-throughput", action="store_true", help="only the large-batch arms")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    seeds = [0] if args.quick else [0, 1, 2]
    epochs = 6 if args.quick else args.epochs
    print(f"large batch: mnist1d cnn width 32, momentum SGD, a = {LR}, cosine, {epochs} epochs, seeds {seeds}")
    lb = large_batch(epochs, seeds)
    print("throughput: the real command line, 2 epochs each")
    tp = {} if args.skip_throughput else throughput(epochs=2, reps=1 if args.quick else 2)

    print(f"\n{'arm':32} {'test/acc mean':>13} {'sd':>7} {'final val/acc':>13}  statuses")
    for name, arm in lb.items():
        finals = [r["final_val_acc"] for r in arm["runs"] if r["final_val_acc"] is not None]
        print(f"{name:32} {arm['test_acc_mean']:13.4f} {arm['test_acc_sd']:7.4f} "
              f"{statistics.mean(finals) if finals else float('nan'):13.4f}  "
              f"{', '.join(r['status'] for r in arm['runs'])}")
    small, warm = lb["batch 32, lr a"]["test_acc_mean"], lb["batch 256, lr 8a, warmup"]["test_acc_mean"]
    print(f"warmed-up large batch vs small batch: {100 * (warm - small):+.2f} points "
          f"({'within' if abs(warm - small) <= 0.01 else 'NOT within'} 1 point)")
    print(f"\n{'setup':55} {'samples/s':>10} {'vs 1 process':>13}")
    for label, row in tp.items():
        print(f"{label:55} {row['samples_per_s']:10.0f} {row['ratio']:13.2f}")
    RESULTS.mkdir(exist_ok=True)
    stem = "distributed" + ("_quick" if args.quick else "") + (f"_e{epochs}" if not args.quick and epochs != 15 else "")
    out = {"quick": args.quick, "lr_a": LR, "epochs": epochs, "seeds": seeds, "large_batch": lb, "throughput": tp,
           "warm_minus_small_points": 100 * (warm - small),
           "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                       "load_avg_1min_start": load, "load_avg_1min_end": os.getloadavg()[0],
                       "note": "shared with other engineers' jobs: timings are noisy"}}
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2))
    figure(lb, tp, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / (stem + '.json')} and {RESULTS / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
