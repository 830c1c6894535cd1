"""Sanity checks before a real training run: the loss at initialization, overfitting a small sample, and
the learning-rate range test (the recipe's steps 1-3, as tools of their own).

Each check returns a dataclass with a `verdict` ("pass"/"fail"), a one-line `message` and its evidence,
and is recorded in the store (when one is given) as a run of kind "check" named "check-init",
"check-overfit" or "check-lr", status "completed" (a failed check is a completed run whose summary says
"fail": the check itself worked). Training checks are short `fit()`s; the model a caller hands in is
copied, never changed, and torch's global RNG state is put back afterwards, so a check leaves no trace.

    from trainlab import Config, load_task
    from trainlab.checks import check_init, check_overfit, check_lr

    hp = Config(model="mlp")
    task = load_task(hp)
    check_init(task, hp).message      # 'initial loss 2.31, expected about 2.3 = log(10) ...'
    check_lr(task, hp).suggested_lr   # 0.01 (the table and the plot say why)
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from trainlab.config import DEFAULT_RUNS_DIR, Config, apply_overrides
from trainlab.doctor.curves import json_safe, loss_trend
from trainlab.doctor.lr_range import (
    AGREE_DECADES,
    LECTURE_LRS,
    LR_TEST_WEIGHT_DECAY,
    SWEEP_RANGE,
    SWEEP_STEPS,
    TRIAL_STEPS,
    WIDER_LRS,
    WIDER_SWEEP_RANGE,
    analyze_lr_sweep,
    lr_trial_summary,
    lrs_agree,
    pick_discrete_lr,
    pick_moving_lr,
)
from trainlab.doctor.init_loss import init_loss_verdict, init_regression_verdict
from trainlab.doctor.rules import FLAT_DROP
from trainlab.schedules import exponential_ramp
from trainlab.store import Store
from trainlab.tasks import Task, load_task
from trainlab.train.callbacks import Stop
from trainlab.train.data import Feed
from trainlab.train.evaluate import dataset_tensors
from trainlab.train.loop import epoch_order, fit, resolve_device

OVERFIT_REGRESSION_FRACTION = 0.05  # a regression has memorized its sample at a loss of 5% of its target variance (R^2 >= 0.95)

__all__ = ["CheckResult", "LRTestResult", "check_init", "check_overfit", "check_lr", "check_lr_widened", "check_start",
           "LECTURE_LRS"]


@dataclass
class CheckResult:
    """The outcome of `check_init` or `check_overfit`."""

    name: str                      # "init" or "overfit"
    verdict: str                   # "pass" or "fail"
    message: str                   # one line that explains the verdict
    evidence: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass
class LRTestResult:
    """The outcome of `check_lr`: the raw table, each method's pick, the suggestion and how it was chosen.

    `table` has one row per discrete trial (lr, start, end, drop, status, why, picked). `sweep` is
    `lr_range.analyze_lr_sweep`'s dict (lrs, raw and smoothed losses, cut, lr_at_min, ...). `suggested_lr`
    is the discrete pick when that method ran and found one, else the sweep's; it is never applied.
    """

    verdict: str
    message: str
    method: str
    suggested_lr: float | None
    rule: str
    discrete_lr: float | None = None
    sweep_lr: float | None = None
    agree: bool | None = None
    agreement: str = f"the two suggestions agree when less than {AGREE_DECADES:g} decade apart (a factor of {10 ** AGREE_DECADES:g})"
    table: list[dict[str, Any]] = field(default_factory=list)
    sweep: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    plot: str | None = None
    run_id: int | None = None
    name: str = "lr"

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


# --- helpers ------------------------------------------------------------------------------------------

@contextmanager
def _rng_kept() -> Iterator[None]:
    """Put torch's global RNG state back afterwards: a check must not change the caller's random stream."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _override(hp: Config, **values: Any) -> Config:
    """hp with `values` (only the fields this Config has: other issues add fields of their own)."""
    return apply_overrides(hp, {k: v for k, v in values.items() if k in type(hp).model_fields})


def _fresh_model(task: Task, hp: Config, model: nn.Module | None) -> nn.Module:
    """A copy of `model`, or the task's model initialized from hp.seed exactly as fit() would."""
    if model is not None:
        return copy.deepcopy(model)
    torch.manual_seed(hp.seed)
    return task.build_model()


