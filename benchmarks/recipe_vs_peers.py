"""The recipe against its peers, with the same wall-clock budget: test accuracy and wall time over seeds.

For each pair (task/model): mnist1d/resnet, mnist1d/mlp, mnist1d-shuffle/mlp, digits/cnn, and each seed:
  recipe   `run_recipe` (the 7 steps, its final model; with 2 workers an ensemble of one member per fold)
  recipe-fixed  the same with the final schedule it had before it placed the decay (the longest cosine that fits)
  default  the task's default config (`trainlab train --set task=... --set model=...`), cut at the budget
  default-cores  the same with a torch thread per core (`--threads <cores>`; the others run one per process)
  default-fitted  the same with `--set minutes=<budget>`: its schedule fitted to the time after epoch 1
  tpe      Optuna TPE over lr (log-uniform 1e-4..1e-1) x weight decay (log-uniform 1e-6..1e-2), 10-epoch
           cosine trials with median pruning, 2 workers, as many trials as the budget allows; the best
           trial by validation accuracy is evaluated on test
Every method chooses on validation only and sees the test split once. Each run gets a fresh store.
Per seed the methods run one after another in a rotated order (load drifts over a long run); the JSON is
written after every run. Prints mean and spread of test accuracy and wall time side by side; writes
benchmarks/results/recipe_vs_peers.json (recipe_vs_peers_quick.json with --quick).

    python benchmarks/recipe_vs_peers.py                    # 5 min x 4 pairs x 3 methods x 3 seeds: 3 hours
    python benchmarks/recipe_vs_peers.py --quick            # 0.5 min budget, 1 seed (a smoke run)
    python benchmarks/recipe_vs_peers.py --budget 2 --pairs mnist1d/resnet --seeds 1
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
from pathlib import Path

import torch

from trainlab import Config, Store, fit, load_task
from trainlab.ensemble import evaluate_ensemble, members_from_runs
from trainlab.recipe import run_recipe
from trainlab.search import cpu_cores, run_search, threads_per_worker
from trainlab.train.callbacks import Deadline

RESULTS = Path(__file__).parent / "results"
PAIRS = ("mnist1d/resnet", "mnist1d/mlp", "mnist1d-shuffle/mlp", "digits/cnn")
METHODS = ("recipe", "recipe-fixed", "default", "tpe")
TPE_SPACE = {"lr": "loguniform(1e-4, 1e-1)", "weight_decay": "loguniform(1e-6, 1e-2)"}
TPE_EPOCHS = 10


def run_recipe_method(hp: Config, budget_min: float, workers: int, tmp: Path, final_schedule: str = "placed") -> dict:
    r = run_recipe(hp, budget_minutes=budget_min, workers=workers, out=tmp / "report", db=tmp / "r.db",
                   quiet=True, runs_dir=str(tmp / "runs"), final_schedule=final_schedule)
    if r.final is None:
        return {"status": r.status, "reason": r.reason}
    return {"status": r.status, "test_acc": r.final["test_acc"], "val_acc": r.final["val_acc"],
            "config": {k: r.final["config"][k] for k in ("lr", "weight_decay", "width", "dropout", "epochs")},
            "ensemble": r.final["ensemble"], "members": len(r.final["members"]),
            "steps": {s.key: s.verdict for s in r.steps}, "messages": {s.key: s.message for s in r.steps},
            "seconds_per_step": {s.key: round(s.seconds, 1) for s in r.steps}, "ran": r.final.get("ran"),
            "decay": (r.final.get("decay") or {}).get("reason"), "peak": (r.final.get("peak") or {}).get("reason"),
            "final_message": next((s.message for s in r.steps if s.key == "final"), None)}


def run_recipe_fixed(hp: Config, budget_min: float, workers: int, tmp: Path) -> dict:
    """The recipe with its earlier final schedule: the longest cosine that fits (the baseline for the placed decay)."""
    return run_recipe_method(hp, budget_min, workers, tmp, final_schedule="fixed")


def run_default(hp: Config, budget_min: float, workers: int, tmp: Path) -> dict:
    deadline = Deadline(time.time() + 60 * budget_min)
    res = fit(load_task(hp), hp, store=Store(tmp / "d.db"), quiet=True, runs_dir=tmp / "runs", callbacks=[deadline])
    return {"status": res.status, "test_acc": res.test["acc"] if res.test else None, "val_acc": res.best_metric,
            "epochs": res.epochs, "cut_at_budget": deadline.fired}


def run_default_cores(hp: Config, budget_min: float, workers: int, tmp: Path) -> dict:
    """The default config with every core's thread (`trainlab train --threads <cores>`), cut at the budget."""
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_cores())
    try:
        return {**run_default(hp, budget_min, workers, tmp), "threads": cpu_cores()}
    finally:
        torch.set_num_threads(before)


