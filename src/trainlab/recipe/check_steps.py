"""The recipe's steps 1-3, the checks, as functions of its `Steps` (as `final.py` holds the final step):

    init_step      1  the loss at initialization (check_init)
    overfit_step   2  overfit a few minibatches, with the remedies (check_overfit)
    lr_step        3  the learning-rate test (check_lr_widened)

They keep to the checks' cap (`Call.cap`): a slow model's checks train what fits, and a check cut by time
is a `warn`, never a `fail`.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Sequence

from trainlab.config import apply_overrides
from trainlab.recipe.plan import MIN_OVERFIT_STEPS, STEP_TITLES, next_overfit_lr
from trainlab.recipe.records import Interrupted, StepResult
from trainlab.recipe.steps import Call, Steps, _finite
from trainlab.store import Store

__all__ = ["init_step", "overfit_step", "lr_step", "train_step_s", "loss_fell_at", "LR_STEPS_SHORT"]

LR_STEPS_SHORT = 20   # step 3's steps per trial when the budget left cannot hold a 50-step test


def loss_fell_at(attempts: Sequence[dict]) -> float | None:
    """The last rate of step 2's tries at which the loss fell (it passed, or was only too slow): the rate a
    step 3 cut by the checks' cap goes on with. None when no try moved the loss."""
    fell = [a["lr"] for a in attempts if a.get("verdict") == "pass" or a.get("cause") == "too slow"]
    return fell[-1] if fell else None


def init_step(steps: Steps, call: Call) -> StepResult:
    from trainlab.checks import check_init

    t0 = time.time()
    r = check_init(steps.task, steps.hp, steps.store, study=steps.study)
    fwd = (time.time() - t0) / max(1, r.evidence.get("batches", 10))
    ev = {**r.evidence, "check_run": r.run_id, "forward_s": fwd, "step_s_estimate": 3 * fwd}
    ev.pop("batch_losses", None)
    return StepResult("init", 1, STEP_TITLES[1], r.verdict, r.message, ev)


def overfit_step(steps: Steps, call: Call) -> StepResult:
    from trainlab.checks import check_overfit

    step_s = call.evidence("init").get("step_s_estimate") or 0.01
    attempts, lr = [], steps.hp.lr
    t_start = time.time()
    t_end, t_cap = t_start + call.seconds, t_start + call.cap
    result, cut = None, None
    for attempt in range(4):   # the first try and up to three remedies, one decade at a time
        # Sized to the time left (about 3x the steps' cost, for the validations on the sample every few
        # steps), never below 200 steps (a remedy is tried even when it overruns this small share) unless
        # the checks' cap cannot hold them: a slow model then gets the steps that fit, at least
        # MIN_OVERFIT_STEPS, enough to see its loss fall.
        now = time.time()
        fitting = (t_cap - now) / (1.5 * step_s)
        max_steps = int(min(1000, max(200, (t_end - now) / (3 * step_s)), max(MIN_OVERFIT_STEPS, fitting)))
        t0 = time.time()
        r = check_overfit(steps.task, apply_overrides(steps.hp, {"lr": lr}), steps.store, max_steps=max_steps,
                          study=steps.study, runs_dir=steps.runs_dir)
        seconds = time.time() - t0
        if call.interrupted():
            raise Interrupted()
        done = r.evidence.get("steps") or 0
        if done:  # the check also validates on the sample every few steps: about a third of its time
            step_s = seconds / done / 1.5
        attempts.append({"lr": lr, "verdict": r.verdict, "message": r.message, "steps": done,
                         "max_steps": max_steps, "cause": r.evidence.get("cause"), "run": r.run_id,
                         "seconds": seconds})
        result = r
        if r.passed:
            break
        nxt = next_overfit_lr(attempts)
        if nxt is None:
            break
        if time.time() + MIN_OVERFIT_STEPS * 1.5 * step_s > t_cap:
            cut = f"no time for the remedy at lr {nxt:g} within the checks' cap ({call.cap:.0f} s)"
            break
        lr = nxt
    ev = {"attempts": attempts, "lr": lr, "step_s": step_s, "check_run": result.run_id if result else None,
          "examples": result.evidence.get("examples") if result else None,
          "train_step_s": train_step_s(steps.store, result),
          "loss_fell_at": loss_fell_at(attempts)}
    if result is not None and result.passed:
        extra = f" (at lr {lr:g}, after {len(attempts) - 1} remed{'y' if len(attempts) == 2 else 'ies'})" \
            if len(attempts) > 1 else ""
        return StepResult("overfit", 2, STEP_TITLES[2], "pass", result.message + extra, ev)
    tried_txt = ", ".join(f"{a['lr']:g}" for a in attempts)
    msg = (result.message if result else "no time to try") + f"; learning rates tried: {tried_txt}"
    if cut:
        # a remedy the cap left out is not evidence that none would work: step 3 tests the rates
        return StepResult("overfit", 2, STEP_TITLES[2], "warn",
                          msg + f"; {cut}, so the recipe goes on (step 3 tests the rates)", ev)
    if any(a["cause"] == "too slow" for a in attempts):
        # the loss fell at some rate: the model learns, only not to 100% in the steps this budget holds;
        # stopping here would give up on a model that can learn, so the recipe goes on and says so
        return StepResult("overfit", 2, STEP_TITLES[2], "warn",
                          msg + "; the loss fell, so the recipe goes on (more steps or a bigger model would "
                                "memorize the sample)", ev)
    return StepResult("overfit", 2, STEP_TITLES[2], "fail", msg, ev)


