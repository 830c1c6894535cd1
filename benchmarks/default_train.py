"""The default `trainlab train` on mnist1d: test accuracy and wall time, over seeds.

Target: >= 97% test accuracy in under 2 minutes on 2 CPU cores. Writes benchmarks/results/default_train.json.

    python benchmarks/default_train.py [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainlab import Config, Store, fit, load_task

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one seed, 3 epochs (smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: trainlab's CLI default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else list(range(args.seeds))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            hp = Config(seed=seed, **({"epochs": 3} if args.quick else {}))
            t0 = time.perf_counter()
            task = load_task(hp)
            result = fit(task, hp, store=Store(Path(tmp) / "b.db"), quiet=True, runs_dir=Path(tmp) / "runs")
            seconds = time.perf_counter() - t0
            rows.append({"seed": seed, "test_acc": result.test["acc"], "best_val_acc": result.best_metric,
                         "best_epoch": result.best_epoch, "seconds": seconds, "status": result.status})
            print(f"seed {seed}: test {result.test['acc']:.4f}  val {result.best_metric:.4f}  {seconds:.1f} s")
    accs = [r["test_acc"] for r in rows]
    secs = [r["seconds"] for r in rows]
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"default config ({Config().model}, {Config().optimizer} lr {Config().lr}, {Config().schedule}, "
          f"{Config().epochs} epochs), torch threads {torch.get_num_threads()}")
    print(f"test accuracy {statistics.mean(accs):.4f} +- {spread:.4f} (n={len(accs)}), "
          f"min {min(accs):.4f}; wall {statistics.mean(secs):.1f} s, max {max(secs):.1f} s")
    met = min(accs) >= 0.97 and max(secs) < 120
    print(f"target (>= 97% test in < 2 min, every seed): {'met' if met else 'NOT met'}")
    RESULTS.mkdir(exist_ok=True)
    name = "default_train_quick.json" if args.quick else "default_train.json"
    (RESULTS / name).write_text(json.dumps({"rows": rows, "mean_test_acc": statistics.mean(accs), "std": spread,
                                            "target_met": met, "threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
