"""Figures (matplotlib, Agg backend, PNG) of runs and schedules."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainlab.doctor.curves import moving_average, smoothing_window
from trainlab.doctor.judged import RunMetric, run_metric
from trainlab.store import Store

__all__ = ["plot_run", "plot_schedule", "loss_window", "plot_metric_vs_params", "plot_search_layout",
           "plot_importance", "plot_lr_test", "plot_ratios"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_window(n_steps: int) -> int:
    """Moving-average window for a per-step loss curve: about 2% of the run, between 5 and 200 steps."""
    return smoothing_window(n_steps)  # the doctor judges curves on the same window


def plot_run(store: Store, run_id: int, path: str | Path) -> Path:
    """Loss (every step as a faint point, plus its moving average), the task's metric on train and val per
    epoch (accuracy on [0, 1] for a classifier; a regression's mse, or a user metric, on its own scale, log
    when it spans more than a decade), and lr."""
    plt = _plt()
    run = store.run(run_id)
    judged = run_metric(run)
    curves = judged.curves
    m = store.metrics(run_id, ["train/loss", "lr", "val/loss", *curves])
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
    for key, color in zip(curves, ("tab:blue", "tab:orange")):
        if key in m:
            ax.plot(m[key]["epoch"], m[key]["value"], "o-", color=color, label=key)
    _metric_axis(ax, judged, [v for k in curves if k in m for v in m[k]["value"]])
    ax.set(xlabel="epoch", ylabel=judged.label, title=f"{judged.label} ({'higher' if judged.headline_mode == 'max' else 'lower'} is better)")
    if any(k in m for k in curves):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no {' or '.join(curves)} stored", ha="center", va="center", transform=ax.transAxes)
    ax = axes[2]
    if "lr" in m:
        ax.plot(m["lr"]["step"], m["lr"]["value"], color="tab:green")
    ax.set(xlabel="step (optimizer updates)", ylabel="learning rate", title="learning rate")
    fig.suptitle(f"run {run_id}: {run['name']} ({run['status']})")
    return _save(fig, path)


def _metric_axis(ax, judged: RunMetric, values) -> None:
    """An accuracy on [0, 1] (a little headroom); any other metric on its own range, log when its positive
    values span more than a decade (a regression's mse falling from 1 to 0.01)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if judged.is_accuracy:
        ax.set_ylim(max(0.0, min(finite + [1.0]) - 0.05) if finite else 0.0, 1.01)
    elif finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        ax.set_yscale("log")


def plot_schedule(lrs, path: str | Path, title: str = "", steps_per_epoch: int | None = None) -> Path:
    """The learning rate at each optimizer update; with `steps_per_epoch`, epochs on a top axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.arange(len(lrs)), lrs)
    ax.set(xlabel="step (optimizer updates)", ylabel="learning rate", title=title)
    if steps_per_epoch:
        top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
        top.set_xlabel("epoch")
    return _save(fig, path)


# --- hyperparameter search (trainlab search report) ----------------------------------------------
# Plain data in, PNG out: rows are {"params": {name: value}, "value": float | None, "status": str};
# a parameter is {"name", "log": bool, "categorical": bool, "values": [...] (categorical only)}.

_STATUS_COLORS = {"completed": "tab:blue", "pruned": "tab:orange", "diverged": "tab:red"}


def _param_axis(ax, param: dict, axis: str, rows: list[dict]) -> list:
    """Positions of each row's value of `param` on `axis`; sets log scale or categorical ticks."""
    name = param["name"]
    raw = [r["params"].get(name) for r in rows]
    if param.get("categorical"):
        cats = list(param.get("values") or dict.fromkeys(v for v in raw if v is not None))
        pos = [cats.index(v) if v in cats else np.nan for v in raw]
        ticks = (ax.set_xticks, ax.set_xticklabels) if axis == "x" else (ax.set_yticks, ax.set_yticklabels)
        ticks[0](range(len(cats)))
        ticks[1]([f"{c:g}" if isinstance(c, float) else str(c) for c in cats])
        return pos
    if param.get("log"):
        from matplotlib import ticker

        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target = ax.xaxis if axis == "x" else ax.yaxis
        values = [float(v) for v in raw if isinstance(v, (int, float)) and v and v > 0]
        decades = np.log10(max(values) / min(values)) if values else 3.0
        # within about a decade a log axis has one labelled tick or none: label 1-2-5 (or 1-3) too
        subs = (tuple(float(k) for k in range(1, 10)) if decades <= 0.7 else (1.0, 2.0, 5.0) if decades <= 1.5
                else (1.0, 3.0) if decades <= 2.5 else (1.0,))
        target.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        target.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(ticker.NullFormatter())
    return [np.nan if v is None else float(v) for v in raw]


def plot_metric_vs_params(rows: list[dict], params: list[dict], metric: str, path: str | Path) -> Path:
    """One panel per hyperparameter: each trial's best `metric` against its value (log axes where the
    space is log), coloured by status, so the useful range of each parameter shows at a glance."""
    plt = _plt()
    n = max(1, len(params))
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.6 * cols, 3.6 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, param in zip(axes.flat, params):
        xs = _param_axis(ax, param, "x", rows)
        for status, color in _STATUS_COLORS.items():
            pts = [(x, r["value"]) for x, r in zip(xs, rows) if r["status"] == status and r["value"] is not None
                   and np.isfinite(x)]
            if pts:
                ax.scatter(*zip(*pts), s=22, color=color, alpha=0.8, label=status)
        ax.set(xlabel=param["name"] + (" (log)" if param.get("log") and not param.get("categorical") else ""),
               ylabel=metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(f"{metric} against each hyperparameter")
    return _save(fig, path)


def plot_search_layout(rows: list[dict], x: dict, y: dict, metric: str, path: str | Path) -> Path:
    """The grid-versus-random picture (Bergstra & Bengio 2012, fig. 1) for a study: the tried points in
    the plane of two hyperparameters, with each projection above and beside it showing the metric against
    that parameter alone. A grid of k x k points tries only k distinct values of each parameter; random
    search tries a new value of every parameter in every trial."""
    plt = _plt()
    fig = plt.figure(figsize=(6.4, 6.4))
    gs = fig.add_gridspec(2, 2, width_ratios=(4, 1.3), height_ratios=(1.3, 4), wspace=0.05, hspace=0.05)
    main = fig.add_subplot(gs[1, 0])
    top = fig.add_subplot(gs[0, 0], sharex=main)
    side = fig.add_subplot(gs[1, 1], sharey=main)
    xs = _param_axis(main, x, "x", rows)
    ys = _param_axis(main, y, "y", rows)
    vals = [r["value"] for r in rows]
    ok = [i for i in range(len(rows)) if np.isfinite(xs[i]) and np.isfinite(ys[i])]
    good = [i for i in ok if vals[i] is not None and np.isfinite(vals[i])]
    main.scatter([xs[i] for i in ok], [ys[i] for i in ok], s=30, c="tab:gray", alpha=0.5)
    if good:
        sc = main.scatter([xs[i] for i in good], [ys[i] for i in good], s=30, c=[vals[i] for i in good],
                          cmap="viridis")
        fig.colorbar(sc, ax=side, label=metric, fraction=0.5)
        top.scatter([xs[i] for i in good], [vals[i] for i in good], s=14, color="tab:blue")
        side.scatter([vals[i] for i in good], [ys[i] for i in good], s=14, color="tab:blue")
    top.set_ylabel(metric)
    side.set_xlabel(metric)
    from matplotlib.ticker import MaxNLocator

    side.xaxis.set_major_locator(MaxNLocator(3))  # a narrow panel: few ticks, upright labels would collide
    side.tick_params(axis="x", labelrotation=90, labelsize=8)
    plt.setp(top.get_xticklabels(), visible=False)
    plt.setp(side.get_yticklabels(), visible=False)
    nx = len({xs[i] for i in ok})
    ny = len({ys[i] for i in ok})
    main.set(xlabel=f"{x['name']}: {nx} distinct values", ylabel=f"{y['name']}: {ny} distinct values")
    main.grid(alpha=0.3)
    top.set_title(f"{len(ok)} trials: {nx} values of {x['name']}, {ny} of {y['name']}")
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


FEW_TRIALS = 20  # below this many completed trials an importance estimate is a rough guess (it moves from search to search)


def plot_importance(importances: dict[str, float], path: str | Path, title: str = "parameter importance",
                    n_trials: int | None = None) -> Path:
    """Horizontal bars, most important on top; with `n_trials` < FEW_TRIALS the figure says it rests on few."""
    plt = _plt()
    items = sorted(importances.items(), key=lambda kv: kv[1])
    few = n_trials is not None and n_trials < FEW_TRIALS
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(items) + 1.2 + (0.4 if few else 0)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:gray" if few else "tab:blue")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set(xlabel="importance (sums to 1)")
    ax.set_title(title + (f" from {n_trials} completed trials" if n_trials is not None else ""), fontsize=11)
    if few:
        fig.text(0.5, 0.01, f"only {n_trials} completed trials (fewer than {FEW_TRIALS}): a rough guess, "
                 "which another search may well reorder", ha="center", va="bottom", fontsize=8, color="tab:red")
    ax.set_xlim(0, max([v for _, v in items] + [0.01]) * 1.2)
    fig.tight_layout(rect=(0, 0.07 if few else 0, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lr_test(path: str | Path, *, trials: list[dict] | None = None, sweep: dict | None = None,
                 suggested: float | None = None, title: str = "learning-rate range test") -> Path:
    """The LR test's figure: loss against learning rate on a log axis, the suggestion marked.

    Left: the exponential sweep (every step as a faint point, the smoothed loss, the skipped start and
    the divergence cut) and each discrete trial's final loss at its rate. Right (when `trials` holds
    per-step "losses"): each trial's loss against the step, the picked one drawn thick. `trials` are
    rows with lr, losses, end, status, picked; `sweep` is `lr_range.analyze_lr_sweep`'s dict.
    """
    plt = _plt()
    trials = trials or []
    panels = 2 if any(t.get("losses") for t in trials) else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 6.2), squeeze=False)
    ax = axes[0][0]
    ys: list[float] = []
    starts = [t["losses"][0] for t in trials if t.get("losses") and np.isfinite(t["losses"][0])]
    start = max(starts) if starts else None  # the loss before training: where the useful range ends above
    if sweep is not None and sweep.get("lrs"):
        lrs, raw, smooth = (np.asarray(sweep[k], dtype=float) for k in ("lrs", "raw", "smoothed"))
        skip, cut = sweep.get("skip", 0), sweep.get("cut", len(lrs))
        ax.scatter(lrs, raw, s=4, alpha=0.3, color="tab:blue", label="sweep: loss per step")
        ax.plot(lrs[skip:cut], smooth[skip:cut], color="tab:blue", lw=2, label="sweep: smoothed (EMA)")
        if cut < len(lrs):
            ax.plot(lrs[cut:], smooth[cut:], color="tab:blue", lw=1, ls=":", label="after the divergence cut")
        if skip:
            ax.axvspan(lrs[0], lrs[min(skip, len(lrs) - 1)], color="0.9", label=f"first {skip} points skipped")
        if sweep.get("lr_at_min") is not None:
            ax.plot([sweep["lr_at_min"]], [sweep["loss_at_min"]], "v", color="tab:blue", ms=9,
                    label=f"sweep minimum at lr {sweep['lr_at_min']:.2g}")
        if sweep.get("suggested_lr") is not None:
            ax.axvline(sweep["suggested_lr"], color="tab:blue", ls="--", lw=1.2,
                       label=f"sweep's suggestion {sweep['suggested_lr']:.2g} (minimum / 10)")
        ys += [v for v in smooth[skip:cut] if np.isfinite(v)]
        first = next((v for v in smooth[skip:cut] if np.isfinite(v)), None)
        start = first if start is None or first is None else max(start, first)
    shown = set()
    for t in trials:
        end = t.get("end")
        if end is None or not np.isfinite(end):
            continue
        status = t.get("status")
        marker = {"ok": "o", "no drop": "s"}.get(status, "x")
        ax.plot([t["lr"]], [end], marker, color="tab:orange", ms=8, mfc="none" if marker == "s" else None,
                label=None if status in shown else f"discrete trial, final loss ({status})")
        shown.add(status)
        ys.append(end)
    if suggested is not None:
        ax.axvline(suggested, color="tab:red", lw=2, label=f"suggested lr {suggested:.2g} (not applied)")
    if ys:
        _useful_ylim(ax, ys, start)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss", title="loss against learning rate")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    if panels == 2:
        ax = axes[0][1]
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(trials)))
        for t, c in zip(trials, colors):
            v = np.asarray(t.get("losses") or [], dtype=float)
            if not v.size:
                continue
            label = f"lr {t['lr']:g}: {t.get('status', '')}" + (" (picked)" if t.get("picked") else "")
            ax.plot(np.arange(len(v)), moving_average(v, 5), color=c, lw=3 if t.get("picked") else 1.2, label=label)
        finite = [x for t in trials for x in (t.get("losses") or []) if np.isfinite(x)]
        if finite:
            first = trials[0]["losses"][0] if trials[0].get("losses") else max(finite)
            ax.set_ylim(0, 2.2 * first if np.isfinite(first) else None)
        ax.set(xlabel="step (optimizer updates)", ylabel="training loss (moving average of 5)",
               title="discrete trials: same initialization, constant lr")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def _useful_ylim(ax, ys: list[float], start: float | None) -> None:
    """The y range of a loss-against-lr plot: from the lowest loss to a little above the starting loss.

    A blow-up at the high rates (the loss rising to many times its start) would otherwise take the whole
    axis and squeeze the part that matters, the dip, into a sliver; the cut is said on the plot.
    """
    lo, hi = min(ys), max(ys)
    ref = start if start is not None and np.isfinite(start) else hi
    top = min(hi, ref + 0.5 * max(ref - lo, 0.05 * abs(ref)))
    span = (top - lo) or 1e-9
    ax.set_ylim(lo - 0.1 * span, top + 0.2 * span)
    if hi > top + 0.2 * span:
        ax.annotate(f"y axis cut at {top + 0.2 * span:.3g}: the loss rises to {hi:.3g} at the high rates",
                    xy=(0.99, 0.98), xycoords="axes fraction", ha="right", va="top", fontsize=7, color="0.35")