def run_default_fitted(hp: Config, budget_min: float, workers: int, tmp: Path) -> dict:
    """The task's default config with `minutes` = the budget: its schedule fitted to the time after epoch 1."""
    fitted = hp.model_copy(update={"minutes": budget_min})
    res = fit(load_task(fitted), fitted, store=(store := Store(tmp / "d.db")), quiet=True, runs_dir=tmp / "runs")
    fit_ = (store.run(res.run_id).get("summary") or {}).get("fitted") or {}
    return {"status": res.status, "test_acc": res.test["acc"] if res.test else None, "val_acc": res.best_metric,
            "epochs": res.epochs, "reason": res.reason, "fitted_epochs": fit_.get("epochs")}


def run_tpe(hp: Config, budget_min: float, workers: int, tmp: Path) -> dict:
    db = tmp / "t.db"
    res = run_search(hp, TPE_SPACE, strategy="tpe", trials=100000, workers=workers, study="tpe", db=db,
                     prune="median", epochs=TPE_EPOCHS, runs_dir=tmp / "runs", quiet=True,
                     deadline=time.time() + 60 * budget_min)
    ranked = [r for r in res.leaderboard if r["value"] is not None and r["run"] is not None]
    store = Store(db)
    best = next((r for r in ranked if store.run(r["run"]).get("checkpoint")), None)
    if best is None:
        return {"status": "no trial", "trials": len(res.leaderboard)}
    test = evaluate_ensemble(members_from_runs(store, [best["run"]]), split="test")
    return {"status": "completed", "test_acc": test.ensemble_acc, "val_acc": best["value"], "trials": len(res.leaderboard),
            "best_params": best["params"], "best_status": best["status"]}


RUNNERS = {"recipe": run_recipe_method, "recipe-fixed": run_recipe_fixed, "default": run_default,
           "default-cores": run_default_cores,
           "default-fitted": run_default_fitted, "tpe": run_tpe}


def _stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _write(path: Path, budget: float, seeds: list[int], workers: int, machine: dict, pairs: list[str],
           methods: list[str], rows: list[dict], final: bool) -> None:
    """The JSON after every run (a long benchmark stopped half-way keeps what it measured); the table at the end."""
    summary = []
    if final:
        print(f"\n{'pair':20} {'method':8} {'test acc mean +- std':>22} {'wall s mean +- std':>20}  n")
    for pair in pairs:
        for method in methods:
            sel = [r for r in rows if r["pair"] == pair and r["method"] == method]
            if not sel:
                continue
            acc_m, acc_s = _stats([r["test_acc"] for r in sel if r.get("test_acc") is not None])
            sec_m, sec_s = _stats([r["seconds"] for r in sel])
            summary.append({"pair": pair, "method": method, "test_acc_mean": acc_m, "test_acc_std": acc_s,
                            "seconds_mean": sec_m, "seconds_std": sec_s, "n": len(sel)})
            if final:
                print(f"{pair:20} {method:8} {acc_m:12.4f} +- {acc_s:.4f} {sec_m:10.1f} +- {sec_s:5.1f}  {len(sel)}")
    machine = {**machine, "loadavg_end": os.getloadavg(), "complete": final}
    path.write_text(json.dumps({"budget_min": budget, "seeds": seeds, "workers": workers, "machine": machine,
                                "summary": summary, "rows": rows}, indent=2, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=None, help="minutes per run (default 5; --quick 0.5)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per pair and method (default 3; --quick 1)")
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated task/model (default: {','.join(PAIRS)})")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="0.5 min budget, 1 seed: a smoke run")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/recipe_vs_peers[_quick].json)")
    args = parser.parse_args()
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 5.0)
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 3)))
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    torch.set_num_threads(threads_per_worker(args.workers))
    machine = {"cores": cpu_cores(), "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "loadavg_start": os.getloadavg()}
    print(f"budget {budget:g} min per run; seeds {seeds}; pairs {pairs}; methods {methods}; {args.workers} workers; "
          f"{machine['cores']} cores, load average {machine['loadavg_start'][0]:.1f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = Path(args.out) if args.out else RESULTS / ("recipe_vs_peers_quick.json" if args.quick else "recipe_vs_peers.json")
    rows: list[dict] = []
    for pair in pairs:
        task, model = pair.split("/")
        for seed in seeds:
            # methods side by side per seed, their order rotated: a machine whose load drifts hits them alike
            for method in methods[seed % len(methods):] + methods[:seed % len(methods)]:
                hp = Config(task=task, model=model, seed=seed)
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.time()
                    out = RUNNERS[method](hp, budget, args.workers, Path(tmp))
                    seconds = time.time() - t0
                row = {"pair": pair, "method": method, "seed": seed, "seconds": seconds,
                       "loadavg": os.getloadavg()[0], **out}
                rows.append(row)
                acc = f"{row['test_acc']:.4f}" if row.get("test_acc") is not None else "-"
                print(f"{pair:20} {method:8} seed {seed}: test {acc}  val {row.get('val_acc') or float('nan'):.4f}  "
                      f"{seconds:6.1f} s  {row.get('status')}", flush=True)
                _write(path, budget, seeds, args.workers, machine, pairs, methods, rows, final=False)
    _write(path, budget, seeds, args.workers, machine, pairs, methods, rows, final=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
