"""Ensembles and weight averaging on mnist1d, with the mlp and the resnet, over 3 replicates (seeds).

Per model and replicate r (seeds 5r .. 5r+4), all with Adam, batch 128, the same epochs E:
- independent: 5 members, cosine schedule, `ema: 0.999` with warm-up; their ensemble (averaged
  probabilities of the best checkpoints) against the members' mean;
- snapshot: one run with `cyclic_cosine`, 5 cycles over the same E epochs, `snapshots: true`; the
  ensemble of its 5 snapshots against a single model trained E epochs with plain cosine (member 1 of
  the replicate: same seed, same epochs) and against its own last snapshot;
- EMA: at the end of each member's training, the averaged weights against the raw ones (last.pt);
  and the same for one run per replicate with a constant learning rate (no annealing to do the averaging).
Every accuracy is on the 1000-example test split. One torch thread; runs in a temporary store.

    python benchmarks/ensemble.py [--quick]

Writes benchmarks/results/ensemble.json (ensemble_quick.json with --quick) and, for the full run,
benchmarks/results/ensemble_summary.png and ensemble_curves.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainlab import Config, Store, fit, load_task
from trainlab.ensemble import evaluate_ensemble, members_from_runs, members_from_snapshots, train_members
from trainlab.train import evaluate, load_checkpoint

RESULTS = Path(__file__).parent / "results"
MEMBERS = 5
CYCLES = 5
MODELS = {  # model -> (width, epochs); epochs a multiple of CYCLES so the cycles divide the run exactly
    "mlp": (100, 20),
    "resnet": (8, 10),
}
QUICK = {"mlp": (100, 5), "resnet": (8, 5)}


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def _last_weights_acc(run_dir: Path, task) -> tuple[float, float | None]:
    """Test accuracy of the raw weights and of the EMA weights at the end of training (last.pt)."""
    last = load_checkpoint(run_dir / "last.pt")
    model = task.build_model()
    model.load_state_dict(last["model"])
    raw = evaluate(model, task.test)["acc"]
    averaged = (last.get("callbacks") or {}).get("EMA")
    if not averaged:
        return raw, None
    model.load_state_dict(averaged["model"])
    return raw, evaluate(model, task.test)["acc"]


def replicate(model: str, width: int, epochs: int, r: int, store: Store, runs_dir: Path) -> dict:
    base = Config(model=model, width=width, batch_size=128, epochs=epochs, lr=3e-3, seed=MEMBERS * r,
                  monitor_every=0, ema=0.999, ema_warmup=True)
    task = load_task(base)
    t0 = time.perf_counter()
    results, _ = train_members(base, MEMBERS, store, quiet=True, runs_dir=runs_dir, study=f"{model}-r{r}")
    t_members = time.perf_counter() - t0
    ids = [res.run_id for res in results]
    members = members_from_runs(store, ids)
    by_size = [evaluate_ensemble(members[:m], "test", tasks=[task] * m).ensemble_acc for m in range(1, MEMBERS + 1)]
    independent = evaluate_ensemble(members, "test", tasks=[task] * MEMBERS)
    ema = [_last_weights_acc(runs_dir / f"run-{i}", task) for i in ids]

    snap_hp = base.model_copy(update={"schedule": "cyclic_cosine", "cycles": CYCLES, "snapshots": True, "ema": None,
                                      "ema_warmup": False})
    t0 = time.perf_counter()
    snap_run = fit(task, snap_hp, store=store, quiet=True, runs_dir=runs_dir, name=f"{model}-snapshots-r{r}")
    t_snap = time.perf_counter() - t0
    snaps = members_from_snapshots(store, snap_run.run_id)
    snapshot = evaluate_ensemble(snaps, "test", tasks=[task] * len(snaps))
    snap_by_size = [evaluate_ensemble(snaps[-m:], "test", tasks=[task] * m).ensemble_acc
                    for m in range(1, len(snaps) + 1)]
    const_hp = base.model_copy(update={"schedule": "constant"})
    const_run = fit(task, const_hp, store=store, quiet=True, runs_dir=runs_dir, name=f"{model}-constant-r{r}")
    ema_constant = _last_weights_acc(runs_dir / f"run-{const_run.run_id}", task)
    curves = {"cosine": {k: results[0].history[k] for k in ("val/acc", "val/acc_ema")},
              "cyclic": {"val/acc": snap_run.history["val/acc"],
                         "snapshot_epochs": [(s["step"] + 1) / math.ceil(len(task.train) / 128) for s in
                                             store.run(snap_run.run_id)["summary"]["snapshots"]]}}
    return {
        "replicate": r, "seeds": [base.seed + i for i in range(MEMBERS)], "member_runs": ids,
        "independent": {"member_acc": [m["acc"] for m in independent.members],
                        "mean_member_acc": independent.mean_member_acc, "ensemble_acc": independent.ensemble_acc,
                        "ensemble_nll": independent.ensemble_loss,
                        "member_nll": [m["loss"] for m in independent.members], "acc_by_size": by_size},
        "snapshot": {"snapshot_acc": [m["acc"] for m in snapshot.members], "ensemble_acc": snapshot.ensemble_acc,
                     "ensemble_nll": snapshot.ensemble_loss, "last_snapshot_acc": snapshot.members[-1]["acc"],
                     "single_cosine_acc": independent.members[0]["acc"],
                     "single_cosine_nll": independent.members[0]["loss"],
                     "acc_by_last_m": snap_by_size, "steps": [s["step"] for s in
                                                            store.run(snap_run.run_id)["summary"]["snapshots"]]},
        "ema": {"raw_last_acc": [a for a, _ in ema], "ema_last_acc": [b for _, b in ema],
                "constant_lr_raw_last_acc": ema_constant[0], "constant_lr_ema_last_acc": ema_constant[1]},
        "seconds": {"members": t_members, "snapshot_run": t_snap},
        "curves": curves,
    }


def summarize(reps: list[dict]) -> dict:
    ind_gain = [x["independent"]["ensemble_acc"] - x["independent"]["mean_member_acc"] for x in reps]
    snap_gain = [x["snapshot"]["ensemble_acc"] - x["snapshot"]["single_cosine_acc"] for x in reps]
    ema_diff = [b - a for x in reps for a, b in zip(x["ema"]["raw_last_acc"], x["ema"]["ema_last_acc"])]
    return {
        "independent_mean_member": _mean_sd([x["independent"]["mean_member_acc"] for x in reps]),
        "independent_ensemble": _mean_sd([x["independent"]["ensemble_acc"] for x in reps]),
        "independent_gain": _mean_sd(ind_gain),
        "single_cosine": _mean_sd([x["snapshot"]["single_cosine_acc"] for x in reps]),
        "last_snapshot": _mean_sd([x["snapshot"]["last_snapshot_acc"] for x in reps]),
        "snapshot_ensemble": _mean_sd([x["snapshot"]["ensemble_acc"] for x in reps]),
        "snapshot_gain_vs_cosine": _mean_sd(snap_gain),
        "raw_last": _mean_sd([a for x in reps for a in x["ema"]["raw_last_acc"]]),
        "ema_last": _mean_sd([b for x in reps for b in x["ema"]["ema_last_acc"]]),
        "ema_minus_raw": _mean_sd(ema_diff),
        "ema_better_count": sum(d > 0 for d in ema_diff), "ema_worse_count": sum(d < 0 for d in ema_diff),
        "constant_raw_last": _mean_sd([x["ema"]["constant_lr_raw_last_acc"] for x in reps]),
        "constant_ema_last": _mean_sd([x["ema"]["constant_lr_ema_last_acc"] for x in reps]),
        "constant_ema_minus_raw": _mean_sd([x["ema"]["constant_lr_ema_last_acc"] - x["ema"]["constant_lr_raw_last_acc"]
                                            for x in reps]),
    }


def _fmt(s: dict) -> str:
    return f"{s['mean']:.4f} ± {s['sd']:.4f}"


def print_table(out: dict) -> None:
    print(f"mnist1d test accuracy, mean ± sd over {out['replicates']} replicates "
          f"({MEMBERS} members / {CYCLES} snapshots each; EMA rows over all members)")
    rows = [("independent", "single model (members' mean)", "independent_mean_member"),
            ("independent", f"ensemble of {MEMBERS}", "independent_ensemble"),
            ("independent", "gain", "independent_gain"),
            ("snapshot", "single model, cosine, same epochs", "single_cosine"),
            ("snapshot", "last snapshot alone", "last_snapshot"),
            ("snapshot", f"snapshot ensemble of {CYCLES}", "snapshot_ensemble"),
            ("snapshot", "gain over single cosine model", "snapshot_gain_vs_cosine"),
            ("EMA", "raw weights at the end", "raw_last"),
            ("EMA", "EMA weights at the end", "ema_last"),
            ("EMA", "EMA - raw", "ema_minus_raw"),
            ("EMA, const", "raw weights at the end", "constant_raw_last"),
            ("EMA, const", "EMA weights at the end", "constant_ema_last"),
            ("EMA, const", "EMA - raw", "constant_ema_minus_raw")]
    models = list(out["models"])
    print(f"{'':12} {'':36} " + " ".join(f"{m + ' (' + str(out['models'][m]['epochs']) + ' ep)':>22}" for m in models))
    for group, label, key in rows:
        print(f"{group:12} {label:36} " + " ".join(f"{_fmt(out['models'][m]['summary'][key]):>22}" for m in models))
    for m in models:
        s = out["models"][m]["summary"]
        print(f"{m}: EMA better than raw in {s['ema_better_count']} of {len(s['ema_minus_raw']['values'])} "
              f"members, worse in {s['ema_worse_count']}")


def plot(out: dict, path_summary: Path, path_curves: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    models = list(out["models"])
    arms = [("independent", [("members' mean", "independent_mean_member"), (f"ensemble of {MEMBERS}",
                                                                          "independent_ensemble")]),
            ("snapshot (one run)", [("cosine, same epochs", "single_cosine"), ("last snapshot", "last_snapshot"),
                                    (f"ensemble of {CYCLES} snapshots", "snapshot_ensemble")]),
            ("EMA at the end, cosine", [("raw weights", "raw_last"), ("EMA weights", "ema_last")]),
            ("EMA at the end, constant lr", [("raw weights", "constant_raw_last"), ("EMA weights", "constant_ema_last")])]
    fig, axes = plt.subplots(len(models), len(arms), figsize=(17, 3.6 * len(models)), squeeze=False)
    for row, m in enumerate(models):
        s = out["models"][m]["summary"]
        for col, (title, bars) in enumerate(arms):
            ax = axes[row][col]
            for i, (label, key) in enumerate(bars):
                values = s[key]["values"]
                ax.bar(i, s[key]["mean"], color=f"C{i}", alpha=0.6)
                ax.scatter([i] * len(values), values, color="k", s=10, zorder=3)
            ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
            lo = min(v for _, k in bars for v in s[k]["values"])
            hi = max(v for _, k in bars for v in s[k]["values"])
            ax.set_ylim(lo - 0.03, min(1.0, hi + 0.02))
            ax.set_title(f"{m}: {title}", fontsize=10)
            ax.set_ylabel("test accuracy")
    fig.suptitle(f"mnist1d, {out['replicates']} replicates (dots: replicates; EMA: every member)")
    fig.tight_layout()
    fig.savefig(path_summary, dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.6 * len(models)), squeeze=False)
    for row, m in enumerate(models):
        rep = out["models"][m]["replicates"][0]
        ax = axes[row][0]
        ep = range(1, len(rep["curves"]["cosine"]["val/acc"]) + 1)
        ax.plot(ep, rep["curves"]["cosine"]["val/acc"], "o-", ms=3, label="cosine, raw")
        ax.plot(ep, rep["curves"]["cosine"]["val/acc_ema"], "s--", ms=3, label="cosine, EMA")
        ax.plot(ep, rep["curves"]["cyclic"]["val/acc"], "^-", ms=3, label="cyclic cosine (snapshots)")
        ax.set(xlabel="epoch", ylabel="val accuracy", title=f"{m}, replicate 0: validation per epoch")
        ax.legend(fontsize=8)
        ax = axes[row][1]
        for i, r in enumerate(out["models"][m]["replicates"]):
            sizes = range(1, MEMBERS + 1)
            ax.plot(sizes, r["independent"]["acc_by_size"], "o-", color="C0", alpha=0.7,
                    label="independent (first m members)" if i == 0 else None)
            ax.plot(range(1, len(r["snapshot"]["acc_by_last_m"]) + 1), r["snapshot"]["acc_by_last_m"], "^-",
                    color="C2", alpha=0.7, label="snapshots (last m)" if i == 0 else None)
            ax.axhline(r["snapshot"]["single_cosine_acc"], color="C1", lw=0.8, ls=":",
                       label="single cosine model" if i == 0 else None)
        ax.set(xlabel="ensemble size m", ylabel="test accuracy", title=f"{m}: accuracy against ensemble size")
        for a in axes[row]:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_curves, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 replicate, 5 epochs (smoke run)")
    parser.add_argument("--replicates", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = QUICK if args.quick else MODELS
    replicates = 1 if args.quick else args.replicates
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    out = {"replicates": replicates, "members": MEMBERS, "cycles": CYCLES, "quick": args.quick,
           "setup": "mnist1d, Adam lr 3e-3, batch 128, members: cosine + ema 0.999 with warm-up; snapshot run: "
                    "cyclic_cosine with 5 cycles over the same epochs; constant-lr run with the same EMA; test split "
                    "(1000 examples)",
           "machine": {"cpu_count": os.cpu_count(), "torch_threads": 1, "torch": torch.__version__,
                       "python": platform.python_version(), "load_avg_1min_start": load_start},
           "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = Store(tmp / "bench.db")
        for model, (width, epochs) in settings.items():
            reps = []
            for r in range(replicates):
                t0 = time.perf_counter()
                reps.append(replicate(model, width, epochs, r, store, tmp / "runs"))
                print(f"{model} replicate {r}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            out["models"][model] = {"width": width, "epochs": epochs, "replicates": reps, "summary": summarize(reps)}
    out["seconds"] = time.perf_counter() - started
    out["machine"]["load_avg_1min_end"] = os.getloadavg()[0]
    print_table(out)
    print(f"total {out['seconds']:.0f} s on {os.cpu_count()} shared cores (load average {load_start:.1f} at start, "
          f"{out['machine']['load_avg_1min_end']:.1f} at end)")
    RESULTS.mkdir(exist_ok=True)
    name = "ensemble_quick" if args.quick else "ensemble"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    if not args.quick:
        plot(out, RESULTS / "ensemble_summary.png", RESULTS / "ensemble_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
