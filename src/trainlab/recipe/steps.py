"""The recipe's steps: what a step does, given what the steps before it found.

    init_step      1  the loss at initialization (check_init)             check_steps.py
    overfit_step   2  overfit a few minibatches, with the remedies         check_steps.py
    lr_step        3  the learning-rate test (check_lr_widened)            check_steps.py
    coarse_step    4  the coarse grid of rates x weight decays
    refine_step    5  the finer grid (or the doctor's move) on two validation folds
    doctor_step    6  the learning-curve doctor picks the next move
    loop_step      7  back to 5, or on to the final model
    final_step        the final model (an ensemble of one member per fold with 2+ workers), tested once: final.py

A step reads the recipe's fixed inputs (`Steps`' fields) and its call (`Call`: its step run, the plan an
interrupted earlier try stored, its seconds and its phase's deadline, the steps done before it) and
returns a `StepResult`. It trains and searches in the store, but the runner (`runner.py`) records it,
prints it, resumes it and enforces the budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from trainlab.config import Config
from trainlab.recipe.configs import search_base
from trainlab.recipe.costs import CostModel, measure_search
from trainlab.recipe.plan import (
    COARSE_WEIGHT_DECAYS,
    FOLDS,
    MAX_ROUNDS,
    MIN_REFINE_EPOCHS,
    PURPOSES,
    STEP_TITLES,
    choose_move,
    coarse_grid,
    epochs_fitting,
    rank_candidates,
    rank_coarse,
    refine_grid,
    search_rounds,
    size_coarse,
    size_refine,
)
from trainlab.recipe.records import StepResult
from trainlab.store import Store

if TYPE_CHECKING:  # for the annotation only: importing trainlab.recipe stays free of torch
    from trainlab.tasks import Task

__all__ = ["Call", "Steps"]


@dataclass(frozen=True)
class Call:
    """What one step is given by the runner for this call."""

    run_id: int                        # the step's own run in the store (kind "step")
    plan: dict | None                  # the search plan an interrupted earlier try stored, else None
    seconds: float                     # the step's allowance: its share of its phase's time left
    deadline: float                    # time.time() at which the step's phase ends
    earlier: tuple[StepResult, ...]    # the steps done before this one (read back ones too), in order
    interrupted: Callable[[], bool] = lambda: False   # whether Ctrl-C arrived (fit() swallows it)
    cap: float = math.inf              # the most seconds the step may take, its floors included (the checks)

    def evidence(self, key: str) -> dict:
        """The evidence of the latest earlier step `key`; {} when there is none."""
        for s in reversed(self.earlier):
            if s.key == key:
                return s.evidence
        return {}

    def left(self) -> float:
        """Seconds left in the step's phase."""
        return max(0.0, self.deadline - time.time())


# --- helpers ----------------------------------------------------------------------------------------------

def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _acc(x: Any) -> str:
    """An accuracy for a message; 'n/a' for a missing one (NaN, or None once read back from JSON)."""
    return f"{x:.4f}" if _finite(x) is not None else "n/a"


def _grid_text(values: Sequence[Any]) -> str:
    """A search space's grid(...) of these values."""
    return "grid(" + ", ".join(repr(float(v)) if isinstance(v, float) else str(v) for v in values) + ")"


def _what_ran(members: Sequence[dict], planned: int) -> str:
    """What the final trainings actually did: epochs run, why they stopped, their best epoch."""
    parts = []
    for m in members:
        fit = m.get("fitted") or {}
        why = m.get("reason") or (f"its schedule fitted to {fit['epochs']:.3g} epochs in its {fit['minutes']:.3g} minutes"
                                   if fit.get("updates", 0) < fit.get("planned_updates", 0) else None) or (
            "all planned epochs" if m.get("epochs") == planned else m.get("status"))
        parts.append(f"{m.get('epochs')} epochs ({why}), best epoch {m.get('best_epoch')}")
    head = "ran " if len(parts) == 1 else "members ran "
    return head + "; ".join(parts)


# --- the steps --------------------------------------------------------------------------------------------



