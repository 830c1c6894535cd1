"""shapes32: a small CNN against the ResNet, each with and without flip/crop augmentation, 3 seeds.

Every run: Adam lr 3e-3, cosine schedule, batch 64, the same number of epochs, on the first TRAIN
examples of shapes32's training split (the validation split is the task's usual 10%, which picks the best
epoch); test accuracy on the 2000-example test split, mean and sample sd over the seeds. One torch thread.
The budget is kept small (a 2-core machine shared with others): the full run takes about 10-15 minutes.

    python benchmarks/shapes32.py [--quick]
    python benchmarks/shapes32.py --models resnet --epochs 30 --out benchmarks/results/shapes32_resnet_e30.json

Writes benchmarks/results/shapes32.json (shapes32_quick.json with --quick; --out names another file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from trainlab import Config, fit, load_task

RESULTS = Path(__file__).parent / "results"
MODELS = {"cnn": 16, "resnet": 8}  # model -> width
FULL = dict(train=3000, epochs=8, seeds=(0, 1, 2))
QUICK = dict(train=600, epochs=2, seeds=(0, 1))


def run(model: str, width: int, augment: str, seed: int, train: int, epochs: int) -> dict:
    hp = Config(task="shapes32", model=model, width=width, augment=augment, seed=seed, epochs=epochs, batch_size=64,
                lr=3e-3, optimizer="adam", schedule="cosine", monitor_every=0)
    task = load_task(hp)
    x, y = task.train.tensors
    task = replace(task, train=TensorDataset(x[:train], y[:train]))
    t0 = time.perf_counter()
    result = fit(task, hp, quiet=True)
    return {"model": model, "width": width, "augment": augment, "seed": seed, "test_acc": result.test["acc"],
            "best_val_acc": result.best_metric, "best_epoch": result.best_epoch,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    parser.add_argument("--epochs", type=int, help="epochs per run (default 8; 2 with --quick)")
    parser.add_argument("--train", type=int, help="training examples (default 3000; 600 with --quick)")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 3; 2 with --quick)")
    parser.add_argument("--out", help="the JSON file to write")
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("epochs", "train"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.seeds is not None:
        cfg["seeds"] = tuple(range(args.seeds))
    models = {m: MODELS[m] for m in args.models.split(",") if m}
    torch.set_num_threads(1)
    started, load_start = time.perf_counter(), os.getloadavg()
    rows = []
    for model, width in models.items():
        for augment in ("none", "flip_crop"):
            for seed in cfg["seeds"]:
                rows.append(run(model, width, augment, seed, cfg["train"], cfg["epochs"]))
                print(json.dumps(rows[-1]), flush=True)
    table = []
    for model, width in models.items():
        for augment in ("none", "flip_crop"):
            accs = [r["test_acc"] for r in rows if r["model"] == model and r["augment"] == augment]
            table.append({"model": f"{model} (width {width})", "augment": augment, "n": len(accs),
                          "mean": statistics.fmean(accs), "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                          "seconds_per_run": statistics.fmean(r["seconds"] for r in rows
                                                              if r["model"] == model and r["augment"] == augment)})
    print(f"\nshapes32: {cfg['train']} training examples, {cfg['epochs']} epochs, seeds {list(cfg['seeds'])}; "
          "test accuracy on 2000 examples")
    print(f"{'model':20} {'augment':10} {'test acc (mean ± sd)':>22} {'s/run':>7}")
    for t in table:
        print(f"{t['model']:20} {t['augment']:10} {t['mean']:>12.4f} ± {t['sd']:.4f}  {t['seconds_per_run']:>7.1f}")
    out = {"config": {**cfg, "seeds": list(cfg["seeds"]), "models": models, "batch_size": 64, "lr": 3e-3,
                      "optimizer": "adam", "schedule": "cosine"},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "threads": 1, "load_avg_at_start_end": [load_start, os.getloadavg()]},
           "seconds": round(time.perf_counter() - started, 1), "table": table, "runs": rows}
    RESULTS.mkdir(exist_ok=True)
    path = Path(args.out) if args.out else RESULTS / ("shapes32_quick.json" if args.quick else "shapes32.json")
    path.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