def _record(store: Store | None, name: str, hp: Config, summary: dict[str, Any], study: str | None,
            run_id: int | None = None) -> int | None:
    if store is None:
        return None
    if run_id is None:
        run_id = store.create_run(name=f"check-{name}", hparams=hp.model_dump(mode="json"), seed=hp.seed,
                                  study=study, kind="check")
    store.finish_run(run_id, "completed", reason=summary.get("message"), summary=json_safe(summary))
    return run_id


def _losses(store: Store, run_id: int) -> tuple[list[float], list[float]]:
    m = store.metrics(run_id, ["train/loss", "lr"])
    return m.get("train/loss", {}).get("value", []), m.get("lr", {}).get("value", [])


# --- check init ---------------------------------------------------------------------------------------

def check_init(task: Task | None, hp: Config, store: Store | None = None, *, batches: int = 10,
               model: nn.Module | None = None, study: str | None = None) -> CheckResult:
    """The loss at initialization against log(C), with weight decay off (the data loss alone).

    The fresh model (initialized from hp.seed, as `fit` does) runs in training mode without gradients on
    the first `batches` minibatches of the first epoch's order: the loss the first update sees. Passes
    when within `curves.INIT_LOSS_TOLERANCE` (25%) of log C. Labels outside 0..C-1 fail at once.

    >>> check_init(load_task(Config(model="mlp")), Config(model="mlp")).verdict
    'pass'
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1, but got batches={batches!r}.")
    hp = _override(hp, weight_decay=0.0)
    task = task or load_task(hp)
    device = resolve_device(hp.device)
    with _rng_kept():
        net = _fresh_model(task, hp, model).to(device)
        # the first minibatches of the first epoch, as fit() would draw them (only these are read)
        x, y = dataset_tensors(_sample(task.train, batches * hp.batch_size, hp.seed), feed=Feed.for_task(task, hp, torch.device("cpu")))
        net.train()
        losses, logits = [], []
        with torch.no_grad():
            for i in range(0, len(y), hp.batch_size):
                out = net(x[i:i + hp.batch_size].to(device)).float()
                target = y[i:i + hp.batch_size].to(device)
                if task.kind == "classification" and target.dtype == torch.long and (
                        target.min() < 0 or target.max() >= out.shape[1]):
                    losses = None
                    break
                losses.append(float(task.loss(out, target)))
                logits.append(out.cpu())
    if task.kind == "regression":
        return _check_init_regression(task, hp, losses, y, batches, store, study)
    c = task.num_classes
    labels = y.unique().tolist() if y.dtype == torch.long else []
    evidence: dict[str, Any] = {"num_classes": c, "expected": math.log(c), "batches": batches,
                                "examples": int(len(y)), "weight_decay": 0.0,
                                "labels_seen": len(labels), "label_range": [min(labels), max(labels)] if labels else None}
    if losses is None:
        message = (f"labels run over {min(labels)}..{max(labels)}, but the task has {c} classes (0..{c - 1}): "
                   "labels do not match the number of classes")
        verdict = "fail"
    else:
        z = torch.cat(logits)
        loss = sum(losses) / len(losses)
        judged = init_loss_verdict(loss, c)
        evidence.update({"initial_loss": loss, "batch_losses": losses, "deviation": judged["deviation"],
                         "tolerance": judged["tolerance"], "logit_std": float(z.std()),
                         "top_class_share": float(z.argmax(1).bincount(minlength=c).max() / len(z))})
        verdict = "pass" if judged["ok"] else "fail"
        message = judged["message"]
        if not judged["ok"] and judged["deviation"] > 0:
            message += (f" (logits have std {evidence['logit_std']:.3g} at initialization, want about 1 or less; "
                        f"{evidence['top_class_share']:.0%} of examples go to one class)")
    summary = {"check": "init", "verdict": verdict, "message": message, **evidence}
    run_id = _record(store, "init", hp, summary, study)
    return CheckResult("init", verdict, message, evidence, run_id)


def _check_init_regression(task: Task, hp: Config, losses: list[float], y: torch.Tensor, batches: int,
                           store: Store | None, study: str | None) -> CheckResult:
    """A regression's initial loss against the targets' mean square and variance (`init_regression_verdict`)."""
    yf = y.float()
    loss = sum(losses) / len(losses)
    judged = init_regression_verdict(loss, float(yf.pow(2).mean()), float(yf.var(unbiased=False)))
    evidence = {"kind": "regression", "initial_loss": loss, "batch_losses": losses, "expected": judged["expected"],
                "target_variance": float(yf.var(unbiased=False)), "target_mean": float(yf.mean()),
                "deviation": judged["deviation"], "tolerance": judged["tolerance"], "batches": batches,
                "examples": int(len(y)), "weight_decay": 0.0}
    verdict = "pass" if judged["ok"] else "fail"
    summary = {"check": "init", "verdict": verdict, "message": judged["message"], **evidence}
    run_id = _record(store, "init", hp, summary, study)
    return CheckResult("init", verdict, judged["message"], evidence, run_id)


# --- check overfit ------------------------------------------------------------------------------------

class _StopAtFullAccuracy:
    """Ends the run at the first epoch whose accuracy on the small sample (held as `val`) is 100%; for a
    regression (`max_loss` given), the first whose loss on the sample is at most `max_loss` (memorized)."""

    def __init__(self, max_loss: float | None = None) -> None:
        self.reached_at: int | None = None
        self.max_loss = max_loss

    def on_step_end(self, state) -> None:
        return None

    def on_epoch_end(self, state) -> Stop | None:
        if self.max_loss is not None:
            if state.metrics.get("val/loss", float("inf")) <= self.max_loss:
                self.reached_at = state.step
                return Stop("completed", f"memorized the sample (loss <= {self.max_loss:.3g}) at step {state.step}")
            return None
        if state.metrics.get("val/acc", 0.0) >= 1.0:
            self.reached_at = state.step
            return Stop("completed", f"reached 100% training accuracy at step {state.step}")
        return None

    def on_fit_end(self, state) -> None:
        return None


def _sample(dataset, n: int, seed: int):
    idx = epoch_order(len(dataset), seed, 0)[:n]
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    return Subset(dataset, idx.tolist())


def check_overfit(task: Task | None, hp: Config, store: Store | None = None, *, batches: int = 5,
                  max_steps: int = 1000, model: nn.Module | None = None, study: str | None = None,
                  runs_dir: str = DEFAULT_RUNS_DIR) -> CheckResult:
    """Train on a small sample (`batches` minibatches of hp.batch_size) with regularization off (no weight
    decay, dropout or label smoothing; constant learning rate hp.lr) until 100% training accuracy.

    Passes when accuracy on the sample (eval mode, checked after every pass over it) reaches 100% within
    `max_steps` updates; the evidence holds the steps it took. A failure names the lecture's cause that
    fits the curve: the loss exploding to Inf/NaN (learning rate too high, or bad initialization), the
    loss not going down (learning rate too low, or bad initialization), or a loss that falls too slowly.
    The curve is stored with the run (train/loss per step, val/acc = accuracy on the sample per epoch).
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1, but got batches={batches!r}.")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, but got max_steps={max_steps!r}.")
    hp_o = _override(hp, weight_decay=0.0, dropout=0.0, label_smoothing=0.0, schedule="constant", warmup_steps=0,
                     warmup_epochs=0.0, steps=max_steps, patience=None, early_stop_metric="val/acc",
                     early_stop_mode="max", ema=None, snapshots=False)
    task = task or load_task(hp_o)
    n = min(len(task.train), batches * hp.batch_size)
    sample = _sample(task.train, n, hp.seed)
    small = replace(task, train=sample, val=sample)
    target = store if store is not None else Store("sqlite://")
    max_loss = None
    if task.kind == "regression":  # memorized: the sample's loss at most 5% of its target variance (R^2 >= 0.95)
        ys = dataset_tensors(sample, feed=Feed.for_task(task, hp, torch.device("cpu")))[1].float()
        max_loss = OVERFIT_REGRESSION_FRACTION * max(float(ys.var(unbiased=False)), 1e-12)
    stopper = _StopAtFullAccuracy(max_loss)
    with _rng_kept():
        net = _fresh_model(task, hp, model)
        for m in net.modules():   # regularization off, whatever the task's model factory built in
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.p = 0.0
        result = fit(small, hp_o, store=target, study=study, name="check-overfit", kind="check",
                     callbacks=[stopper], quiet=True, evaluate_test=False, model=net, checkpoints=False,
                     runs_dir=runs_dir)
    losses, lrs = _losses(target, result.run_id)
    accs = result.history.get("val/acc", [])
    evidence: dict[str, Any] = {"examples": n, "batches": math.ceil(n / hp.batch_size), "max_steps": max_steps,
                                "steps": result.steps, "epochs": result.epochs, "lr": hp.lr,
                                "final_accuracy": accs[-1] if accs else None, "training_status": result.status,
                                "regularization": "off (weight_decay 0, dropout 0, label_smoothing 0)"}
    if max_loss is not None:
        evidence["target_loss"] = max_loss   # a regression memorizes the sample when its loss falls this low
    if losses:
        trend = loss_trend(losses)
        evidence.update({"loss_start": losses[0], "loss_end": trend["end"]})
    if stopper.reached_at is not None and max_loss is not None:
        verdict = "pass"
        message = (f"memorized {n} examples (regression: loss {losses[-1]:.3g} on them, at most "
                   f"{OVERFIT_REGRESSION_FRACTION:.0%} of their target variance) in {stopper.reached_at} steps")
        evidence["steps_to_100"] = stopper.reached_at
    elif stopper.reached_at is not None:
        verdict = "pass"
        message = (f"reached 100% training accuracy on {n} examples ({evidence['batches']} minibatches) in "
                   f"{stopper.reached_at} steps, loss {losses[0]:.3g} -> {losses[-1]:.3g}")
        evidence["steps_to_100"] = stopper.reached_at
    else:
        verdict = "fail"
        acc = f"{evidence['final_accuracy']:.1%}" if evidence["final_accuracy"] is not None else "no"
        if result.status == "diverged" or any(not math.isfinite(v) for v in losses):
            cause = "loss exploding"
            message = (f"the loss exploded ({result.reason or 'NaN/Inf'}): learning rate too high "
                       f"(lr {hp.lr:g}), or bad initialization")
        elif (trend["start"] - trend["end"]) / trend["start"] < FLAT_DROP:
            cause = "loss not going down"
            message = (f"the loss is not going down ({trend['start']:.3g} -> {trend['end']:.3g} over "
                       f"{result.steps} steps, {acc} training accuracy): learning rate too low (lr {hp.lr:g}), "
                       "or bad initialization")
        else:
            cause = "too slow"
            message = (f"the loss fell ({trend['start']:.3g} -> {trend['end']:.3g}) but training accuracy reached "
                       f"only {acc} on {n} examples in {result.steps} steps: raise max_steps or the learning "
                       f"rate (lr {hp.lr:g}); a model that cannot memorize {n} examples may be too small")
        evidence["cause"] = cause
    summary = {"check": "overfit", "verdict": verdict, "message": message, **evidence}
    run_id = _record(store, "overfit", hp_o, summary, study, run_id=result.run_id) if store is not None else None
    return CheckResult("overfit", verdict, message, evidence, run_id)


