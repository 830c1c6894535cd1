"""Transfer learning on mnist1d: every strategy in each cell of the lecture's 2x2 table, and the advisor's pick.

Source: a width-16 resnet trained on mnist1d (3600 training examples), stored as a run and loaded back
through `load_source(run)` like `trainlab transfer --source RUN` does. Targets (examples/transfer_target.py):
- similar: new mnist1d signals (generator seed 1, noise 0.05 instead of 0.02, scale 0.5 instead of 0.4);
- very different: the signals' 40 positions permuted (generator seed 2, shuffle_seq), which destroys the
  local shapes the source's convolutions learned;
each with tens (50), hundreds (500) and thousands (4000) of training examples (10% of them carved out
for validation), tested on the generator's 1000 test examples. Several subsets (seeds) per small cell.
In every cell all strategies share the hyperparameters (Adam, lr 3e-3, cosine; epochs per size; the best
epoch by val/loss) and the features computed once; the advisor sees only the target's train+val data.

    python benchmarks/transfer.py [--quick | --holdout]

Writes benchmarks/results/transfer.json (transfer_quick.json with --quick, transfer_holdout.json with
--holdout: 150 and 1500 examples, a fresh subset, cells the advisor was not tuned on) and, for the full
run, benchmarks/results/transfer.png. One torch thread (two OpenMP threads on a busy 2-core machine spin
against each other).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainlab import Config, Store, fit, load_task
from trainlab.transfer.advisor import LECTURE, advise
from trainlab.config import apply_overrides
from trainlab.transfer import FeatureCache, compare, default_strategies, load_source, prepare_target

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
SOURCE = {"model": "resnet", "width": 16, "epochs": 5}
# n_train -> (subset seeds, epochs, batch size): the same budget for every strategy in a cell
SIZES = {50: ((0, 1, 2), 30, 32), 500: ((0, 1), 12, 32), 4000: ((0,), 4, 64)}
QUICK_SOURCE = {"model": "resnet", "width": 8, "epochs": 2}
QUICK_SIZES = {50: ((0,), 10, 32), 500: ((0,), 3, 32)}
# sizes and a subset seed the advisor's thresholds and EVIDENCE were not set on: an out-of-sample check
HOLDOUT_SIZES = {150: ((3,), 20, 32), 1500: ((3,), 6, 64)}


def _example():
    spec = importlib.util.spec_from_file_location("transfer_target", ROOT / "examples" / "transfer_target.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def run_cell(source, example, n: int, different: bool, seeds, epochs: int, batch: int, store: Store,
             runs_dir: Path) -> dict:
    test: dict[str, list[float]] = {}
    val: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    advice, probes = [], []
    for seed in seeds:
        task = example.make_target(source.hp, n, different=different, seed=seed)
        hp = apply_overrides(source.hp, {"task": task.name, "epochs": epochs, "batch_size": batch,
                                         "early_stop_metric": "val/loss", "monitor_every": 0})
        task = prepare_target(task, hp)
        cache = FeatureCache(source.model, task)
        t0 = time.perf_counter()
        a = advise(source, task, cache)
        advise_s = time.perf_counter() - t0
        results = compare(source, task, hp, store=store, study=f"bench-{task.name}-s{seed}", runs_dir=runs_dir,
                          cache=cache)
        for r in results:
            test.setdefault(r.strategy, []).append(r.test_acc)
            val.setdefault(r.strategy, []).append(r.val_acc)
            seconds.setdefault(r.strategy, []).append(r.seconds)
            if r.probes:
                probes.append(r.probes)
        advice.append({"seed": seed, "strategy": a.strategy, "size": a.size, "similarity": a.similarity,
                       "lecture_strategy": a.lecture_strategy, "top_score": a.top_score, "input_score": a.input_score,
                       "gain": a.gain, "stage_scores": a.stage_scores, "peak_stage": a.peak_stage,
                       "seconds": advise_s, "reasons": a.reasons})
    means = {s: statistics.fmean(v) for s, v in test.items()}
    best = max(means, key=means.get)
    picks = [a["strategy"] for a in advice]
    pick = max(set(picks), key=picks.count)
    lecture = advice[0]["lecture_strategy"]
    return {
        "similarity": "different" if different else "similar", "n_train": n, "seeds": list(seeds),
        "epochs": epochs, "batch_size": batch,
        "strategies": {s: {"test_acc": _stats(test[s]), "val_acc": _stats(val[s]),
                           "seconds": statistics.fmean(seconds[s])} for s in test},
        "best": best,
        "advisor": {"pick": pick, "picks": picks, "gap_points": 100 * (means[best] - means[pick]),
                    "within_1_point": 100 * (means[best] - means[pick]) <= 1.0, "per_seed": advice},
        "lecture": {"cell": [advice[0]["size"], advice[0]["similarity"]],
                    "advice": LECTURE[(advice[0]["size"], advice[0]["similarity"])][0],
                    "strategy": lecture, "gap_points": 100 * (means[best] - means.get(lecture, float("nan")))},
        "probes": probes,
    }


def print_table(cells: list[dict], strategies: list[str]) -> None:
    head = (f"{'target':20}{'gain':>6}" + "".join(f"{s:>11}" for s in strategies)
            + "   best        advisor (gap)     lecture (gap)")
    print(head)
    print("-" * len(head))
    for c in cells:
        accs = {s: c["strategies"][s]["test_acc"]["mean"] for s in strategies}
        name = f"{c['similarity']}-{c['n_train']} (x{len(c['seeds'])})"
        gain = statistics.fmean(a["gain"] for a in c["advisor"]["per_seed"])
        line = f"{name:20}{gain:6.2f}" + "".join(f"{100 * accs[s]:11.1f}" for s in strategies)
        adv, lec = c["advisor"], c["lecture"]
        flag = "  <- table wrong here" if lec["gap_points"] > 1.0 else ""
        print(f"{line}   {c['best']:11} {adv['pick']:11} {adv['gap_points']:4.1f}   {lec['strategy']:11} "
              f"{lec['gap_points']:4.1f}{flag}")


def plot(cells: list[dict], strategies: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=False)
    width = 0.8 / len(strategies)
    colors = plt.get_cmap("tab10").colors
    for ax, similarity in zip(axes, ("similar", "different")):
        mine = [c for c in cells if c["similarity"] == similarity]
        for i, s in enumerate(strategies):
            xs = [j + (i - (len(strategies) - 1) / 2) * width for j in range(len(mine))]
            means = [100 * c["strategies"][s]["test_acc"]["mean"] for c in mine]
            sds = [100 * c["strategies"][s]["test_acc"]["sd"] for c in mine]
            ax.bar(xs, means, width, yerr=sds, color=colors[i % 10], label=s, capsize=2)
            for x, m, c in zip(xs, means, mine):
                if c["advisor"]["pick"] == s:
                    ax.plot(x, m + 2.5, marker="v", color="black", markersize=7)
                if c["lecture"]["strategy"] == s:
                    ax.plot(x, m + 5.5, marker="s", color="white", markeredgecolor="black", markersize=6)
        ax.set_xticks(range(len(mine)), [f"{c['n_train']} examples" for c in mine])
        ax.set_title(f"{'similar to' if similarity == 'similar' else 'very different from'} the source")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].plot([], [], "v", color="black", label="advisor's pick")
    axes[0].plot([], [], "s", color="white", markeredgecolor="black", label="lecture's table")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Transfer from a resnet trained on mnist1d: test accuracy per strategy (mean, sd over subsets)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: smaller source, two sizes, one subset")
    parser.add_argument("--holdout", action="store_true", help="150 and 1500 examples, subsets not used to tune")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick and args.holdout:
        parser.error("--quick and --holdout: choose one")
    torch.set_num_threads(args.threads)
    source_cfg, sizes = (QUICK_SOURCE, QUICK_SIZES) if args.quick else (SOURCE, HOLDOUT_SIZES if args.holdout else SIZES)
    mode = "quick" if args.quick else "holdout" if args.holdout else "full"
    example = _example()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "transfer.db")
        runs_dir = Path(tmp) / "runs"
        hp = Config(**source_cfg, monitor_every=0)
        result = fit(load_task(hp), hp, store=store, quiet=True, runs_dir=runs_dir)
        source = load_source(result.run_id, store=store)
        print(f"source: {hp.model} width {hp.width}, {hp.epochs} epochs on mnist1d: test acc {result.test['acc']:.4f} "
              f"({result.seconds:.0f}s)", flush=True)
        strategies = default_strategies(source.model)
        cells = []
        for n, (seeds, epochs, batch) in sizes.items():
            for different in (False, True):
                t0 = time.perf_counter()
                cells.append(run_cell(source, example, n, different, seeds, epochs, batch, store, runs_dir))
                c = cells[-1]
                print(f"  {c['similarity']}-{n}: best {c['best']}, advisor {c['advisor']['pick']} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
        store.close()
    total = time.perf_counter() - started
    print()
    print_table(cells, strategies)
    wrong = [f"{c['similarity']}-{c['n_train']}" for c in cells if c["lecture"]["gap_points"] > 1.0]
    misses = [f"{c['similarity']}-{c['n_train']}" for c in cells if not c["advisor"]["within_1_point"]]
    print(f"\nadvisor within 1 point of the best in {len(cells) - len(misses)}/{len(cells)} cells"
          + (f" (missed: {', '.join(misses)})" if misses else ""))
    print(f"lecture's table more than 1 point below the best in: {', '.join(wrong) or 'no cell'}")
    print(f"total {total:.0f}s")
    out = {
        "benchmark": "transfer", "mode": mode, "command": "python benchmarks/transfer.py"
        + {"full": "", "quick": " --quick", "holdout": " --holdout"}[mode],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": args.threads, "python": sys.version.split()[0]},
        "source": {**source_cfg, "test_acc": result.test["acc"], "train_examples": len(load_task(hp).train)},
        "strategies": strategies, "cells": cells,
        "summary": {"advisor_within_1_point": len(cells) - len(misses), "cells": len(cells), "advisor_misses": misses,
                    "lecture_wrong": wrong, "seconds": total},
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / {"full": "transfer.json", "quick": "transfer_quick.json", "holdout": "transfer_holdout.json"}[mode]
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    if mode == "full":
        plot(cells, strategies, RESULTS / "transfer.png")
        print(f"wrote {RESULTS / 'transfer.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
