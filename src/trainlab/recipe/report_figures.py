"""The recipe report's figures: the PNGs drawn with matplotlib from the store (overfit curves, coarse-grid
heatmap, refined runs' curves, spread over folds), apart from the HTML page that `report` assembles around them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from trainlab.doctor.curves import moving_average, smoothing_window
from trainlab.doctor.judged import CLASSIFIER, run_metric
from trainlab.store import Store

__all__ = ["plot_overfit", "plot_grid_heatmap", "plot_refine_curves", "plot_cv_spread"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


# --- figures ------------------------------------------------------------------------------------------

def plot_overfit(store: Store, attempts: Sequence[dict], path: str | Path, target_loss: float | None = None) -> Path:
    """Step 2: each attempt's training loss per step (points and moving average) and what the check
    judges on the small sample after each pass over it, one colour per learning rate: a classifier's
    accuracy (target 100%), a regression's loss on the sample (target `target_loss`, 5% of the sample's
    target variance; log axis)."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    colors = plt.cm.viridis(np.linspace(0, 0.85, max(1, len(attempts))))
    judged = next((run_metric(store.run(a["run"])) for a in attempts if a.get("run") is not None), CLASSIFIER)
    regression = judged.kind == "regression"
    key = "val/loss" if regression else "val/acc"
    drawn = False
    for a, c in zip(attempts, colors):
        if a.get("run") is None:
            continue
        m = store.metrics(a["run"], ["train/loss", key])
        label = f"lr {a['lr']:g}: {a['verdict']}"
        if "train/loss" in m:
            s, v = np.asarray(m["train/loss"]["step"]), np.asarray(m["train/loss"]["value"], dtype=float)
            ax1.scatter(s, v, s=3, alpha=0.25, color=c)
            ax1.plot(s, moving_average(v, max(2, smoothing_window(len(v)) // 2)), color=c, lw=2, label=label)
            drawn = True
        if key in m:
            ax2.plot(m[key]["step"], m[key]["value"], "o-", ms=3, color=c, label=label)
    ax1.set(xlabel="step", ylabel="training loss", title="loss on the small sample (points: per step)")
    ax1.set_yscale("log")
    if regression:
        if target_loss:
            ax2.axhline(target_loss, color="0.5", ls="--", lw=1, label=f"target {target_loss:.3g}")
        ax2.set_yscale("log")
        ax2.set(xlabel="step", ylabel="val/loss on the sample (eval mode)",
                title="loss on the sample (target: 5% of its target variance)")
    else:
        ax2.axhline(1.0, color="0.5", ls="--", lw=1)
        ax2.set(xlabel="step", ylabel="accuracy on the sample", title="training accuracy on the sample (target 100%)",
                ylim=(0, 1.05))
    if drawn:
        for ax in (ax1, ax2):
            ax.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_grid_heatmap(rows: Sequence[dict], path: str | Path, metric: str = "val/acc", mode: str = "max") -> Path:
    """Step 4: the best `metric` of each (learning rate, weight decay) as a heatmap (val/acc; a regression's
    val/loss); a point stopped early (pruned, or at the deadline) is marked with its epochs. The colours
    run from worst to best whatever the direction: with `mode` "min" the map is reversed, so the best point
    is the brightest either way."""
    plt = _plt()
    lrs = sorted({r["lr"] for r in rows if r.get("lr") is not None})
    wds = sorted({r["weight_decay"] for r in rows if r.get("weight_decay") is not None}, reverse=True)
    grid = np.full((len(wds), len(lrs)), np.nan)
    notes = {}
    for r in rows:
        if r.get("lr") is None or r.get("value") is None:
            continue
        i, j = wds.index(r["weight_decay"]), lrs.index(r["lr"])
        grid[i, j] = r["value"]
        notes[(i, j)] = "" if r["status"] == "completed" else f"\n{r['status']}, {r['epochs']} ep"
    fig, ax = plt.subplots(figsize=(1.6 * max(3, len(lrs)) + 2, 1.0 * max(2, len(wds)) + 1.6))
    finite = grid[np.isfinite(grid)]
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    cmap = "viridis" if mode == "max" else "viridis_r"
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=max(vmax, vmin + 1e-6), aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        text = "not run" if not np.isfinite(v) else f"{v:.4f}{notes.get((i, j), '')}"
        dark = v < (vmin + vmax) / 2 if mode == "max" else v > (vmin + vmax) / 2
        light = np.isfinite(v) and dark
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if light else "black")
    ax.set_xticks(range(len(lrs)), [f"{v:.3g}" for v in lrs])
    ax.set_yticks(range(len(wds)), [f"{v:g}" for v in wds])
    ax.set(xlabel="learning rate", ylabel="weight decay",
           title=f"coarse grid: best {metric} ({'higher' if mode == 'max' else 'lower'} is better)")
    fig.colorbar(im, ax=ax, label=metric)
    return _save(fig, Path(path))


def plot_refine_curves(store: Store, runs: Sequence[dict], path: str | Path) -> Path:
    """Step 5: one panel per refined run: training loss per step (faint points) and its moving average,
    the task's metric on validation and training per epoch on the right axis (accuracy, or e.g. a
    regression's mse on its own scale). `runs`: {"run", "title"} dicts."""
    plt = _plt()
    n = max(1, len(runs))
    cols = min(n, 4)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, r in zip(axes.flat, runs):
        judged = run_metric(store.run(r["run"]))
        train_key, val_key = judged.curves
        m = store.metrics(r["run"], ["train/loss", val_key, train_key])
        if "train/loss" in m:
            s, v = np.asarray(m["train/loss"]["step"]), np.asarray(m["train/loss"]["value"], dtype=float)
            ax.scatter(s, v, s=2, alpha=0.15, color="tab:blue")
            ax.plot(s, moving_average(v, smoothing_window(len(v))), color="tab:blue", lw=1.8, label="train loss (MA)")
            ax.set_yscale("log")
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax2 = ax.twinx()
        for key, color in ((val_key, "tab:orange"), (train_key, "tab:green")):
            if key in m:
                ax2.plot(m[key]["step"], m[key]["value"], "o-", ms=2.5, lw=1.2, color=color, label=key)
        values = [x for k in (val_key, train_key) if k in m for x in m[k]["value"] if x == x]
        if judged.is_accuracy:
            ax2.set_ylim(max(0.0, min([0.8] + values) - 0.02), 1.005)
        elif values and min(values) > 0 and max(values) / min(values) > 10:
            ax2.set_yscale("log")
        ax2.set_ylabel(judged.label, fontsize=8)
        ax.set_title(r["title"], fontsize=8)
        ax.tick_params(labelsize=7)
        ax2.tick_params(labelsize=7)
        if r is runs[0]:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
    return _save(fig, Path(path))


def plot_cv_spread(candidates: Sequence[dict], path: str | Path, chosen: dict | None = None,
                   final_members: Sequence[dict] = (), metric: str = "val/acc", mode: str = "max") -> Path:
    """Selection noise: each candidate's best validation `metric` on every fold (points), their mean and
    standard deviation (bar), the chosen one in red; the final members' scores beside them."""
    plt = _plt()
    labels, fig_h = [], 3.6
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * (len(candidates) + 1) + 2), fig_h))
    for i, c in enumerate(candidates):
        p = c["point"]
        labels.append(f"lr {p['lr']:.3g}\nwd {p['weight_decay']:g}" + (f"\nw {p['width']}" if p.get("width") else ""))
        vals = [v for v in c["folds"].values() if v is not None]
        is_chosen = chosen is not None and p == chosen["point"]
        color = "tab:red" if is_chosen else "tab:blue"
        ax.scatter([i] * len(vals), vals, color=color, s=28, zorder=3)
        if vals:
            ax.errorbar([i + 0.12], [c["mean"]], yerr=[c["std"] or 0.0], fmt="_", ms=16, color=color, capsize=4)
    if final_members:
        i = len(candidates)
        labels.append("final\nmodel")
        vals = [m["val_acc"] for m in final_members if m.get("val_acc") is not None]
        ax.scatter([i] * len(vals), vals, color="tab:green", s=28, marker="D", zorder=3)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlim(-0.6, len(labels) - 0.4)  # a lone candidate is not pinned to the frame's edge
    ax.set(ylabel=f"best {metric}")
    ax.set_title(f"{metric} of each candidate on each fold ({'higher' if mode == 'max' else 'lower'} is better)",
                 fontsize=10)
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], ls="", marker="o", color="tab:blue", label="one fold (split_seed)"),
              Line2D([], [], ls="", marker="_", ms=12, mew=1.5, color="tab:blue", label="mean +- std over folds")]
    if chosen is not None:
        legend.append(Line2D([], [], ls="", marker="o", color="tab:red", label="chosen"))
    if final_members:
        legend.append(Line2D([], [], ls="", marker="D", color="tab:green", label="final model(s)"))
    ax.legend(handles=legend, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(legend),
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))