# --- check lr: the learning-rate range test -----------------------------------------------------------

def check_lr(task: Task | None, hp: Config, store: Store | None = None, *, method: str = "both",
             lrs: Sequence[float] = LECTURE_LRS, steps: int = TRIAL_STEPS, sweep_steps: int = SWEEP_STEPS,
             sweep_range: tuple[float, float] = SWEEP_RANGE, weight_decay: float = LR_TEST_WEIGHT_DECAY,
             plot: str | Path | None = None, model: nn.Module | None = None,
             study: str | None = None) -> LRTestResult:
    """The learning-rate range test on all training data with a small weight decay (`weight_decay`).

    method "discrete" (the lecture's): each of `lrs` for `steps` updates at a constant rate, every trial
    from the same initialization and data order; the pick is the rate whose loss ends lowest (mean of
    the last 20% of the steps) among those that dropped >= 10% without diverging or spiking above 2x
    the initial loss (`lr_range.lr_trial_summary`, `lr_range.pick_discrete_lr`). method "sweep" (Smith 2017): one
    run of `sweep_steps` updates with the rate rising exponentially over `sweep_range`; read with
    `lr_range.analyze_lr_sweep` (smoothed, first points skipped, NaN/Inf dropped, cut at divergence; the
    suggestion is the lr at the minimum of the smoothed loss divided by 10). "both" runs the two and says
    whether they agree (`lr_range.lrs_agree`). The suggestion is reported, never applied: the caller's
    model is copied (never trained) and torch's RNG state is restored. With `plot`, the figure (loss
    against lr on a log axis, the pick marked) is written there.
    """
    if method not in ("both", "discrete", "sweep"):
        raise ValueError(f"method must be one of both, discrete, sweep, but got method={method!r}.")
    lo, hi = sweep_range
    if not 0 < lo < hi:
        raise ValueError(f"sweep_range must be (low, high) with 0 < low < high, but got sweep_range={sweep_range!r}.")
    if not lrs or any(not (isinstance(v, (int, float)) and v > 0) for v in lrs):
        raise ValueError(f"lrs must be positive learning rates, but got lrs={list(lrs)!r}.")
    if steps < 10 or sweep_steps < 20:
        raise ValueError(f"steps must be >= 10 and sweep_steps >= 20, but got steps={steps!r}, sweep_steps={sweep_steps!r}.")
    base = _override(hp, weight_decay=weight_decay, schedule="constant", warmup_steps=0, warmup_epochs=0.0,
                     steps=steps, patience=None, ema=None, snapshots=False)
    task = task or load_task(base)
    scratch = Store("sqlite://")   # the trials' curves; only the check's own run goes to `store`
    rows: list[dict[str, Any]] = []
    sweep = None
    with _rng_kept():
        if method in ("both", "discrete"):
            for lr in sorted(lrs, reverse=True):
                r = fit(task, _override(base, lr=float(lr)), store=scratch, quiet=True, evaluate_test=False,
                        checkpoints=False, model=copy.deepcopy(model) if model is not None else None)
                losses, _ = _losses(scratch, r.run_id)
                summary = lr_trial_summary(losses, r.reason if r.status == "diverged" else None)
                rows.append({"lr": float(lr), **summary, "losses": losses})
        if method in ("both", "sweep"):
            hp_s = _override(base, lr=float(hi), steps=sweep_steps)
            r = fit(task, hp_s, store=scratch, quiet=True, evaluate_test=False, checkpoints=False,
                    model=copy.deepcopy(model) if model is not None else None,
                    schedule=exponential_ramp(sweep_steps, lo / hi))
            losses, sweep_lrs = _losses(scratch, r.run_id)
            sweep = analyze_lr_sweep(sweep_lrs, losses)
            sweep["stopped"] = r.reason if r.status == "diverged" else None
    scratch.close()
    discrete_lr = pick_discrete_lr(rows) if rows else None
    for row in rows:
        row["picked"] = discrete_lr is not None and row["lr"] == discrete_lr
    sweep_lr = sweep["suggested_lr"] if sweep else None
    agree = lrs_agree(discrete_lr, sweep_lr)
    if method == "sweep":
        suggested, rule = sweep_lr, f"sweep: {sweep['rule']}"
    elif discrete_lr is not None or method == "discrete":
        suggested = discrete_lr
        rule = ("discrete: the rate whose loss drops most in "
                f"{steps} steps (>= 10% below the initial loss) without diverging or spiking over 2x the initial loss")
    else:
        suggested, rule = sweep_lr, f"sweep (no discrete trial dropped without diverging): {sweep['rule']}"
    parts = []
    if rows:
        parts.append(f"discrete trial picks {discrete_lr:g}" if discrete_lr is not None
                     else "no discrete trial dropped significantly without diverging")
        ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["end"])
        if len(ok) > 1 and ok[1]["end"] < 1.1 * ok[0]["end"]:  # a near tie: the grid cannot tell them apart
            parts[-1] += f" ({ok[1]['lr']:g} close behind: loss {ok[1]['end']:.3g} vs {ok[0]['end']:.3g})"
    if sweep is not None:
        parts.append(f"sweep suggests {sweep_lr:.3g} (min of smoothed loss at lr {sweep['lr_at_min']:.3g})"
                     if sweep_lr is not None else f"sweep has no suggestion ({sweep['note']})")
    if agree is not None:
        parts.append("the two agree" if agree else
                     f"the two DISAGREE ({AGREE_DECADES:g} decade or more apart): look at the plot")
    verdict = "pass" if suggested is not None else "fail"
    head = f"suggested lr {suggested:.3g}" if suggested is not None else "no learning rate found"
    message = f"{head}: " + "; ".join(parts) + " (not applied)"
    settings = {"optimizer": hp.optimizer, "batch_size": hp.batch_size, "weight_decay": weight_decay,
                "trial_steps": steps, "lrs": [float(v) for v in lrs], "sweep_steps": sweep_steps,
                "sweep_range": [float(lo), float(hi)], "schedule": "constant (trials), exponential (sweep)"}
    result = LRTestResult(verdict, message, method, suggested, rule, discrete_lr, sweep_lr, agree,
                          table=[{k: v for k, v in row.items() if k != "losses"} for row in rows],
                          sweep=sweep, settings=settings)
    if plot is not None:
        from trainlab.figures import plot_lr_test

        title = f"LR range test: {task.name}/{hp.model}, {hp.optimizer}, batch {hp.batch_size}"
        result.plot = str(plot_lr_test(plot, trials=rows, sweep=sweep, suggested=suggested, title=title))
    if store is not None:
        result.run_id = _record_lr(store, base, result, rows, study)
    return result