@dataclass
class Steps:
    """The recipe's fixed inputs, and one method per step."""

    hp: Config
    task: Task
    store: Store
    db_url: str
    study: str
    out: Path
    runs_dir: str
    workers: int
    updates_per_epoch: int    # of a search's training (its RunPlan): the cost model's epochs from steps
    warmup_s: float = 0.0     # torch's one-time start-up cost in this process (a worker pays it again)
    final_schedule: str = "placed"   # "placed": the decay from step 5's curves; "fixed": the longest cosine that fits
    threads: int = 1          # torch threads of this process's trainings (the checks, searches and a final model here)
    thread_speedup: float | None = None   # an update at `threads` against one, as measured (startup.thread_speedup)

    @property
    def metric(self) -> tuple[str, str]:
        """(name, mode) of what the recipe's runs are judged by: val/acc (max), or the task's own (a regression:
        val/loss, min; `metrics.for_task`)."""
        from trainlab.metrics import for_task

        hp = for_task(self.hp, self.task.task_metrics)[0]
        return hp.early_stop_metric, hp.mode

    @property
    def judged_by(self) -> dict[str, str]:
        """{"metric", "mode"}: kept in the search steps' evidence, so the report draws and labels that metric."""
        return {"metric": self.metric[0], "mode": self.metric[1]}

    def costs(self, done: Call | Sequence[StepResult]) -> CostModel:
        """The cost model from what the steps `done` (a call's earlier steps, or the runner's results so far)
        measured: the one place it is built."""
        earlier = done.earlier if isinstance(done, Call) else done
        from trainlab.search.workers import threads_per_worker

        return CostModel(self.workers, self.updates_per_epoch, self.warmup_s, tuple((s.key, s.evidence) for s in earlier),
                         threads=self.threads, worker_threads=threads_per_worker(self.workers),
                         speedup=self.thread_speedup)

    def save_plan(self, call: Call, plan: dict) -> None:
        """Keep a search's plan with its step run, so that an interrupted search resumes with the same one."""
        self.store.update_run(call.run_id, summary={"plan": plan})

    def mark(self, run_ids: Sequence[int | None], phase: str, why: str) -> None:
        """Store each trial's purpose with it: the findings its phase expects by design (PURPOSES) are then
        counted by the doctor and the dashboard, not shown as problems."""
        purpose = {"phase": phase, "expects": list(PURPOSES[phase]), "why": why}
        for run_id in run_ids:
            if run_id is not None:
                self.store.update_run(run_id, summary={"purpose": purpose})

    def _measure(self, runs: Sequence[dict], search_seconds: float, n_workers: int) -> dict[str, float]:
        """measure_search on a search's runs, with their epochs' times (fit's epoch_time_s) from the store."""
        timed = []
        for r in runs:
            secs, epochs = (r.get("summary") or {}).get("seconds"), r.get("epochs")
            times = (self.store.metrics(r["id"], ["epoch_time_s"]).get("epoch_time_s", {}).get("value", [])
                     if secs and epochs else [])
            timed.append({"seconds": secs, "epochs": epochs, "epoch_times": times,
                          "completed": r["status"] == "completed"})
        return measure_search(timed, search_seconds, n_workers)

    # ---- step 4: coarse grid
    def search(self, base: Config, space: dict, plan: dict, study: str, deadline: float, checkpoints: bool,
                workers: int | None = None):
        from trainlab.search import run_search

        workers = workers or plan.get("workers") or self.workers
        return run_search(base, space, strategy="grid", workers=min(workers, plan.get("trainings", workers)),
                          study=study, db=self.db_url, prune=plan.get("prune", "none"), epochs=plan["epochs"],
                          runs_dir=self.runs_dir, checkpoints=checkpoints, quiet=True, deadline=deadline)

    def coarse_step(self, call: Call) -> StepResult:
        plan = call.plan
        if plan is None:
            center = float(call.evidence("lr").get("suggested_lr") or self.hp.lr)
            size, workers = self.costs(call).sized(call.seconds, lambda s, e, w, r: size_coarse(s, e, w, run_s=r),
                                                   lambda z: z["n_lrs"] * z["n_wds"])
            lrs, wds = coarse_grid(center, size["n_lrs"], size["n_wds"])
            plan = {"lrs": lrs, "wds": wds, "epochs": size["epochs"], "prune": size["prune"], "center": center,
                    "study": f"{self.study}/coarse", "trainings": len(lrs) * len(wds), "workers": workers,
                    "epoch_s_estimate": self.costs(call).epoch_seconds()}
            self.save_plan(call, plan)
        base = search_base(self.hp, split_seed=FOLDS[0])
        space = {"lr": _grid_text(plan["lrs"]), "weight_decay": _grid_text(plan["wds"])}
        res = self.search(base, space, plan, plan["study"], call.deadline, checkpoints=False)
        self.mark([r["run"] for r in res.leaderboard], "coarse",
                   f"a {plan['epochs']}-epoch coarse-grid trial at a constant rate (rates half a decade and more "
                   "around step 3's): short, undecayed and off the best rate by design")
        rows = [{"lr": r["params"].get("lr"), "weight_decay": r["params"].get("weight_decay"), "value": r["value"],
                 "status": r["status"], "epochs": r["epochs"], "run": r["run"]} for r in res.leaderboard]
        runs = [self.store.run(r["run"]) for r in rows if r["run"] is not None]
        measured = self._measure(runs, res.seconds, plan.get("workers", 1))
        ranked = rank_coarse(rows, plan["epochs"], self.metric[1])
        if not ranked:  # the budget ran out while the workers started: go on from step 3's rate
            best = {"lr": plan["center"], "weight_decay": COARSE_WEIGHT_DECAYS[0], "value": None, "status": "not run",
                    "epochs": 0, "run": None}
            msg = (f"no grid point finished within the budget ({res.seconds:.0f} s, {len(rows)} started): going on "
                   f"with step 3's rate {plan['center']:.3g} and weight decay {best['weight_decay']:g}")
            ev = {**plan, "rows": rows, "ranked": [best], "best": best, "search_seconds": res.seconds,
                  "counts": res.counts, **measured, **self.judged_by}
            return StepResult("coarse", 4, STEP_TITLES[4], "done", msg, ev)
        best = ranked[0]
        msg = (f"best lr {best['lr']:.3g}, weight decay {best['weight_decay']:g}: {self.metric[0]} {best['value']:.4f} after "
               f"{best['epochs']} epochs ({len(plan['lrs'])} rates x {len(plan['wds'])} weight decays, "
               f"{plan['epochs']} epochs" + (", successive halving" if plan["prune"] == "sha" else "") + ")")
        ev = {**plan, "rows": rows, "ranked": [r for r in ranked[:3]], "best": best, "search_seconds": res.seconds,
              "counts": res.counts, **measured, **self.judged_by}
        return StepResult("coarse", 4, STEP_TITLES[4], "done", msg, ev)

    def skip_coarse(self, call: Call, why: str) -> StepResult:
        """Step 4 when the budget cannot hold it (`_Recipe.fits`): step 3's rate goes on."""
        center = float(call.evidence("lr").get("suggested_lr") or self.hp.lr)
        best = {"lr": center, "weight_decay": COARSE_WEIGHT_DECAYS[0], "value": None, "status": "not run",
                "epochs": 0, "run": None}
        msg = f"{why}; going on with step 3's rate {center:.3g} and weight decay {best['weight_decay']:g}"
        return StepResult("coarse", 4, STEP_TITLES[4], "skipped", msg,
                          {"center": center, "rows": [], "ranked": [best], "best": best, "skipped": why})

    # ---- steps 5-7: refine, doctor, loop
    def skip_refine(self, call: Call, why: str) -> StepResult:
        """Steps 5-7 when the budget cannot hold them: the final model takes step 4's best point."""
        c = call.evidence("coarse")["best"]
        point = {"lr": c["lr"], "weight_decay": c["weight_decay"], "width": self.hp.width,
                 "dropout": self.hp.dropout or 0.0, "epochs": 0}
        incumbent = {"point": point, "folds": {}, "runs": {}, "status": {}, "mean": math.nan, "std": math.nan,
                     "complete": False}
        msg = (f"{why} (steps 6-7 skipped too); the final model takes lr {c['lr']:.3g}, weight decay "
               f"{c['weight_decay']:g}")
        return StepResult("refine-1", 5, STEP_TITLES[5], "skipped", msg,
                          {"candidates": [], "best": incumbent, "incumbent": incumbent, "improved": None, "skipped": why})

    def refine_step(self, call: Call, k: int, incumbent: dict | None, move: dict | None) -> StepResult:
        plan = call.plan
        if plan is None:
            if k == 1:
                size, workers = self.costs(call).sized(call.seconds, lambda s, e, w, r: size_refine(s, e, w, run_s=r),
                                                       lambda z: z["n_lrs"] * z["n_wds"] * len(FOLDS))
                lrs, wds = refine_grid(call.evidence("coarse")["ranked"], size["n_lrs"], size["n_wds"])
                point = {k_: getattr(self.hp, k_) for k_ in ("width", "dropout")}
                epochs, short = size["epochs"], size["short"]
            else:
                point = {**incumbent["point"], **move["changes"]}
                lrs, wds = [point["lr"]], [point["weight_decay"]]
                want = int(point.get("epochs") or incumbent["point"]["epochs"])

                def one_point(s, e, w, r):
                    return {"epochs": epochs_fitting(s, search_rounds(len(FOLDS), w), e, r, want)}

                size, workers = self.costs(call).sized(call.seconds, one_point, lambda z: len(FOLDS))
                short = size["epochs"] < want
                epochs = max(2, min(want, size["epochs"]))
            plan = {"lrs": lrs, "wds": wds, "epochs": epochs, "short": short, "round": k,
                    "width": point.get("width"), "dropout": point.get("dropout") or 0.0,
                    "study": f"{self.study}/refine-{k}", "trainings": len(lrs) * len(wds) * len(FOLDS),
                    "workers": workers, "move": move["move"] if move else None}
            self.save_plan(call, plan)
        base = search_base(self.hp, width=plan["width"], dropout=plan["dropout"])
        space = {"lr": _grid_text(plan["lrs"]), "weight_decay": _grid_text(plan["wds"]),
                 "split_seed": _grid_text(list(FOLDS))}
        res = self.search(base, space, plan, plan["study"], call.deadline, checkpoints=False)
        self.mark([r["run"] for r in res.leaderboard], "refine",
                   "a constant rate by design: the final model adds the decay, placed from these curves")
        runs = [self.store.run(r["run"]) for r in res.leaderboard if r["run"] is not None]
        measured = self._measure(runs, res.seconds, plan.get("workers", 1))
        ranked, n_points = rank_candidates(res.leaderboard, {"width": plan["width"], "dropout": plan["dropout"],
                                                             "epochs": plan["epochs"]}, self.metric[1])
        if not ranked:  # the budget ran out while the workers started
            if incumbent is None:
                c = call.evidence("coarse")["best"]
                incumbent = {"point": {"lr": c["lr"], "weight_decay": c["weight_decay"], "width": plan["width"],
                                       "dropout": plan["dropout"], "epochs": plan["epochs"]},
                             "folds": {}, "runs": {}, "status": {}, "mean": math.nan, "std": math.nan, "complete": False}
            msg = (f"no run finished within the budget ({res.seconds:.0f} s): keeping lr "
                   f"{incumbent['point']['lr']:.3g}, weight decay {incumbent['point']['weight_decay']:g}")
            ev = {**plan, "candidates": [], "best": incumbent, "incumbent": incumbent, "improved": False if k > 1 else None,
                  "search_seconds": res.seconds, **measured, **self.judged_by}
            return StepResult(f"refine-{k}", 5, STEP_TITLES[5], "done", msg, ev)
        best = ranked[0]
        new_incumbent = best
        improved = None
        if incumbent is not None:
            better = (best["mean"] < incumbent["mean"]) if self.metric[1] == "min" else (best["mean"] > incumbent["mean"])
            improved = _finite(incumbent["mean"]) is None or better
            if not improved:
                new_incumbent = incumbent
        folds = ", ".join(f"{v:.4f}" for v in best["folds"].values() if v is not None)
        msg = (f"best lr {best['point']['lr']:.3g}, weight decay {best['point']['weight_decay']:g}"
               + (f", width {plan['width']}" if plan["width"] else "")
               + (f", dropout {plan['dropout']:g}" if plan["dropout"] else "")
               + f": mean {self.metric[0]} {best['mean']:.4f} +- {best['std']:.4f} over {len(best['folds'])} folds ({folds}); "
               f"{n_points} configs x {len(FOLDS)} folds, {plan['epochs']} epochs, constant lr"
               + (" (shortened to fit the budget)" if plan.get("short") else ""))
        if improved is not None:
            msg += (f"; improves on {_acc(incumbent['mean'])}" if improved else
                    f"; no better than {_acc(incumbent['mean'])}, keeping that")
        ev = {**plan, "candidates": ranked, "best": best, "incumbent": new_incumbent, "improved": improved,
              "search_seconds": res.seconds, **measured, **self.judged_by}
        return StepResult(f"refine-{k}", 5, STEP_TITLES[5], "done", msg, ev)

    def doctor_step(self, call: Call, k: int) -> StepResult:
        from trainlab.doctor.diagnose import diagnose_run
        from trainlab.models import DEFAULT_WIDTH

        ev5 = call.evidence(f"refine-{k}")
        best = ev5["best"]
        per_run, findings = [], []
        for fold, run_id in best["runs"].items():
            if run_id is None:
                continue
            d = diagnose_run(self.store, run_id, self.task.num_classes)
            every = d.findings + d.expected   # what the purpose expects is still what step 6 acts on
            per_run.append({"run": run_id, "fold": fold, "findings": [f.to_dict() for f in every]})
            for f in every:
                if f.name not in {x["name"] for x in findings}:
                    findings.append(f.to_dict())
        move = choose_move(findings, best["point"], DEFAULT_WIDTH.get(self.hp.model))
        names = ", ".join(f["name"] for f in findings) or "none (healthy)"
        verdict = "findings" if findings else "healthy"
        msg = f"{names} -> next move: {move['move']}"
        if move["changes"]:
            msg += " (" + ", ".join(f"{k_} {best['point'].get(k_)} -> {v:.3g}" if isinstance(v, float)
                                    else f"{k_} {best['point'].get(k_)} -> {v}" for k_, v in move["changes"].items()) + ")"
        return StepResult(f"doctor-{k}", 6, STEP_TITLES[6], verdict, msg,
                          {"runs": per_run, "findings": findings, **move, "point": best["point"]})

    def loop_step(self, call: Call, k: int) -> StepResult:
        ev5, ev6 = call.evidence(f"refine-{k}"), call.evidence(f"doctor-{k}")
        incumbent = ev5["incumbent"]
        nxt_epochs = int(ev6["changes"].get("epochs") or incumbent["point"]["epochs"])
        cost = self.costs(call).training_cost(len(FOLDS), max(2, min(nxt_epochs, MIN_REFINE_EPOCHS)))
        left = call.left()
        ev = {"round": k, "incumbent": incumbent, "move": ev6["move"], "time_left_s": left,
              "next_round_cost_s": cost, "improved": ev5.get("improved")}
        if ev6["move"] == "add decay":
            go, why = False, "the curves call for decay, which the final model adds"
        elif ev5.get("improved") is False:
            go, why = False, "validation did not improve in this round"
        elif k >= MAX_ROUNDS:
            go, why = False, f"{MAX_ROUNDS} rounds done"
        elif left < cost:
            go, why = False, f"budget: {left:.0f} s left in the refine phase, a round needs about {cost:.0f} s"
        else:
            go, why = True, f"{ev6['move']} ({left:.0f} s left, a round needs about {cost:.0f} s)"
        ev["continue"] = go
        msg = (f"back to step 5: {why}" if go else why) + \
            f"; chosen so far: lr {incumbent['point']['lr']:.3g}, weight decay {incumbent['point']['weight_decay']:g}, " \
            f"mean {self.metric[0]} {_acc(incumbent['mean'])}"
        return StepResult(f"loop-{k}", 7, STEP_TITLES[7], "continue" if go else "stop", msg, ev)
