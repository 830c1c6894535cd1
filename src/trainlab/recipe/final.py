"""The recipe's final model: its schedule placed from step 5's curves (`final_plan.py`), the peak-rate check,
the members trained side by side and ensembled, and the test split evaluated once. Functions of the recipe's
`Steps` (its fixed inputs and search helpers), as the steps before it are its methods.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from trainlab.recipe.configs import final_config
from trainlab.recipe.costs import CostModel
from trainlab.recipe.final_plan import (
    MAX_STRETCH,
    PEAK_FACTORS,
    described,
    pick_peak,
    place_decay,
    shaped,
    spend_final,
    stall_epoch,
)
from trainlab.recipe.plan import (
    FINAL_SAFETY,
    FOLDS,
    MAX_FINAL_EPOCHS,
    MAX_MEMBERS,
    STEP_TITLES,
    mean_std,
    size_final,
)
from trainlab.recipe.records import StepResult, StopRecipe
from trainlab.recipe.steps import Call, Steps, _acc, _grid_text, _what_ran

__all__ = ["final_step", "peak_check", "place_final_decay", "final_members", "size_members", "fitted_to_time",
           "member_minutes", "ENSEMBLE_MIN_EPOCHS", "FIT_GROWTH"]


def place_final_decay(steps: Steps, incumbent: dict, fit_epochs: int) -> dict[str, Any]:
    """The final schedule: from the chosen point's constant-rate curves in step 5 ("placed"), or the
    longest cosine that fits ("fixed", the recipe's schedule before it placed the decay)."""
    constant = int(incumbent["point"].get("epochs") or 0)
    longest = place_decay([None], constant, fit_epochs)   # the longest cosine that fits, its reason said here
    if steps.final_schedule == "fixed":
        return {**longest, "reason": f"fixed: the longest cosine that fits, {longest['epochs']} epochs"}
    stalls = []
    for run_id in (incumbent.get("runs") or {}).values():
        if run_id is not None:
            key, mode = steps.metric
            vals = steps.store.metrics(run_id, [key]).get(key, {}).get("value", [])
            stalls.append(stall_epoch(vals, mode=mode))
    if not stalls:  # step 5 was skipped for the budget: no curve to place the decay from
        return {**longest, "reason": f"no constant-rate curves (step 5 skipped): the longest schedule that fits, "
                                     f"{longest['epochs']} epochs"}
    return place_decay(stalls, constant, fit_epochs)


ENSEMBLE_MIN_EPOCHS = 10   # an ensemble's members train at least this many epochs each, else one model trains
FIT_GROWTH = 1.5   # a final sized by the time may train up to 1.5x the epochs the cost model expects


def size_members(costs: CostModel, seconds: float, workers: int) -> tuple[dict[str, int], int]:
    """The final's members and epochs ({"members", "epochs", "patience"}) and the workers that train them:
    one member per worker (at most MAX_MEMBERS) when each gets its epochs in `seconds`, at least
    ENSEMBLE_MIN_EPOCHS; else fewer, down to one model trained in this process, with the threads of the cores
    idle when the recipe began (`Steps.threads`). Members sharing the cores of a slow model train a few epochs
    each, and two undertrained members lose to one trained twice as long (shapes32/resnet at 5 minutes: 2
    members x 3 epochs against the default config's one model x 5)."""
    for members in range(max(1, min(workers, MAX_MEMBERS)), 0, -1):
        size, used = costs.sized(seconds, lambda s, e, w, r: size_final(s, e, w, run_s=r, members=members),
                                 lambda z: z["members"])
        fits = costs.cost(size["members"], size["epochs"], used, used > 1) <= seconds
        if fits and (members == 1 or size["epochs"] >= ENSEMBLE_MIN_EPOCHS):
            break
    return size, used


def fitted_to_time(decay: dict[str, Any], members: int, workers: int, costs: CostModel, seconds: float) -> dict[str, Any]:
    """The final's decay fitted to the time itself (`Config.minutes`) when the time, not the evidence, set its
    length (one more epoch would not fit by the cost model's estimate): its epochs raised to FIT_GROWTH x the
    estimate (within the placed decay's stretch), and each member's run fits its schedule's length to its
    minutes after its first epoch, measured. A whole-epoch plan from an estimate leaves up to an epoch
    unused, or cuts the decay when the estimate was low: on a slow model, a quarter of the training."""
    epochs, parallel = int(decay["epochs"]), workers > 1
    if costs.cost(members, epochs + 1, min(workers, members) if parallel else 1, parallel) <= FINAL_SAFETY * seconds:
        return decay   # the evidence set the length, and it fits with time to spare
    cap = max(epochs + 1, math.ceil(FIT_GROWTH * epochs))
    if decay.get("stall_epoch") is not None:
        cap = min(cap, max(epochs, math.ceil(MAX_STRETCH * int(decay.get("placed_epochs") or epochs))))
    cap = min(cap, MAX_FINAL_EPOCHS)
    if cap <= epochs:
        return {**decay, "fit": True}
    return {**decay, "epochs": cap, "patience": max(5, cap // 2), "fit": True, "estimated_epochs": epochs,
            "reason": f"{decay['reason']}; fitted to the time: at most {cap} epochs, each member's length set "
                      f"after its first epoch from its measured speed ({epochs} by the estimate)"}


def member_minutes(deadline: float, members: int, workers: int, costs: CostModel) -> float:
    """Each final member's `minutes`: the time to the deadline, less the search's own start-up, shared by
    the rounds its members train in (`workers` at a time)."""
    parallel = workers > 1
    rounds = -(-members // max(1, workers))
    return max(0.05, (deadline - time.time() - costs.overhead(parallel)) / rounds / 60.0)


def final_members(steps: Steps, res) -> list[dict]:
    """The final search's members (one per fold), marked as the final model, with their checkpoints."""
    steps.mark([r["run"] for r in res.leaderboard], "final", "the final model")
    members = []
    for r in sorted(res.leaderboard, key=lambda r: r["params"]["split_seed"]):
        run = steps.store.run(r["run"]) if r["run"] is not None else None
        members.append({"run": r["run"], "fold": r["params"]["split_seed"], "val_acc": r["value"],
                        "status": r["status"], "epochs": r["epochs"],
                        "best_epoch": run["best_epoch"] if run else None,
                        "reason": run["reason"] if run else None,
                        "fitted": (run.get("summary") or {}).get("fitted") if run else None,
                        "checkpoint": run["checkpoint"] if run else None})
    return members


def peak_check(steps: Steps, call: Call, point: dict, decay: dict, members: int,
                cost: Callable[[int, int], float]) -> dict | None:
    """The final decay's peak rate (`final_plan.pick_peak`): the placed schedule trained from the chosen
    constant rate x each of PEAK_FACTORS on both validation folds, when that and the final members
    (`members` x the placed epochs; `cost(trainings, epochs)` in seconds) fit in the final's time.
    None when they do not: the final model starts its decay at the chosen rate, as before."""
    epochs, n = int(decay["epochs"]), len(PEAK_FACTORS) * len(FOLDS)
    if cost(n, epochs) + cost(members, epochs) > FINAL_SAFETY * call.seconds:
        return None
    t0 = time.time()
    lrs = [point["lr"] * f for f in PEAK_FACTORS]
    shape = shaped(decay, steps.hp.schedule, steps.hp.gamma)
    base = final_config(steps.hp, point, epochs, decay["patience"], metric=steps.metric, decay=shape)
    plan = {"epochs": epochs, "trainings": n, "prune": "none", "workers": steps.workers}
    res = steps.search(base, {"lr": _grid_text(lrs), "split_seed": _grid_text(list(FOLDS))}, plan,
                       f"{steps.study}/final-peak", call.deadline, checkpoints=False)
    steps.mark([r["run"] for r in res.leaderboard], "final",
               f"the final decay's peak rate: {shape['described']} from the chosen constant rate "
               f"x {', x'.join(f'{f:g}' for f in PEAK_FACTORS)}")
    picked = pick_peak(res.leaderboard, point["lr"], steps.metric[1])
    said = ", ".join(f"x{f:g} {_acc(m)}" for f, m in picked["means"].items())
    return {**picked, "constant_lr": point["lr"], "seconds": time.time() - t0, "study": f"{steps.study}/final-peak",
            "reason": f"peak rate x{picked['factor']:g} of the constant rate {point['lr']:.3g} = {picked['lr']:.3g} "
                      f"(mean {steps.metric[0]} over folds {', '.join(map(str, FOLDS))}: {said})"}


def final_step(steps: Steps, call: Call, incumbent: dict) -> StepResult:
    from trainlab.ensemble import evaluate_ensemble, members_from_runs

    plan = call.plan
    if plan is None:
        costs = steps.costs(call)
        size, workers = size_members(costs, call.seconds, steps.workers)
        decay = place_final_decay(steps, incumbent, size["epochs"])
        point, peak = dict(incumbent["point"]), None
        if steps.final_schedule == "placed":
            parallel = workers > 1

            def cost(m: int, e: int) -> float:
                return costs.cost(m, e, min(steps.workers, m) if parallel else 1, parallel)

            peak = peak_check(steps, call, point, decay, size["members"], cost)
            if peak is not None:
                point["lr"] = peak["lr"]
            decay = spend_final(call.left() if peak is not None else call.seconds, decay, size["members"], cost)
            if parallel:
                workers = min(steps.workers, decay["members"])
        decay = fitted_to_time(decay, decay.get("members", size["members"]), workers, costs, call.left())
        decay = shaped(decay, steps.hp.schedule if steps.final_schedule == "placed" else "cosine", steps.hp.gamma)
        members = decay.get("members", size["members"])
        plan = {**size, "members": members, "study": f"{steps.study}/final", "trainings": members,
                "prune": "none", "workers": workers, "point": point, "folds": list(range(members)),
                "decay": decay, "epochs": decay["epochs"], "patience": decay["patience"], "peak": peak,
                "threads": costs.worker_threads if workers > 1 else costs.threads}
        steps.save_plan(call, plan)
    base = final_config(steps.hp, plan["point"], plan["epochs"], plan["patience"], metric=steps.metric,
                        decay=plan.get("decay"))
    if (plan.get("decay") or {}).get("fit") and call.deadline is not None:
        base = base.model_copy(update={"minutes": member_minutes(call.deadline, plan["members"], plan["workers"],
                                                                 steps.costs(call))})
    res = steps.search(base, {"split_seed": _grid_text(plan["folds"])}, plan, plan["study"],
                       call.deadline, checkpoints=True)
    members = final_members(steps, res)
    usable = [m for m in members if m["checkpoint"]]
    least = None
    if not usable:
        # No member finished an epoch in the time left (a loaded machine, a slow start): the recipe's
        # deliverable is a model, so the least one, one member here for one epoch, past the deadline, said so.
        t0 = time.time()
        one = {**plan, "trainings": 1, "workers": 1, "epochs": 1, "study": f"{plan['study']}-least"}
        res = steps.search(final_config(steps.hp, plan["point"], 1, plan["patience"], metric=steps.metric),
                           {"split_seed": _grid_text(plan["folds"][:1])}, one, one["study"], None,
                           checkpoints=True, workers=1)
        members = final_members(steps, res)
        usable = [m for m in members if m["checkpoint"]]
        least = time.time() - t0
    if not usable:
        raise StopRecipe("final model: no member finished an epoch (the budget is too small)")
    # The test split, once, for the final model only.
    ens = evaluate_ensemble(members_from_runs(steps.store, [m["run"] for m in usable]), split="test")
    val_mean, val_std = mean_std([m["val_acc"] for m in usable])
    hp_final = base
    yaml_path = steps.out / "final.yaml"
    steps.out.mkdir(parents=True, exist_ok=True)
    header = (f"# trainlab recipe, study {steps.study}: the final config (train it with: trainlab train {yaml_path.name})\n"
              f"# chosen on validation: mean {steps.metric[0]} {_acc(incumbent['mean'])} +- {_acc(incumbent['std'])} over folds "
              f"{', '.join(sorted(incumbent['folds']))} (constant lr, {incumbent['point']['epochs']} epochs); "
              f"final model {steps.metric[0]} {val_mean:.4f}, test/{ens.metric} {ens.ensemble_acc:.4f}\n")
    yaml_path.write_text(header + hp_final.to_yaml())
    kind = f"ensemble of {len(usable)} (one per validation fold)" if len(usable) > 1 else "one model"
    if plan.get("threads"):
        kind += f" ({plan['threads']} torch thread{'s' if plan['threads'] > 1 else ''} each)" if len(usable) > 1 else \
            f" ({plan['threads']} torch thread{'s' if plan['threads'] > 1 else ''})"
    msg = (f"{kind}: {steps.metric[0]} {val_mean:.4f}" + (f" +- {val_std:.4f}" if len(usable) > 1 else "")
           + f", test/{ens.metric} {ens.ensemble_acc:.4f}; {_what_ran(usable, plan['epochs'])}; lr "
           f"{plan['point']['lr']:.3g}, weight decay {plan['point']['weight_decay']:g}; planned: "
           f"{described(plan.get('decay'), plan['epochs'])}, patience {plan['patience']}"
           + (f" ({plan['decay']['reason']})" if plan.get("decay") else "")
           + (f"; {plan['peak']['reason']}" if plan.get("peak") else "")
           + (f"; over the budget: no member finished an epoch in the time left, so one member trained one "
              f"epoch ({least:.0f} s)" if least is not None else ""))
    ev = {**plan, "least_model_s": least, "ran": _what_ran(usable, plan["epochs"]), "members": members, "val_acc": val_mean,
          "val_std": val_std, "test_acc": ens.ensemble_acc,
          "test_loss": ens.ensemble_loss, "test_n": ens.n, "ensemble": len(usable) > 1, "config": hp_final.model_dump(mode="json"),
          "yaml": str(yaml_path), "cv": {"folds": incumbent["folds"], "mean": incumbent["mean"],
                                         "std": incumbent["std"]}, "search_seconds": res.seconds,
          **steps.judged_by, "test_metric": f"test/{ens.metric}"}
    return StepResult("final", 8, STEP_TITLES[8], "done", msg, ev)