def _record_lr(store: Store, hp: Config, result: LRTestResult, rows: list[dict], study: str | None) -> int:
    """One run for the whole test: the verdict in its summary, every trial's curve as metrics."""
    run_id = store.create_run(name="check-lr", hparams=hp.model_dump(mode="json"), seed=hp.seed, study=study,
                              kind="check")
    metrics = []
    for row in rows:
        metrics += [(i, None, f"lr_test/discrete/{row['lr']:g}/loss", v) for i, v in enumerate(row["losses"])]
    if result.sweep is not None:
        metrics += [(i, None, "lr_test/sweep/lr", v) for i, v in enumerate(result.sweep["lrs"])]
        metrics += [(i, None, "lr_test/sweep/loss", v) for i, v in enumerate(result.sweep["raw"])]
        metrics += [(i, None, "lr_test/sweep/smoothed", v) for i, v in enumerate(result.sweep["smoothed"])]
    store.log_metrics(run_id, metrics)
    sweep_brief = None
    if result.sweep is not None:
        sweep_brief = {k: result.sweep[k] for k in ("lr_at_min", "loss_at_min", "suggested_lr", "cut", "cut_reason",
                                                    "skip", "rule", "note", "dropped_nonfinite", "stopped")}
    summary = {"check": "lr", "verdict": result.verdict, "message": result.message, "method": result.method,
               "suggested_lr": result.suggested_lr, "rule": result.rule, "discrete_lr": result.discrete_lr,
               "sweep_lr": result.sweep_lr, "agree": result.agree, "agreement": result.agreement,
               "table": result.table, "sweep": sweep_brief, "settings": result.settings, "plot": result.plot}
    store.finish_run(run_id, "completed", reason=result.message, summary=json_safe(summary))
    return run_id


