"""A store for the comparison views, written through the Store API and Optuna (no torch, no training):
a search-like study "sweep" with completed, pruned, failed and diverged trials and an Optuna study of the
same name (as `trainlab search` leaves it), check runs filed under no study, and one plain run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from trainlab.store import Store

STEPS_PER_EPOCH = 50
PARAMS = ("stem.0.weight", "head.weight")

# (lr, weight_decay, width, optimizer, status, epochs run)
TRIALS = [
    (3e-3, 0.0, 64, "adam", "completed", 8),
    (1e-2, 1e-4, 128, "adam", "completed", 8),
    (3e-4, 1e-3, 32, "sgd", "completed", 8),
    (1e-4, 1e-4, 64, "sgd", "pruned", 1),
    (2e-4, 0.0, 32, "sgd", "pruned", 3),
    (5e-2, 1e-3, 128, "adam", "completed", 8),
    (1e-3, 1e-4, 64, "adam", "completed", 8),
    (8e-1, 0.0, 64, "sgd", "diverged", 2),
    (6e-3, 1e-3, 32, "adam", "failed", 1),
    (2e-3, 0.0, 128, "sgd", "pruned", 1),
]


def accuracy(lr: float, epoch: int, optimizer: str) -> float:
    good = math.exp(-((math.log10(lr) + 2.5) ** 2) / 2)  # best near 3e-3
    return round(0.3 + 0.6 * good * (1 - math.exp(-epoch / 2)) + (0.03 if optimizer == "adam" else 0.0), 4)


def build(path: Path, *, optuna_study: bool = True) -> dict:
    store = Store(path)
    rng = np.random.default_rng(0)
    ids = []
    for i, (lr, wd, width, opt, status, epochs) in enumerate(TRIALS):
        hp = {"lr": lr, "weight_decay": wd, "width": width, "optimizer": opt, "epochs": 8, "model": "mlp",
              "early_stop_metric": "val/acc"}
        run = store.create_run(name=f"trial-{i}", hparams=hp, seed=i, study="sweep")
        steps = epochs * STEPS_PER_EPOCH
        s = np.arange(steps)
        loss = 2.3 * np.exp(-s * min(1.0, lr * 40) / 200) + 0.2 + 0.1 * rng.standard_normal(steps) ** 2
        if status == "diverged":
            loss[steps // 2:] = np.geomspace(3, 1e6, steps - steps // 2)
        rows = [(int(t), int(t // STEPS_PER_EPOCH + 1), "train/loss", float(v)) for t, v in zip(s, loss)]
        rows += [(int(t), int(t // STEPS_PER_EPOCH + 1), "lr", float(lr * 0.5 * (1 + math.cos(math.pi * t / 400))))
                 for t in s]
        for t in range(0, steps, 10):
            for p in PARAMS:
                rows.append((t, t // STEPS_PER_EPOCH + 1, f"ratio/{p}", float(lr * 0.3 * rng.lognormal(0, 0.3))))
        best = None
        for e in range(1, epochs + 1):
            acc = accuracy(lr, e, opt)
            rows.append((e * STEPS_PER_EPOCH - 1, e, "val/acc", acc))
            rows.append((e * STEPS_PER_EPOCH - 1, e, "val/loss", float(2.3 * (1 - acc) + 0.1)))
            best = acc if best is None else max(best, acc)
        store.log_metrics(run, rows, epochs=epochs)
        if status == "diverged":
            best = None
        store.finish_run(run, status, reason=None if status == "completed" else f"{status} at epoch {epochs}",
                         best_metric=best, best_epoch=epochs if best is not None else None)
        ids.append(run)
    checks = []
    for name, verdict in (("check-init", "pass"), ("check-lr", "pass"), ("check-overfit", "fail")):
        run = store.create_run(name=name, hparams={"lr": 1e-3, "model": "mlp"}, kind="check")
        store.log_metrics(run, [(t, 1, "train/loss", 2.3 - t / 100) for t in range(40)])
        store.finish_run(run, "completed", summary={"verdict": verdict})
        checks.append(run)
    loose = store.create_run(name="loose", hparams={"lr": 3e-3, "model": "mlp"})
    store.log_metrics(loose, [(t, 1, "train/loss", 2.3 - t / 100) for t in range(40)])
    store.finish_run(loose, "completed", best_metric=0.5, best_epoch=1)
    url = store.url
    store.close()
    if optuna_study:
        _optuna_study(url)
    return {"path": path, "trials": ids, "checks": checks, "loose": loose}


def _optuna_study(url: str) -> None:
    """The Optuna study `trainlab search` keeps beside the runs: one trial per run, same name."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="sweep", storage=url, direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
            "weight_decay": optuna.distributions.CategoricalDistribution([0.0, 1e-4, 1e-3]),
            "width": optuna.distributions.CategoricalDistribution([32, 64, 128]),
            "optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"])}
    for lr, wd, width, opt, status, epochs in TRIALS:
        params = {"lr": lr, "weight_decay": wd, "width": width, "optimizer": opt}
        state = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
                 "diverged": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}[status]
        value = accuracy(lr, epochs, opt) if state == optuna.trial.TrialState.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dist, state=state, value=value))