def plot_ratios(store: Store, run_id: int, path: str | Path, band: tuple[float, float] = (1e-4, 1e-2)) -> Path:
    """Update/weight ratio per layer over the steps, log y, with the healthy band and 1e-3 marked.

    One line per stored "ratio/<name>" series, biases left out (a bias that starts at zero has no
    meaningful ratio). Raises ValueError when the run has no ratios (monitor_every=0).
    """
    plt = _plt()
    keys = [k for k in store.metric_keys(run_id) if k.startswith("ratio/") and not k.endswith("bias")]
    if not keys:
        raise ValueError(f"run {run_id} has no update/weight ratios (trained with monitor_every=0?)")
    m = store.metrics(run_id, keys)
    run = store.run(run_id)
    fig, ax = plt.subplots(figsize=(10, 6 + 0.15 * len(keys)))
    colors = plt.cm.viridis(np.linspace(0, 0.95, len(keys)))
    for key, color in zip(keys, colors):
        v = np.asarray(m[key]["value"], dtype=float)
        v = np.where(v > 0, v, np.nan)  # a zero ratio has no place on a log axis
        ax.plot(m[key]["step"], v, color=color, lw=1.2, marker=".", ms=3, label=key[len("ratio/"):])
    ax.axhspan(band[0], band[1], color="tab:green", alpha=0.08, label=f"healthy band [{band[0]:g}, {band[1]:g}]")
    ax.axhline(1e-3, color="tab:green", ls="--", lw=1.5, label="1e-3 (rule of thumb)")
    ax.set_yscale("log")
    ax.set(xlabel="step (optimizer updates)", ylabel="||W_after - W_before|| / ||W_before||",
           title=f"run {run_id}: {run['name']}: update/weight ratio per layer")
    lr = store.metrics(run_id, ["lr"]).get("lr")
    if lr:  # the schedule explains most of the ratios' trend
        twin = ax.twinx()
        twin.plot(lr["step"], lr["value"], color="0.6", lw=1, ls=":", label="learning rate (right axis)")
        twin.set_yscale("log")
        twin.set_ylabel("learning rate", color="0.4")
        ax.plot([], [], color="0.6", lw=1, ls=":", label="learning rate (right axis)")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Lay out, write at 100 dpi and close a figure; its path."""
    plt = _plt()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