def check_lr_widened(task: Task | None, hp: Config, store: Store | None = None, *, steps: int = TRIAL_STEPS,
                     sweep_steps: int = SWEEP_STEPS, max_steps: int = 3 * TRIAL_STEPS,
                     study: str | None = None) -> LRTestResult:
    """`check_lr`, widened before it calls a failure. When neither the discrete trials nor the sweep see the
    loss drop, the lecture's remedies in order: (1) the same rates for 3x the steps (a slow start or a noisy
    task needs longer to show a drop), (2) a wider range (WIDER_LRS, 1 .. 1e-5, and a sweep over
    WIDER_SWEEP_RANGE) at those steps. After each, a rate whose loss moved by MOVED_Z standard errors
    (`lr_range.pick_moving_lr`) is picked even if it fell less than 10%: slow learning is learning. The
    verdict is "fail" only when no rate moved the loss in any of them; the message then lists each rate's
    loss change. `settings["attempts"]` records every try.
    """
    long, sweep_long = min(3 * steps, max_steps), min(3 * sweep_steps, 2 * max_steps)
    tries = [(LECTURE_LRS, steps, sweep_steps, SWEEP_RANGE, "the lecture's test"),
             (LECTURE_LRS, long, sweep_long, SWEEP_RANGE, f"{long} steps per rate"),
             (WIDER_LRS, long, sweep_long, WIDER_SWEEP_RANGE,
              f"{long} steps over a wider range (lr 1 .. 1e-5, sweep {WIDER_SWEEP_RANGE[0]:g} .. {WIDER_SWEEP_RANGE[1]:g})")]
    attempts: list[dict[str, Any]] = []
    result = None
    for lrs, n, ns, rng, what in tries:
        result = check_lr(task, hp, store, lrs=lrs, steps=n, sweep_steps=ns, sweep_range=rng, study=study)
        attempts.append({"what": what, "steps": n, "lrs": list(lrs), "sweep_range": list(rng),
                         "suggested_lr": result.suggested_lr, "run": result.run_id,
                         "table": [{k: row.get(k) for k in ("lr", "status", "drop", "z")} for row in result.table]})
        if result.suggested_lr is not None:
            break
        moving = pick_moving_lr(result.table)
        if moving is not None:
            row = next(r for r in result.table if r["lr"] == moving)
            result.suggested_lr, result.verdict = moving, "pass"
            result.rule = "slow but real: no rate dropped 10%, so the rate whose loss moved most surely"
            result.message = (f"suggested lr {moving:.3g}: no trial dropped 10% in {n} steps, but at lr {moving:g} the "
                              f"loss fell {row['drop']:.1%}, {row['z']:.1f} standard errors (slow but real learning; "
                              f"{what}) (not applied)")
            attempts[-1]["suggested_lr"] = moving
            break
    if len(attempts) > 1 and result.verdict == "pass" and result.rule.startswith("discrete"):
        result.message = result.message.replace(" (not applied)", f"; after widening: {attempts[-1]['what']} (not applied)")
    if result.suggested_lr is None:
        moved = "; ".join(f"lr {r['lr']:g}: {r['status']}" + (f", {r['drop']:+.1%}, {r['z']:.1f} s.e."
                                                             if r.get("z") is not None and math.isfinite(r["z"]) else "")
                          for r in result.table)
        result.message = (f"no rate moves the loss, after {len(attempts)} tries ({'; '.join(a['what'] for a in attempts)}): "
                          f"{moved}; check the model and the data (labels, inputs, gradients reaching every layer)")
    result.settings["attempts"] = attempts
    return result


