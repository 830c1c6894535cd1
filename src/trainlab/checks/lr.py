"""The learning-rate range test: discrete short trials and an exponential sweep, each method's pick and why."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from trainlab.config import Config
from trainlab.doctor.curves import json_safe
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
from trainlab.schedules import exponential_ramp
from trainlab.store import Store
from trainlab.tasks import Task, load_task
from trainlab.checks.common import override, rng_kept, stored_losses
from trainlab.train.loop import fit

__all__ = ["LRTestResult", "check_lr", "check_lr_widened", "LECTURE_LRS"]


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
    base = override(hp, weight_decay=weight_decay, schedule="constant", warmup_steps=0, warmup_epochs=0.0,
                     steps=steps, patience=None, ema=None, snapshots=False)
    task = task or load_task(base)
    scratch = Store("sqlite://")   # the trials' curves; only the check's own run goes to `store`
    rows: list[dict[str, Any]] = []
    sweep = None
    with rng_kept():
        if method in ("both", "discrete"):
            for lr in sorted(lrs, reverse=True):
                r = fit(task, override(base, lr=float(lr)), store=scratch, quiet=True, evaluate_test=False,
                        checkpoints=False, model=copy.deepcopy(model) if model is not None else None)
                losses, _ = stored_losses(scratch, r.run_id)
                summary = lr_trial_summary(losses, r.reason if r.status == "diverged" else None)
                rows.append({"lr": float(lr), **summary, "losses": losses})
        if method in ("both", "sweep"):
            hp_s = override(base, lr=float(hi), steps=sweep_steps)
            r = fit(task, hp_s, store=scratch, quiet=True, evaluate_test=False, checkpoints=False,
                    model=copy.deepcopy(model) if model is not None else None,
                    schedule=exponential_ramp(sweep_steps, lo / hi))
            losses, sweep_lrs = stored_losses(scratch, r.run_id)
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
                     study: str | None = None, seconds: float | None = None) -> LRTestResult:
    """`check_lr`, widened before it calls a failure. When neither the discrete trials nor the sweep see the
    loss drop, the lecture's remedies in order: (1) the same rates for 3x the steps (a slow start or a noisy
    task needs longer to show a drop), (2) a wider range (WIDER_LRS, 1 .. 1e-5, and a sweep over
    WIDER_SWEEP_RANGE) at those steps. After each, a rate whose loss moved by MOVED_Z standard errors
    (`lr_range.pick_moving_lr`) is picked even if it fell less than 10%: slow learning is learning. The
    verdict is "fail" only when no rate moved the loss in any of them; the message then lists each rate's
    loss change. `settings["attempts"]` records every try.

    `seconds`: the time the whole test may take (None: no limit). A widened try is then shortened to what
    fits, at the first try's measured seconds per step, and left out when not even 1.5x the first try's
    steps fit: the result then has no suggestion and `settings["cut"]` says why (not a failure: the caller
    knows what else showed the model learning).
    """
    t_start = time.time()
    tries = [(LECTURE_LRS, 1.0, SWEEP_RANGE, "the lecture's test"),
             (LECTURE_LRS, 3.0, SWEEP_RANGE, "{n} steps per rate"),
             (WIDER_LRS, 3.0, WIDER_SWEEP_RANGE,
              f"{{n}} steps over a wider range (lr 1 .. 1e-5, sweep {WIDER_SWEEP_RANGE[0]:g} .. {WIDER_SWEEP_RANGE[1]:g})")]
    attempts: list[dict[str, Any]] = []
    result, unit_s, cut = None, None, None
    for lrs, factor, rng, what in tries:
        if unit_s is not None and seconds is not None:   # a widened try: as long as the time left holds
            left = seconds - (time.time() - t_start)
            factor = min(factor, left / (unit_s * (len(lrs) * steps + sweep_steps)))
            if factor < 1.5:
                cut = (f"no time to widen the test ({max(0.0, left):.0f} s left of {seconds:.0f} s; "
                       f"{steps} more steps per rate take about {unit_s * (len(lrs) * steps + sweep_steps):.0f} s)")
                break
        n = min(max(steps, int(factor * steps)), max_steps)
        ns = min(max(sweep_steps, int(factor * sweep_steps)), 2 * max_steps)
        what = what.format(n=n)
        t0 = time.time()
        result = check_lr(task, hp, store, lrs=lrs, steps=n, sweep_steps=ns, sweep_range=rng, study=study)
        unit_s = (time.time() - t0) / (len(lrs) * n + ns)
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
    assert result is not None
    result.settings["attempts"] = attempts
    if cut is not None and result.suggested_lr is None:
        result.settings["cut"] = cut
        result.message = (f"no rate dropped the loss within {attempts[-1]['steps']} steps per rate, and {cut}")
        return result
    if len(attempts) > 1 and result.verdict == "pass" and result.rule.startswith("discrete"):
        result.message = result.message.replace(" (not applied)", f"; after widening: {attempts[-1]['what']} (not applied)")
    if result.suggested_lr is None:
        moved = "; ".join(f"lr {r['lr']:g}: {r['status']}" + (f", {r['drop']:+.1%}, {r['z']:.1f} s.e."
                                                             if r.get("z") is not None and math.isfinite(r["z"]) else "")
                          for r in result.table)
        result.message = (f"no rate moves the loss, after {len(attempts)} tries ({'; '.join(a['what'] for a in attempts)}): "
                          f"{moved}; check the model and the data (labels, inputs, gradients reaching every layer)")
    return result
