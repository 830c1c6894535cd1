"""Hyperparameter search evidence (issue 4), on mnist1d with a small mlp (Adam, cosine schedule).

1. Random versus grid at equal budget (Bergstra & Bengio 2012). The space is the issue's own example
   range, lr in [1e-4, 1e-1], where lr matters a lot, plus label_smoothing in [0, 0.1], which barely
   matters. Grid: logspace(1e-4, 1e-1, k) x k values of label_smoothing; random: k*k draws of
   loguniform(1e-4, 1e-1) x uniform(0, 0.1), 6 epochs a trial. Per seed (sampler and training): distinct
   lr values tried and the best validation accuracy. Budgets 9 (3x3) and 16 (4x4), 5 seeds.
2. Successive halving against the full grid: the same 27-point grid (lr logspace(1e-3, 1e-1, 9) x
   width grid(32, 128, 512): both matter), 27 epochs a trial, a validation split of 25% (1,000 samples,
   so that 0.5 points is 5 samples, not 2), once in full and once with --prune sha (Optuna's
   SuccessiveHalvingPruner, min_resource 1 epoch, reduction factor 3), 5 seeds (training and the
   grid's order). Reports the best validation accuracy of each and the epochs each trained. Target:
   within 0.5 points using at most a third of the grid's epochs.
3. Throughput: trials per minute with 1 worker (in-process, torch threads = cores, the issue's rule
   cores // workers) and 2 worker processes (threads = cores // 2 each), same trials (mlp width 128,
   6 epochs). Steady state comes from the store's run timestamps: trials finished while every worker was
   busy (from the last worker's first trial start to the first worker's last trial end), over that window;
   it leaves out the workers' start-up (importing torch in a fresh process). Wall time including start-up
   is reported too. Also 1 worker with 1 thread: the same compute per trial as each of the 2 workers.
   The cores-threads case runs once (it is slow); then 2 workers and 1 worker with 1 thread alternate,
   3 times, so that a change in the machine's load hits both alike. A probe before and after measures
   how many cores' worth two CPU-bound processes actually get (the machine is shared).

    python benchmarks/search.py [--quick] [--only grid_vs_random|sha|throughput]

Writes benchmarks/results/search.json (search_quick.json with --quick). Timings on a shared machine are
noisy; ratios measured in one process are the figures to trust.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from trainlab import Config
from trainlab.search import cpu_cores, run_search, threads_per_worker
from trainlab.store import Store

RESULTS = Path(__file__).parent / "results"


def base(epochs: int, seed: int) -> Config:
    return Config(model="mlp", width=64, epochs=epochs, batch_size=128, monitor_every=0, seed=seed)


def grid_vs_random(tmp: Path, budgets: list[int], seeds: list[int], epochs: int) -> dict:
    out = {"budgets": {}}
    for k in budgets:
        n = k * k
        ls_grid = ", ".join(f"{0.1 * i / (k - 1):.4g}" for i in range(k))
        spaces = {"grid": {"lr": f"logspace(1e-4, 1e-1, {k})", "label_smoothing": f"grid({ls_grid})"},
                  "random": {"lr": "loguniform(1e-4, 1e-1)", "label_smoothing": "uniform(0.0, 0.1)"}}
        rows = {"grid": [], "random": []}
        for seed in seeds:
            for strategy in ("grid", "random"):
                db = tmp / f"gvr-{k}-{strategy}-{seed}.db"
                r = run_search(base(epochs, seed), spaces[strategy], strategy=strategy, trials=n, seed=seed,
                               db=str(db), checkpoints=False, quiet=True, study=f"{strategy}-{k}-{seed}")
                lrs = {round(row["params"]["lr"], 12) for row in r.leaderboard}
                rows[strategy].append({"seed": seed, "trials": len(r.leaderboard), "distinct_lr": len(lrs),
                                       "distinct_label_smoothing": len({row["params"]["label_smoothing"]
                                                                        for row in r.leaderboard}),
                                       "best_val_acc": r.best["value"], "best_lr": r.best["params"]["lr"]})
                print(f"  budget {n} seed {seed} {strategy:6}: {len(lrs)} distinct lr, best val/acc "
                      f"{r.best['value']:.4f} at lr {r.best['params']['lr']:.3g}", flush=True)
        summary = {}
        for strategy, rs in rows.items():
            accs = [x["best_val_acc"] for x in rs]
            summary[strategy] = {"distinct_lr_mean": statistics.mean(x["distinct_lr"] for x in rs),
                                 "best_val_acc_mean": statistics.mean(accs),
                                 "best_val_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                                 "best_val_acc_min": min(accs), "best_val_acc_max": max(accs)}
        wins = sum(r["best_val_acc"] > g["best_val_acc"] for r, g in zip(rows["random"], rows["grid"]))
        out["budgets"][str(n)] = {"grid_space": spaces["grid"], "random_space": spaces["random"], "per_seed": rows,
                                  "summary": summary, "random_better_seeds": wins, "seeds": len(seeds)}
    return out


SHA_VAL_FRACTION = 0.25


def sha_vs_grid(tmp: Path, seeds: list[int], epochs: int, lr_points: int) -> dict:
    space = {"lr": f"logspace(1e-3, 1e-1, {lr_points})", "width": "grid(32, 128, 512)"}
    rows = []
    for seed in seeds:
        got = {}
        for prune in ("none", "sha"):
            db = tmp / f"sha-{prune}-{seed}.db"
            t0 = time.perf_counter()
            hp = base(epochs, seed).model_copy(update={"val_fraction": SHA_VAL_FRACTION})
            r = run_search(hp, space, strategy="grid", prune=prune, seed=seed, db=str(db),
                           checkpoints=False, quiet=True, study=f"{prune}-{seed}")
            runs = Store(str(db)).runs(study=r.study)
            got[prune] = {"best_val_acc": r.best["value"], "best_params": r.best["params"],
                          "epochs": sum(x["epochs"] for x in runs), "trials": len(runs),
                          "pruned": sum(x["status"] == "pruned" for x in runs),
                          "seconds": time.perf_counter() - t0}
        full, sha = got["none"], got["sha"]
        row = {"seed": seed, "grid": full, "sha": sha,
               "gap_points": 100 * (full["best_val_acc"] - sha["best_val_acc"]),
               "epoch_fraction": sha["epochs"] / full["epochs"]}
        rows.append(row)
        print(f"  seed {seed}: grid best {full['best_val_acc']:.4f} in {full['epochs']} epochs; sha best "
              f"{sha['best_val_acc']:.4f} in {sha['epochs']} epochs ({row['epoch_fraction']:.2f} of the grid's, "
              f"{sha['pruned']} of {sha['trials']} pruned); gap {row['gap_points']:+.2f} points", flush=True)
    for r in rows:
        r["met"] = r["gap_points"] <= 0.5 and r["epoch_fraction"] <= 1 / 3
    return {"space": space, "epochs_per_trial": epochs, "val_fraction": SHA_VAL_FRACTION, "per_seed": rows,
            "mean_gap_points": statistics.mean(r["gap_points"] for r in rows),
            "max_gap_points": max(r["gap_points"] for r in rows),
            "mean_epoch_fraction": statistics.mean(r["epoch_fraction"] for r in rows),
            "max_epoch_fraction": max(r["epoch_fraction"] for r in rows),
            "target": "gap <= 0.5 points with <= 1/3 of the grid's epochs",
            "seeds_meeting_target": sum(r["met"] for r in rows), "seeds": len(rows),
            "met": all(r["met"] for r in rows),
            "met_on_average": statistics.mean(r["gap_points"] for r in rows) <= 0.5
            and statistics.mean(r["epoch_fraction"] for r in rows) <= 1 / 3}


def _throughput_once(tmp: Path, workers: int, trials: int, epochs: int, tag: str, threads: int) -> dict:
    """One search; steady state = trials finished while every worker was busy, over that window."""
    db = tmp / f"tp-{tag}.db"
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    hp = base(epochs, 0).model_copy(update={"width": 128, "batch_size": 64})
    r = run_search(hp, {"lr": "loguniform(1e-3, 1e-1)", "label_smoothing": "uniform(0.0, 0.1)"},
                   strategy="random", trials=trials, workers=workers, db=str(db), checkpoints=False, quiet=True,
                   study=tag)
    wall = time.perf_counter() - t0
    runs = {x["id"]: x for x in Store(str(db)).runs(study=r.study)}
    spans: dict[str, list] = {}
    for row in r.leaderboard:
        run = runs[row["run"]]
        spans.setdefault(row["worker"], []).append((datetime.fromisoformat(run["created"]),
                                                    datetime.fromisoformat(run["finished"])))
    start = max(min(a for a, _ in v) for v in spans.values())  # the last worker's first trial starts
    end = min(max(b for _, b in v) for v in spans.values())     # the first worker's last trial ends
    done = sum(start <= b <= end for v in spans.values() for _, b in v)
    steady = (end - start).total_seconds()
    return {"workers": workers, "threads_per_worker": threads if workers == 1 else threads_per_worker(workers),
            "trials": len(runs), "trials_per_worker": {k: len(v) for k, v in spans.items()}, "wall_s": wall,
            "steady_s": steady, "steady_trials": done,
            "trials_per_min_steady": 60 * done / steady if steady > 0 and done else float("nan"),
            "trials_per_min_wall": 60 * len(runs) / wall}


def _spin(_: int) -> float:
    t = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - t


def parallel_capacity() -> float:
    """How many cores this machine gives us right now: 2 x (time of one CPU-bound Python loop alone) /
    (time of the same loop with two running at once). 2.0 on an idle 2-core machine, 1.0 when the other
    engineers' jobs leave one core's worth."""
    import multiprocessing

    solo = _spin(0)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pair = pool.map(_spin, [0, 1])
    return 2 * solo / max(pair)


def throughput(tmp: Path, trials: int, epochs: int, repeats: int) -> dict:
    cores = cpu_cores()
    capacity = [parallel_capacity()]
    print(f"  parallel capacity now: {capacity[0]:.2f} cores", flush=True)
    default_threads = torch.get_num_threads()
    rows = []
    plan = [(1, cores, 0)] + [(w, t, i) for i in range(repeats) for w, t in ((2, None), (1, 1))]
    for workers, threads, i in plan:  # the slow cores-threads case once; the pair that matters alternates
        tag = f"w{workers}-t{threads or 'split'}-{i}"
        row = _throughput_once(tmp, workers, trials, epochs, tag, threads or default_threads)
        rows.append(row)
        print(f"  {workers} worker(s), {row['threads_per_worker']} thread(s) each: {row['trials_per_min_steady']:.1f} "
              f"trials/min steady, {row['trials_per_min_wall']:.1f} with start-up ({row['wall_s']:.0f} s)", flush=True)
    torch.set_num_threads(default_threads)
    capacity.append(parallel_capacity())
    print(f"  parallel capacity now: {capacity[1]:.2f} cores", flush=True)

    def mean(workers, threads, key):
        return statistics.mean(r[key] for r in rows if r["workers"] == workers and r["threads_per_worker"] == threads)

    one, one_t1, two = (1, cores), (1, 1), (2, max(1, cores // 2))
    return {"cores": cores, "parallel_capacity_before_after": capacity, "trials": trials, "epochs_per_trial": epochs, "repeats": repeats, "runs": rows,
            "ratio_steady_2w_vs_1w": mean(*two, "trials_per_min_steady") / mean(*one, "trials_per_min_steady"),
            "ratio_wall_2w_vs_1w": mean(*two, "trials_per_min_wall") / mean(*one, "trials_per_min_wall"),
            "ratio_steady_2w_vs_1w_1thread": mean(*two, "trials_per_min_steady") / mean(*one_t1,
                                                                                       "trials_per_min_steady"),
            "target": "2 workers >= 1.6x the trials per minute of 1 worker"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: fewer seeds, smaller grids")
    parser.add_argument("--only", choices=("grid_vs_random", "sha", "throughput"))
    args = parser.parse_args()
    if args.quick:
        cfg = dict(budgets=[3], seeds=[0, 1], gvr_epochs=2, sha_seeds=[0], sha_epochs=9, lr_points=3,
                   tp_trials=4, tp_epochs=2, tp_repeats=1)
    else:
        cfg = dict(budgets=[3, 4], seeds=[0, 1, 2, 3, 4], gvr_epochs=6, sha_seeds=[0, 1, 2, 3, 4], sha_epochs=27,
                   lr_points=9, tp_trials=24, tp_epochs=6, tp_repeats=3)
    out_path = RESULTS / ("search_quick.json" if args.quick else "search.json")
    result = json.loads(out_path.read_text()) if (args.only and out_path.exists()) else {}
    result.update({"machine": f"{platform.node()}: {cpu_cores()} cores, {platform.processor() or platform.machine()}",
                   "load_average_at_start": os.getloadavg(), "quick": args.quick, "config": cfg,
                   "date": datetime.now().isoformat(timespec="seconds")})
    started = time.perf_counter()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # parts 1 and 2 measure accuracy and epochs: one thread is fastest on tiny models
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.only in (None, "grid_vs_random"):
            print("1. random vs grid at equal budget (mnist1d mlp, lr matters, label_smoothing barely)", flush=True)
            result["grid_vs_random"] = grid_vs_random(tmp, cfg["budgets"], cfg["seeds"], cfg["gvr_epochs"])
        if args.only in (None, "sha"):
            print("2. successive halving vs the full grid", flush=True)
            load = os.getloadavg()[0]
            result["sha"] = sha_vs_grid(tmp, cfg["sha_seeds"], cfg["sha_epochs"], cfg["lr_points"])
            result["sha"]["load_average_start_end"] = [load, os.getloadavg()[0]]
        if args.only in (None, "throughput"):
            print("3. throughput: 1 worker vs 2 worker processes", flush=True)
            torch.set_num_threads(default_threads)
            load = os.getloadavg()[0]
            result["throughput"] = throughput(tmp, cfg["tp_trials"], cfg["tp_epochs"], cfg["tp_repeats"])
            result["throughput"]["load_average_start_end"] = [load, os.getloadavg()[0]]
    result["load_average_at_end"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - started

    print()
    if "grid_vs_random" in result:
        print(f"{'budget':>6}  {'strategy':8}  {'distinct lr':>11}  {'best val/acc (mean ± sd, min-max)':>34}")
        for n, b in result["grid_vs_random"]["budgets"].items():
            for strategy, s in b["summary"].items():
                print(f"{n:>6}  {strategy:8}  {s['distinct_lr_mean']:>11.1f}  {s['best_val_acc_mean']:.4f} ± "
                      f"{s['best_val_acc_std']:.4f} ({s['best_val_acc_min']:.4f}-{s['best_val_acc_max']:.4f})")
            print(f"{'':>6}  random better on {b['random_better_seeds']} of {b['seeds']} seeds")
    if "sha" in result:
        s = result["sha"]
        print(f"\nsuccessive halving ({s['epochs_per_trial']} epochs a trial): gap to the full grid's best "
              f"{s['mean_gap_points']:+.2f} points on average (max {s['max_gap_points']:+.2f}), epochs "
              f"{s['mean_epoch_fraction']:.2f} of the grid's on average (max {s['max_epoch_fraction']:.2f}); "
              f"target ({s['target']}) met on {s['seeds_meeting_target']} of {s['seeds']} seeds, "
              f"{'met' if s['met_on_average'] else 'not met'} on average")
    if "throughput" in result:
        t = result["throughput"]
        print(f"\nthroughput: 2 workers / 1 worker = {t['ratio_steady_2w_vs_1w']:.2f}x steady state, "
              f"{t['ratio_wall_2w_vs_1w']:.2f}x with start-up; vs 1 worker with 1 thread "
              f"{t['ratio_steady_2w_vs_1w_1thread']:.2f}x (target {t['target']}); load average "
              + (f"{t['load_average_start_end'][0]:.1f} at start, {t['load_average_start_end'][1]:.1f} at end; "
                 if "load_average_start_end" in t else "not recorded; ") +
              f"two CPU-bound processes got {t['parallel_capacity_before_after'][0]:.2f} and "
              f"{t['parallel_capacity_before_after'][1]:.2f} cores' worth (before, after)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out_path} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