def check_start(task: Task | None, hp: Config, model: nn.Module, *, steps: int = 200) -> CheckResult:
    """Confirm a slow start before blaming the initialization: train `model` (copied) and the same
    architecture freshly initialized by PyTorch's defaults (`reset_parameters()` on every layer) for `steps`
    updates each, same data order and lr, and compare the steps each needs to get 5% below its first loss.
    Passes ("the initialization is fine") unless the default one gets there in under half the steps.
    """
    hp_s = _override(hp, steps=steps, patience=None, ema=None, snapshots=False, schedule="constant",
                     warmup_steps=0, warmup_epochs=0.0)
    task = task or load_task(hp_s)
    fresh = copy.deepcopy(model)
    with _rng_kept():
        torch.manual_seed(hp.seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        scratch = Store("sqlite://")
        starts = {}
        for label, net in (("given", copy.deepcopy(model)), ("default", fresh)):
            r = fit(task, hp_s, store=scratch, quiet=True, evaluate_test=False, checkpoints=False, model=net)
            losses, _ = _losses(scratch, r.run_id)
            starts[label] = _steps_to_drop(losses)
        scratch.close()
    given, default = starts["given"], starts["default"]
    faster = default is not None and (given is None or default < 0.5 * given)
    g = f"{given} steps" if given is not None else f"not within {steps} steps"
    d = f"{default} steps" if default is not None else f"not within {steps} steps"
    if faster:
        verdict, message = "fail", (f"a fresh default initialization starts faster: 5% below its first loss in {d}, "
                                    f"the given one in {g}: the initialization is the cause")
    else:
        verdict, message = "pass", (f"a fresh default initialization starts no faster ({d}, the given one {g}): "
                                    "the slow start is not the initialization's (look at the lr, warmup, normalization)")
    return CheckResult("start", verdict, message, {"steps": steps, "given": given, "default": default})


def _steps_to_drop(losses: Sequence[float], drop: float = 0.05) -> int | None:
    """Steps until the 10-step moving average is `drop` below the first loss (None: never)."""
    from trainlab.doctor.curves import moving_average

    if not losses:
        return None
    sm = moving_average(losses, 10)
    for i, v in enumerate(sm):
        if v <= (1 - drop) * losses[0]:
            return i
    return None
