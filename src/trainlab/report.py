"""Figures (matplotlib, Agg backend, PNG) of runs and schedules."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .curves import moving_average
from .store import Store

__all__ = ["plot_run", "plot_schedule", "loss_window"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_window(n_steps: int) -> int:
    """Moving-average window for a per-step loss curve: about 2% of the run, between 5 and 200 steps."""
    return int(min(200, max(5, n_steps // 50)))


def plot_run(store: Store, run_id: int, path: str | Path) -> Path:
    """Loss (every step as a faint point, plus its moving average), train/val accuracy per epoch, and lr."""
    plt = _plt()
    m = store.metrics(run_id, ["train/loss", "lr", "train/acc", "val/acc", "val/loss"])
    run = store.run(run_id)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    if "train/loss" in m:
        steps, loss = np.asarray(m["train/loss"]["step"]), np.asarray(m["train/loss"]["value"], dtype=float)
        ax.scatter(steps, loss, s=2, alpha=0.25, color="tab:blue", label="train loss (per step)")
        ax.plot(steps, moving_average(loss, loss_window(len(loss))), color="tab:blue", lw=2, label="moving average")
    if "val/loss" in m:
        ax.plot(m["val/loss"]["step"], m["val/loss"]["value"], "o-", color="tab:orange", label="val loss")
    finite = [v for k in ("train/loss", "val/loss") if k in m for v in m[k]["value"] if np.isfinite(v)]
    if finite and max(finite) / max(min(finite), 1e-12) > 50:
        ax.set_yscale("log")
    ax.set(xlabel="step (optimizer updates)", ylabel="loss", title="loss")
    ax.legend(fontsize=8)
    ax = axes[1]
    for key, color in (("train/acc", "tab:blue"), ("val/acc", "tab:orange")):
        if key in m:
            ax.plot(m[key]["epoch"], m[key]["value"], "o-", color=color, label=key)
    ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax.legend(fontsize=8)
    ax = axes[2]
    if "lr" in m:
        ax.plot(m["lr"]["step"], m["lr"]["value"], color="tab:green")
    ax.set(xlabel="step (optimizer updates)", ylabel="learning rate", title="learning rate")
    fig.suptitle(f"run {run_id}: {run['name']} ({run['status']})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_schedule(lrs, path: str | Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.arange(len(lrs)), lrs)
    ax.set(xlabel="step (optimizer updates)", ylabel="learning rate", title=title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