def train_step_s(store: Store, result: Any) -> float | None:
    """Seconds of one training update at the config's batch size, from a check run's epochs' training
    times (validation excluded; the first epoch left out when there are more, it pays the warm-up): what
    the cost model turns into seconds per epoch before any search has run."""
    if result is None or result.run_id is None:
        return None
    times = store.metrics(result.run_id, ["epoch_time_s"]).get("epoch_time_s", {}).get("value", [])
    batches = result.evidence.get("batches") or 0
    times = [t for t in times if _finite(t)]
    if not times or not batches:
        return None
    times = times[1:] if len(times) > 1 else times
    return statistics.median(times) / batches


def lr_step(steps: Steps, call: Call) -> StepResult:
    from trainlab.checks import check_lr_widened

    step_s = call.evidence("overfit").get("step_s") or call.evidence("init").get("step_s_estimate") or 0.01
    # 4 discrete trials of s steps and a sweep of 2s steps, plus a validation per trial: at least 50 steps,
    # a meaningful test, unless the checks' cap cannot hold that (a slow model, or a short budget whose
    # start-up took the checks' share): then what fits, at least 20, which still ranks the rates that move
    # the loss at once, rather than overrun the budget by the whole test (50 steps of mnist1d/resnet: 15-22 s)
    per_step = 6.5 * step_s
    floor = 50 if min(call.cap, 2 * call.seconds) >= 50 * per_step else LR_STEPS_SHORT
    n = int(min(100, max(floor, call.seconds / per_step)))
    overfit = call.evidence("overfit")
    fell_at = overfit.get("loss_fell_at", loss_fell_at(overfit.get("attempts", [])))  # (a study stored before it was kept)
    if math.isfinite(call.cap):
        n = max(LR_STEPS_SHORT, min(n, int(call.cap / per_step)))
        # the shortest test, at what such tests cost (their trials' set-up and validations: about twice
        # the steps' own time), beyond the cap: a slow model would spend the searches' time on a test too
        # short to see its loss drop, so the rate at which step 2's loss fell goes on
        shortest = 2 * per_step * LR_STEPS_SHORT
        if shortest > call.cap and fell_at is not None:
            lr = fell_at
            msg = (f"suggested lr {lr:g}, the rate at which step 2's loss fell: the shortest test ({LR_STEPS_SHORT} "
                   f"steps per rate, about {shortest:.0f} s) does not fit the checks' cap ({call.cap:.0f} s left), "
                   "so it was not run")
            return StepResult("lr", 3, STEP_TITLES[3], "warn", msg,
                              {"suggested_lr": lr, "rule": "step 2: no time for the test", "table": [],
                               "skipped": msg, "check_run": None, "step_s": step_s})
    t0 = time.time()
    # never stops a model that can learn: widened (more steps, a wider range) before it calls a failure,
    # as far as the checks' cap holds; cut there, the rate at which step 2's loss fell goes on
    r = check_lr_widened(steps.task, steps.hp, steps.store, steps=n, sweep_steps=max(20, 2 * n),
                         study=steps.study, seconds=call.cap if math.isfinite(call.cap) else None)
    seconds = time.time() - t0
    attempts = r.settings.get("attempts") or [{}]
    tried_steps = sum((a.get("steps") or n) * (len(a.get("lrs") or ()) + 2) for a in attempts)
    ev = {"suggested_lr": r.suggested_lr, "discrete_lr": r.discrete_lr, "sweep_lr": r.sweep_lr,
          "agree": r.agree, "rule": r.rule, "table": r.table, "trial_steps": n, "check_run": r.run_id,
          "attempts": attempts, "seconds": seconds, "step_s": seconds / max(1, tried_steps)}
    verdict, message = r.verdict, r.message
    if r.suggested_lr is None:
        ev["suggested_lr"] = steps.hp.lr
        if r.settings.get("cut"):   # a test cut short is no evidence that no rate trains the model
            lr = fell_at if fell_at is not None else steps.hp.lr
            whose = "the rate at which step 2's loss fell" if fell_at is not None else "the config's own rate"
            ev.update(suggested_lr=lr, rule=f"the test was cut by the checks' cap: {whose}")
            verdict = "warn"
            message = f"suggested lr {lr:g}, {whose}: {r.message}"
    return StepResult("lr", 3, STEP_TITLES[3], verdict, message, ev)
