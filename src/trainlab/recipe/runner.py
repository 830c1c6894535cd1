"""The recipe: choosing hyperparameters end to end, in seven steps, within a wall-clock budget.

    1 initial loss        check_init: the loss at initialization is about log C (weight decay off)
    2 overfit             check_overfit: 100% training accuracy on a few minibatches; if not, the lecture's
                          remedies (learning rate up or down by decades) before giving up with the diagnosis
    3 learning rate       check_lr: the rate at which the loss goes down within ~100 steps (small weight decay)
    4 coarse grid         a few rates around step 3's (log-spaced) x weight decay {1e-4, 1e-5, 0}, 1-5 epochs
                          (successive halving when the budget is short)
    5 refine              the best of step 4 and a finer grid around it, 10-20 epochs at a constant rate,
                          every point on two validation folds (split_seed 0 and 1): chosen on the mean
    6 doctor              the learning-curve doctor on step 5's chosen runs picks the next move (train
                          longer, more regularization, bigger model, add decay) and says why
    7 loop                back to 5 with that move while the budget lasts and validation improves
    final                 the chosen config with cosine decay and early stopping on validation, the best
                          checkpoint kept; with 2+ workers, one member per validation fold, trained side by
                          side and ensembled (averaged probabilities); the test split is evaluated once, here

Budget. The budget is split up front into phases (checks 10%, coarse grid 25%, refine loop 35%, final
30%; `PHASES`) and each phase gets, when it starts, its share of the time that is left, so time one
phase saves goes to the next ones. The model's seconds per epoch are measured in the first steps (and
again on every search's runs) and each search is sized (trials x epochs) to its share; inside every
training a `Deadline` callback stops it when the phase's time is up. A little time is kept back for
the report.

Store. Everything is filed under one study, `recipe-<task>-<model>` (`-2`, `-3`, ... after `--fresh`):
the checks' runs, and one run of kind "step" per step whose summary holds its verdict, evidence and
message. The searches' trials live in studies named after it (`<study>/coarse`, `<study>/refine-1`,
`<study>/final`), one per search, because an Optuna study is one search. Running again resumes: a
step with a completed run is skipped and its evidence read back; an interrupted search resumes its
Optuna study with the plan it was started with.

    from trainlab import Config
    from trainlab.recipe import run_recipe

    result = run_recipe(Config(task="digits", model="mlp"), budget_minutes=1, out="recipe-report")
    result.final["test_acc"], result.report
"""

from __future__ import annotations

import math
import re
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from trainlab.config import DEFAULT_RUNS_DIR, Config, ConfigError, apply_overrides
from trainlab.recipe.plan import (
    COARSE_LR_EXPONENTS,
    COARSE_WEIGHT_DECAYS,
    FIRST_ROUND_SHARE,
    FOLDS,
    MAX_MEMBERS,
    MAX_ROUNDS,
    MIN_REFINE_EPOCHS,
    PHASE_OF_STEP,
    PHASES,
    REFINE_LR_EXPONENTS,
    STEP_TITLES,
    choose_move,
    epochs_fitting,
    phase_allowance,
    plan_budget,
    search_rounds,
    size_coarse,
    size_final,
    size_refine,
)
from trainlab.store import Store, normalize_url

__all__ = ["StepResult", "RecipeResult", "run_recipe", "study_name"]

# --- records ------------------------------------------------------------------------------------------

@dataclass
class StepResult:
    """One step's outcome: a verdict word, a one-line message, and the evidence behind them."""

    key: str                       # "init", "overfit", "lr", "coarse", "refine-1", "doctor-1", "loop-1", "final"
    number: int                    # 1-7; 8 is the final model
    title: str
    verdict: str                   # pass/fail (checks), done, healthy/findings (doctor), continue/stop (loop)
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    run_id: int | None = None
    status: str = "completed"      # the step run's status: completed, stopped (interrupted), failed
    skipped: bool = False          # read back from the store (a resumed recipe)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RecipeResult:
    study: str
    status: str                    # completed, stopped (a check failed), interrupted
    reason: str | None
    steps: list[StepResult]
    final: dict[str, Any] | None
    report: str | None
    seconds: float
    budget_s: float
    plan: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": [s.to_dict() for s in self.steps]}


class _Interrupted(Exception):
    """Raised inside the recipe when Ctrl-C arrived (fit() swallows KeyboardInterrupt and returns)."""


class _StopRecipe(Exception):
    """A step's verdict ends the recipe (a failed check without --force)."""


# --- helpers --------------------------------------------------------------------------------------------

def study_name(hp: Config) -> str:
    """recipe-<task>-<model>: the task's file stem for `path.py:build`, its module for `pkg.mod:build`."""
    task = hp.task
    if ":" in task:
        target = task.rpartition(":")[0]
        task = Path(target).stem if target.endswith(".py") else target
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task).strip("-") or "task"
    return f"recipe-{slug}-{hp.model}"


def _attempts(store: Store, base: str) -> list[tuple[int, str]]:
    pattern = re.compile(re.escape(base) + r"(?:-(\d+))?$")
    found = []
    for s in store.studies(kind=None):
        m = pattern.match(s["name"])
        if m:
            found.append((int(m.group(1) or 1), s["name"]))
    return sorted(found)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _acc(x: Any) -> str:
    """An accuracy for a message; 'n/a' for a missing one (NaN, or None once read back from JSON)."""
    return f"{x:.4f}" if _finite(x) is not None else "n/a"


def _log_grid(center: float, exponents: Sequence[float]) -> list[float]:
    return [float(f"{center * 10 ** e:.3g}") for e in exponents]


def _grid_text(values: Sequence[Any]) -> str:
    return "grid(" + ", ".join(repr(float(v)) if isinstance(v, float) else str(v) for v in values) + ")"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


class _Progress:
    """A time bar for one step (elapsed seconds against its allowance), refreshed by a thread."""

    def __init__(self, desc: str, seconds: float, enabled: bool):
        self.bar = None
        self._stop = threading.Event()
        if not enabled or not sys.stderr.isatty():  # a bar only where it can redraw itself
            return
        from tqdm.auto import tqdm

        self.total = max(1, round(seconds))
        self.bar = tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s")
        self.t0 = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.bar.n = min(self.total, round(time.time() - self.t0))
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self._stop.set()
            self._thread.join()
            self.bar.close()


# --- the recipe -------------------------------------------------------------------------------------------

class _Recipe:
    def __init__(self, hp: Config, task, store: Store, db_url: str, study: str, out: Path, budget_s: float,
                 workers: int, force: bool, quiet: bool, runs_dir: str, spent_before: float,
                 warmup_s: float = 0.0):
        self.hp, self.task, self.store, self.db_url, self.study = hp, task, store, db_url, study
        self.out, self.budget_s, self.workers, self.force, self.quiet = out, budget_s, workers, force, quiet
        self.runs_dir = runs_dir
        self.warmup_s = warmup_s
        self.reserve_s = min(20.0, max(2.0, 0.04 * budget_s))  # kept back for writing the report
        self.started = time.time()
        self.end = self.started - spent_before + budget_s - self.reserve_s
        self.steps: list[StepResult] = []
        self.done = self._finished_steps()
        self.interrupted = False
        self.phase_deadline: dict[str, float] = {}
        self.spe = math.ceil(len(task.train) / hp.batch_size)

    # ---- bookkeeping
    def _finished_steps(self) -> dict[str, dict]:
        out = {}
        for run in self.store.runs(study=self.study, kind="step"):
            key = (run.get("summary") or {}).get("key")
            if key:
                out[key] = run  # the latest run of each key wins
        return out

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def deadline(self, phase: str) -> float:
        """The phase's deadline, fixed when the phase first asks for it: its share of the time left, but
        at least the least work that makes the phase mean something (`min_work`): when the budget is too
        small for the model, the recipe overruns it rather than skip a step."""
        if phase not in self.phase_deadline:
            now = time.time()
            self.phase_deadline[phase] = now + max(phase_allowance(self.end - now, phase), self.min_work(phase))
        return self.phase_deadline[phase]

    def min_work(self, phase: str) -> float:
        """Seconds of the least useful work of a phase: two epochs of one training (both folds in refine)."""
        if phase == "checks":
            return 0.0
        trainings = len(FOLDS) if phase == "refine" else 1
        return self.training_cost(trainings, 2)

    def left(self, phase: str) -> float:
        return max(0.0, self.deadline(phase) - time.time())

    def step(self, key: str, number: int, fn: Callable[[dict], StepResult], phase_share: float = 1.0) -> StepResult:
        """Run step `key` (or read it back when a completed run of it exists), record it, print its verdict."""
        title = STEP_TITLES[number]
        label = f"[{number}/7] {title}" if number <= 7 else f"[final] {title}"
        if "-" in key:
            label += f" (round {key.rsplit('-', 1)[1]})"
        prev = self.done.get(key)
        if prev is not None and prev["status"] == "completed":
            s = prev["summary"]
            result = StepResult(key, number, title, s["verdict"], s["message"], s.get("evidence", {}),
                                s.get("seconds", 0.0), prev["id"], "completed", skipped=True)
            self.steps.append(result)
            self.say(f"{label}: {result.verdict}: {result.message} (done before, skipped)")
            return result
        phase = PHASE_OF_STEP[number]
        left = self.left(phase) * phase_share
        stored_plan = (prev or {}).get("summary", {}).get("plan") if prev else None
        if prev is not None:
            run_id = prev["id"]
            self.store.update_run(run_id, status="running", reason=None)
        else:
            run_id = self.store.create_run(name=f"step-{number}-{key}" if number <= 7 else "step-final",
                                           hparams=self.hp.model_dump(mode="json"), seed=self.hp.seed,
                                           study=self.study, kind="step")
        self.store.update_run(run_id, summary={"key": key, "step": number, "title": title, "phase": phase})
        ctx = {"run_id": run_id, "plan": stored_plan, "seconds": left}
        progress = _Progress(label, left, not self.quiet)
        t0 = time.time()
        try:
            result = fn(ctx)
            if self.interrupted:
                raise _Interrupted()
        except (KeyboardInterrupt, _Interrupted):
            progress.close()
            self.store.finish_run(run_id, "stopped", reason="interrupted (Ctrl-C); run the same command to resume",
                                  summary={"seconds": time.time() - t0})
            self.steps.append(StepResult(key, number, title, "stopped", "interrupted (Ctrl-C)", {},
                                         time.time() - t0, run_id, "stopped"))
            raise _Interrupted() from None
        except BaseException as err:
            progress.close()
            self.store.finish_run(run_id, "failed", reason=f"{type(err).__name__}: {err}"[:500])
            raise
        progress.close()
        result.seconds, result.run_id = time.time() - t0, run_id
        self.store.finish_run(run_id, "completed", reason=result.message,
                              summary={"verdict": result.verdict, "message": result.message,
                                       "evidence": _jsonable(result.evidence), "seconds": result.seconds})
        self.steps.append(result)
        self.say(f"{label}: {result.verdict}: {result.message} ({result.seconds:.0f} s of {left:.0f} s)")
        return result

    def save_plan(self, ctx: dict, plan: dict) -> None:
        """Keep a search's plan with its step run, so that an interrupted search resumes with the same one."""
        self.store.update_run(ctx["run_id"], summary={"plan": plan})

    def evidence(self, key: str) -> dict:
        for s in reversed(self.steps):
            if s.key == key:
                return s.evidence
        return {}

    # ---- timings
    def epoch_seconds(self, parallel: bool | None = None) -> float:
        """Seconds per epoch of one training, in worker processes side by side (`parallel`) or in this
        process: as last measured on a search run that way; else, in this process, from the LR test's
        seconds per step, and x1.3 for workers side by side (they share memory bandwidth; on a machine
        that other jobs load, much more: then the measurement after the first search says so)."""
        parallel = self.workers > 1 if parallel is None else parallel
        for s in reversed(self.steps):
            measured = s.evidence.get("epoch_s")
            if measured and (s.evidence.get("workers", 1) > 1) == parallel:
                return float(measured)
        step_s = self.evidence("lr").get("step_s") or self.evidence("overfit").get("step_s") or 0.01
        return float(step_s) * self.spe * 1.15 * (1.3 if parallel else 1.0)

    def training_cost(self, trainings: int, epochs: int) -> float:
        """Seconds for `trainings` of `epochs` each, the cheaper way (workers side by side, or here)."""
        run_s = self.run_seconds()
        modes = [(self.workers, True), (1, False)] if self.workers > 1 else [(1, False)]
        return min(self.overhead(p) + search_rounds(trainings, w) * (run_s + epochs * self.epoch_seconds(p))
                   for w, p in modes)

    def run_seconds(self) -> float:
        """Start-up seconds of one training in a search (task, model, first validation), as last measured."""
        for s in reversed(self.steps):
            if "run_s" in s.evidence:
                return float(s.evidence["run_s"])
        return 0.0

    def _measure(self, runs: Sequence[dict], search_seconds: float, n_workers: int) -> dict[str, float]:
        """From a search's runs: seconds per epoch (fit's epoch_time_s of full epochs, +10% for the
        validation after each), start-up seconds per training (the rest of a run's time), and the search's
        own overhead (its wall time beyond the trainings' time per worker: process start-up, Optuna)."""
        per_epoch, fixed, busy = [], [], 0.0
        for r in runs:
            secs, epochs = (r.get("summary") or {}).get("seconds"), r.get("epochs")
            if not secs or not epochs:
                continue
            busy += secs
            times = self.store.metrics(r["id"], ["epoch_time_s"]).get("epoch_time_s", {}).get("value", [])
            if r["status"] != "completed":
                times = times[:-1]   # the last epoch of a run stopped early is partial
            if times:
                epoch_s = 1.1 * statistics.fmean(times)
                per_epoch.append(epoch_s)
                fixed.append(max(0.0, secs - epoch_s * epochs))
        if not per_epoch:
            return {}
        return {"epoch_s": statistics.median(per_epoch), "run_s": statistics.median(fixed),
                "overhead_s": max(0.0, search_seconds - busy / max(1, n_workers))}

    def overhead(self, parallel: bool | None = None) -> float:
        """A search's own seconds (worker processes starting, Optuna) with worker processes (`parallel`) or
        in this process: as last measured that way; before that, guessed (workers: from this process's
        warm-up, which a worker pays again along with importing torch)."""
        parallel = self.workers > 1 if parallel is None else parallel
        for s in reversed(self.steps):
            if "overhead_s" in s.evidence and (s.evidence.get("workers", 1) > 1) == parallel:
                return min(float(s.evidence["overhead_s"]), 60.0)
        if not parallel:
            return 1.0
        return 2.0 + 3.0 * self.warmup_s if self.warmup_s > 0.2 else 5.0

    def sized(self, seconds: float, sizer: Callable[..., dict], count: Callable[[dict], int]) -> tuple[dict, int]:
        """(size, workers) of a search: sized both for the worker processes and for this process alone,
        each with its own measured (or estimated) seconds per epoch and overhead, and the way that trains
        more (trainings x epochs) is taken, this process on a tie. Workers lose when their start-up is
        long next to the search (small models) or when other jobs leave them less than a core each."""
        run_s = self.run_seconds()
        here = sizer(seconds - self.overhead(False), self.epoch_seconds(False), 1, run_s)
        if self.workers <= 1:
            return here, 1
        there = sizer(seconds - self.overhead(True), self.epoch_seconds(True), self.workers, run_s)
        w = min(self.workers, count(there))
        if w > 1 and count(there) * there["epochs"] > count(here) * here["epochs"]:
            return there, w
        return here, 1

    # ---- steps 1-3: the checks
    def init_step(self, ctx: dict) -> StepResult:
        from trainlab.checks import check_init

        t0 = time.time()
        r = check_init(self.task, self.hp, self.store, study=self.study)
        fwd = (time.time() - t0) / max(1, r.evidence.get("batches", 10))
        ev = {**r.evidence, "check_run": r.run_id, "forward_s": fwd, "step_s_estimate": 3 * fwd}
        ev.pop("batch_losses", None)
        return StepResult("init", 1, STEP_TITLES[1], r.verdict, r.message, ev)

    def overfit_step(self, ctx: dict) -> StepResult:
        from trainlab.checks import check_overfit

        step_s = self.evidence("init").get("step_s_estimate") or 0.01
        attempts, lr, tried = [], self.hp.lr, set()
        t_end = time.time() + ctx["seconds"]
        result = None
        for attempt in range(4):   # the first try and up to three remedies, one decade at a time
            # Sized to the time left (about 3x the steps' cost, for the validations on the sample every few
            # steps), but never below 200 steps: a remedy is tried even when it overruns this small share.
            left = t_end - time.time()
            max_steps = int(min(1000, max(200, left / (3 * step_s))))
            tried.add(lr)
            t0 = time.time()
            r = check_overfit(self.task, apply_overrides(self.hp, {"lr": lr}), self.store, max_steps=max_steps,
                              study=self.study, runs_dir=self.runs_dir)
            seconds = time.time() - t0
            if self.interrupted:
                raise _Interrupted()
            steps = r.evidence.get("steps") or 0
            if steps:  # the check also validates on the sample every few steps: about a third of its time
                step_s = seconds / steps / 1.5
            attempts.append({"lr": lr, "verdict": r.verdict, "message": r.message, "steps": steps,
                             "max_steps": max_steps, "cause": r.evidence.get("cause"), "run": r.run_id,
                             "seconds": seconds})
            result = r
            if r.passed:
                break
            cause = r.evidence.get("cause")
            ups = [lr * 10, lr / 10] if cause != "loss exploding" else [lr / 10]
            nxt = next((x for x in ups if not any(math.isclose(x, t) for t in tried) and 1e-6 <= x <= 10), None)
            if nxt is None:
                break
            lr = nxt
        ev = {"attempts": attempts, "lr": lr, "step_s": step_s, "check_run": result.run_id if result else None,
              "examples": result.evidence.get("examples") if result else None}
        if result is not None and result.passed:
            extra = f" (at lr {lr:g}, after {len(attempts) - 1} remed{'y' if len(attempts) == 2 else 'ies'})" \
                if len(attempts) > 1 else ""
            return StepResult("overfit", 2, STEP_TITLES[2], "pass", result.message + extra, ev)
        tried_txt = ", ".join(f"{a['lr']:g}" for a in attempts)
        msg = (result.message if result else "no time to try") + f"; learning rates tried: {tried_txt}"
        return StepResult("overfit", 2, STEP_TITLES[2], "fail", msg, ev)

    def lr_step(self, ctx: dict) -> StepResult:
        from trainlab.checks import check_lr

        step_s = self.evidence("overfit").get("step_s") or self.evidence("init").get("step_s_estimate") or 0.01
        # 4 discrete trials of s steps and a sweep of 2s steps, plus a validation per trial
        steps = int(min(100, max(50, ctx["seconds"] / (6.5 * step_s))))   # at least 50: a meaningful test
        t0 = time.time()
        r = check_lr(self.task, self.hp, self.store, steps=steps, sweep_steps=max(20, 2 * steps), study=self.study)
        seconds = time.time() - t0
        ev = {"suggested_lr": r.suggested_lr, "discrete_lr": r.discrete_lr, "sweep_lr": r.sweep_lr,
              "agree": r.agree, "rule": r.rule, "table": r.table, "trial_steps": steps, "check_run": r.run_id,
              "seconds": seconds, "step_s": seconds / (6 * steps + 2)}
        verdict = r.verdict
        if r.suggested_lr is None:
            ev["suggested_lr"] = self.hp.lr
        return StepResult("lr", 3, STEP_TITLES[3], verdict, r.message, ev)

    # ---- step 4: coarse grid
    def _search_base(self, **changes: Any) -> Config:
        return apply_overrides(self.hp, {"schedule": "constant", "warmup_steps": 0, "warmup_epochs": 0.0,
                                         "patience": None, "ema": None, "snapshots": False, "seeds": 1,
                                         "steps": None, **changes})

    def _search(self, base: Config, space: dict, plan: dict, study: str, deadline: float, checkpoints: bool,
                workers: int | None = None):
        from trainlab.search.runner import run_search

        workers = workers or plan.get("workers") or self.workers
        return run_search(base, space, strategy="grid", workers=min(workers, plan.get("trainings", workers)),
                          study=study, db=self.db_url, prune=plan.get("prune", "none"), epochs=plan["epochs"],
                          runs_dir=self.runs_dir, checkpoints=checkpoints, quiet=True, deadline=deadline)

    def coarse_step(self, ctx: dict) -> StepResult:
        plan = ctx["plan"]
        if plan is None:
            center = float(self.evidence("lr").get("suggested_lr") or self.hp.lr)
            size, workers = self.sized(ctx["seconds"], lambda s, e, w, r: size_coarse(s, e, w, run_s=r),
                                       lambda z: z["n_lrs"] * z["n_wds"])
            exponents = {4: COARSE_LR_EXPONENTS, 3: (0.5, 0.0, -0.5), 2: (0.0, -0.5), 1: (0.0,)}[size["n_lrs"]]
            lrs = _log_grid(center, exponents)
            wds = list(COARSE_WEIGHT_DECAYS[:size["n_wds"]])
            plan = {"lrs": lrs, "wds": wds, "epochs": size["epochs"], "prune": size["prune"], "center": center,
                    "study": f"{self.study}/coarse", "trainings": len(lrs) * len(wds), "workers": workers,
                    "epoch_s_estimate": self.epoch_seconds()}
            self.save_plan(ctx, plan)
        base = self._search_base(split_seed=FOLDS[0])
        space = {"lr": _grid_text(plan["lrs"]), "weight_decay": _grid_text(plan["wds"])}
        res = self._search(base, space, plan, plan["study"], self.deadline("coarse"), checkpoints=False)
        rows = [{"lr": r["params"].get("lr"), "weight_decay": r["params"].get("weight_decay"), "value": r["value"],
                 "status": r["status"], "epochs": r["epochs"], "run": r["run"]} for r in res.leaderboard]
        runs = [self.store.run(r["run"]) for r in rows if r["run"] is not None]
        measured = self._measure(runs, res.seconds, plan.get("workers", 1))
        ranked = _rank_rows(rows, plan["epochs"])
        if not ranked:  # the budget ran out while the workers started: go on from step 3's rate
            best = {"lr": plan["center"], "weight_decay": COARSE_WEIGHT_DECAYS[0], "value": None, "status": "not run",
                    "epochs": 0, "run": None}
            msg = (f"no grid point finished within the budget ({res.seconds:.0f} s, {len(rows)} started): going on "
                   f"with step 3's rate {plan['center']:.3g} and weight decay {best['weight_decay']:g}")
            ev = {**plan, "rows": rows, "ranked": [best], "best": best, "search_seconds": res.seconds,
                  "counts": res.counts, **measured}
            return StepResult("coarse", 4, STEP_TITLES[4], "done", msg, ev)
        best = ranked[0]
        msg = (f"best lr {best['lr']:.3g}, weight decay {best['weight_decay']:g}: val/acc {best['value']:.4f} after "
               f"{best['epochs']} epochs ({len(plan['lrs'])} rates x {len(plan['wds'])} weight decays, "
               f"{plan['epochs']} epochs" + (", successive halving" if plan["prune"] == "sha" else "") + ")")
        ev = {**plan, "rows": rows, "ranked": [r for r in ranked[:3]], "best": best, "search_seconds": res.seconds,
              "counts": res.counts, **measured}
        return StepResult("coarse", 4, STEP_TITLES[4], "done", msg, ev)

    # ---- steps 5-7: refine, doctor, loop
    def refine_step(self, ctx: dict, k: int, incumbent: dict | None, move: dict | None) -> StepResult:
        plan = ctx["plan"]
        if plan is None:
            if k == 1:
                ranked = self.evidence("coarse")["ranked"]
                best = ranked[0]
                other = next((r for r in ranked[1:] if r["weight_decay"] != best["weight_decay"]), None)
                size, workers = self.sized(ctx["seconds"], lambda s, e, w, r: size_refine(s, e, w, run_s=r),
                                           lambda z: z["n_lrs"] * z["n_wds"] * len(FOLDS))
                exponents = {3: REFINE_LR_EXPONENTS, 1: (0.0,)}.get(size["n_lrs"])
                if exponents is None:  # two rates: the best and its neighbour towards the runner-up's rate
                    second = next((r for r in ranked[1:] if r["lr"] != best["lr"]), None)
                    exponents = (0.0, 0.25 if second is not None and second["lr"] > best["lr"] else -0.25)
                lrs = _log_grid(best["lr"], exponents)
                wds = [best["weight_decay"]] + ([other["weight_decay"]] if other and size["n_wds"] == 2 else [])
                point = {k_: getattr(self.hp, k_) for k_ in ("width", "dropout")}
                epochs, short = size["epochs"], size["short"]
            else:
                point = {**incumbent["point"], **move["changes"]}
                lrs, wds = [point["lr"]], [point["weight_decay"]]
                want = int(point.get("epochs") or incumbent["point"]["epochs"])

                def one_point(s, e, w, r):
                    return {"epochs": epochs_fitting(s, search_rounds(len(FOLDS), w), e, r, want)}

                size, workers = self.sized(ctx["seconds"], one_point, lambda z: len(FOLDS))
                short = size["epochs"] < want
                epochs = max(2, min(want, size["epochs"]))
            plan = {"lrs": lrs, "wds": wds, "epochs": epochs, "short": short, "round": k,
                    "width": point.get("width"), "dropout": point.get("dropout") or 0.0,
                    "study": f"{self.study}/refine-{k}", "trainings": len(lrs) * len(wds) * len(FOLDS),
                    "workers": workers, "move": move["move"] if move else None}
            self.save_plan(ctx, plan)
        base = self._search_base(width=plan["width"], dropout=plan["dropout"])
        space = {"lr": _grid_text(plan["lrs"]), "weight_decay": _grid_text(plan["wds"]),
                 "split_seed": _grid_text(list(FOLDS))}
        res = self._search(base, space, plan, plan["study"], self.deadline("refine"), checkpoints=False)
        runs = [self.store.run(r["run"]) for r in res.leaderboard if r["run"] is not None]
        measured = self._measure(runs, res.seconds, plan.get("workers", 1))
        cands: dict[tuple, dict] = {}
        for r in res.leaderboard:
            key = (r["params"]["lr"], r["params"]["weight_decay"])
            c = cands.setdefault(key, {"point": {"lr": key[0], "weight_decay": key[1], "width": plan["width"],
                                                 "dropout": plan["dropout"], "epochs": plan["epochs"]},
                                       "folds": {}, "runs": {}, "status": {}})
            fold = r["params"]["split_seed"]
            c["folds"][str(fold)], c["runs"][str(fold)], c["status"][str(fold)] = r["value"], r["run"], r["status"]
        for c in cands.values():
            c["mean"], c["std"] = _mean_std(list(c["folds"].values()))
            c["complete"] = all(s == "completed" for s in c["status"].values()) and len(c["folds"]) == len(FOLDS)
        ranked = sorted((c for c in cands.values() if math.isfinite(c["mean"])),
                        key=lambda c: (not c["complete"], -c["mean"]))
        if not ranked:  # the budget ran out while the workers started
            if incumbent is None:
                c = self.evidence("coarse")["best"]
                incumbent = {"point": {"lr": c["lr"], "weight_decay": c["weight_decay"], "width": plan["width"],
                                       "dropout": plan["dropout"], "epochs": plan["epochs"]},
                             "folds": {}, "runs": {}, "status": {}, "mean": math.nan, "std": math.nan, "complete": False}
            msg = (f"no run finished within the budget ({res.seconds:.0f} s): keeping lr "
                   f"{incumbent['point']['lr']:.3g}, weight decay {incumbent['point']['weight_decay']:g}")
            ev = {**plan, "candidates": [], "best": incumbent, "incumbent": incumbent, "improved": False if k > 1 else None,
                  "search_seconds": res.seconds, **measured}
            return StepResult(f"refine-{k}", 5, STEP_TITLES[5], "done", msg, ev)
        best = ranked[0]
        new_incumbent = best
        improved = None
        if incumbent is not None:
            improved = _finite(incumbent["mean"]) is None or best["mean"] > incumbent["mean"]
            if not improved:
                new_incumbent = incumbent
        folds = ", ".join(f"{v:.4f}" for v in best["folds"].values() if v is not None)
        msg = (f"best lr {best['point']['lr']:.3g}, weight decay {best['point']['weight_decay']:g}"
               + (f", width {plan['width']}" if plan["width"] else "")
               + (f", dropout {plan['dropout']:g}" if plan["dropout"] else "")
               + f": mean val/acc {best['mean']:.4f} +- {best['std']:.4f} over {len(best['folds'])} folds ({folds}); "
               f"{len(cands)} configs x {len(FOLDS)} folds, {plan['epochs']} epochs, constant lr"
               + (" (shortened to fit the budget)" if plan.get("short") else ""))
        if improved is not None:
            msg += (f"; improves on {_acc(incumbent['mean'])}" if improved else
                    f"; no better than {_acc(incumbent['mean'])}, keeping that")
        ev = {**plan, "candidates": ranked, "best": best, "incumbent": new_incumbent, "improved": improved,
              "search_seconds": res.seconds, **measured}
        return StepResult(f"refine-{k}", 5, STEP_TITLES[5], "done", msg, ev)

    def doctor_step(self, ctx: dict, k: int) -> StepResult:
        from trainlab.doctor.diagnose import diagnose_run
        from trainlab.models import DEFAULT_WIDTH

        ev5 = self.evidence(f"refine-{k}")
        best = ev5["best"]
        per_run, findings = [], []
        for fold, run_id in best["runs"].items():
            if run_id is None:
                continue
            d = diagnose_run(self.store, run_id, self.task.num_classes)
            per_run.append({"run": run_id, "fold": fold, "findings": [f.to_dict() for f in d.findings]})
            for f in d.findings:
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

    def loop_step(self, ctx: dict, k: int) -> StepResult:
        ev5, ev6 = self.evidence(f"refine-{k}"), self.evidence(f"doctor-{k}")
        incumbent = ev5["incumbent"]
        nxt_epochs = int(ev6["changes"].get("epochs") or incumbent["point"]["epochs"])
        cost = self.training_cost(len(FOLDS), max(2, min(nxt_epochs, MIN_REFINE_EPOCHS)))
        left = self.left("refine")
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
            f"mean val/acc {_acc(incumbent['mean'])}"
        return StepResult(f"loop-{k}", 7, STEP_TITLES[7], "continue" if go else "stop", msg, ev)

    # ---- the final model
    def final_config(self, point: dict, epochs: int, patience: int, split_seed: int = FOLDS[0]) -> Config:
        return apply_overrides(self.hp, {"lr": point["lr"], "weight_decay": point["weight_decay"],
                                         "width": point.get("width"), "dropout": point.get("dropout") or 0.0,
                                         "schedule": "cosine", "epochs": epochs, "patience": patience,
                                         "early_stop_metric": "val/acc", "early_stop_mode": "max", "steps": None,
                                         "split_seed": split_seed, "seeds": 1})

    def final_step(self, ctx: dict, incumbent: dict) -> StepResult:
        from trainlab.ensemble import evaluate_ensemble, members_from_runs

        plan = ctx["plan"]
        if plan is None:
            members = max(1, min(self.workers, MAX_MEMBERS))
            size, workers = self.sized(ctx["seconds"], lambda s, e, w, r: size_final(s, e, w, run_s=r, members=members),
                                       lambda z: z["members"])
            plan = {**size, "study": f"{self.study}/final", "trainings": size["members"], "prune": "none",
                    "workers": workers,
                    "point": incumbent["point"], "folds": list(range(size["members"]))}
            self.save_plan(ctx, plan)
        base = self.final_config(plan["point"], plan["epochs"], plan["patience"])
        res = self._search(base, {"split_seed": _grid_text(plan["folds"])}, plan, plan["study"],
                           self.deadline("final"), checkpoints=True)
        members = []
        for r in sorted(res.leaderboard, key=lambda r: r["params"]["split_seed"]):
            run = self.store.run(r["run"]) if r["run"] is not None else None
            members.append({"run": r["run"], "fold": r["params"]["split_seed"], "val_acc": r["value"],
                            "status": r["status"], "epochs": r["epochs"],
                            "best_epoch": run["best_epoch"] if run else None,
                            "checkpoint": run["checkpoint"] if run else None})
        usable = [m for m in members if m["checkpoint"]]
        if not usable:
            raise _StopRecipe("final model: no member finished an epoch (the budget is too small)")
        # The test split, once, for the final model only.
        ens = evaluate_ensemble(members_from_runs(self.store, [m["run"] for m in usable]), split="test")
        val_mean, val_std = _mean_std([m["val_acc"] for m in usable])
        hp_final = self.final_config(plan["point"], plan["epochs"], plan["patience"])
        yaml_path = self.out / "final.yaml"
        self.out.mkdir(parents=True, exist_ok=True)
        header = (f"# trainlab recipe, study {self.study}: the final config (train it with: trainlab train {yaml_path.name})\n"
                  f"# chosen on validation: mean val/acc {_acc(incumbent['mean'])} +- {_acc(incumbent['std'])} over folds "
                  f"{', '.join(sorted(incumbent['folds']))} (constant lr, {incumbent['point']['epochs']} epochs); "
                  f"final model val/acc {val_mean:.4f}, test/acc {ens.ensemble_acc:.4f}\n")
        yaml_path.write_text(header + hp_final.to_yaml())
        kind = f"ensemble of {len(usable)} (one per validation fold)" if len(usable) > 1 else "one model"
        cut = [m for m in usable if m["status"] == "stopped"]
        if cut:
            kind += (f" (cut at the budget after {min(m['epochs'] for m in cut)} of {plan['epochs']} epochs: "
                     "the decay did not finish)")
        msg = (f"{kind}: val/acc {val_mean:.4f}" + (f" +- {val_std:.4f}" if len(usable) > 1 else "")
               + f", test/acc {ens.ensemble_acc:.4f}; lr {plan['point']['lr']:.3g}, weight decay "
               f"{plan['point']['weight_decay']:g}, cosine over {plan['epochs']} epochs, patience {plan['patience']}")
        ev = {**plan, "members": members, "val_acc": val_mean, "val_std": val_std, "test_acc": ens.ensemble_acc,
              "test_loss": ens.ensemble_loss, "test_n": ens.n, "ensemble": len(usable) > 1, "config": hp_final.model_dump(mode="json"),
              "yaml": str(yaml_path), "cv": {"folds": incumbent["folds"], "mean": incumbent["mean"],
                                             "std": incumbent["std"]}, "search_seconds": res.seconds}
        return StepResult("final", 8, STEP_TITLES[8], "done", msg, ev)

    # ---- the whole recipe
    def run(self) -> tuple[str, str | None]:
        r1 = self.step("init", 1, self.init_step)
        if r1.verdict == "fail" and not self.force:
            return "stopped", f"step 1 failed: {r1.message} (--force goes on anyway)"
        r2 = self.step("overfit", 2, self.overfit_step, phase_share=0.45)
        if r2.verdict == "fail" and not self.force:
            return "stopped", f"step 2 failed: {r2.message} (--force goes on anyway)"
        r3 = self.step("lr", 3, self.lr_step)
        if r3.verdict == "fail" and not self.force:
            return "stopped", f"step 3 failed: {r3.message} (--force goes on anyway)"
        self.step("coarse", 4, self.coarse_step)
        incumbent, move = None, None
        for k in range(1, MAX_ROUNDS + 1):
            share = FIRST_ROUND_SHARE if k == 1 else 1.0
            r5 = self.step(f"refine-{k}", 5, lambda ctx, k=k, inc=incumbent, mv=move: self.refine_step(ctx, k, inc, mv),
                           phase_share=share)
            incumbent = r5.evidence["incumbent"]
            r6 = self.step(f"doctor-{k}", 6, lambda ctx, k=k: self.doctor_step(ctx, k))
            move = r6.evidence
            r7 = self.step(f"loop-{k}", 7, lambda ctx, k=k: self.loop_step(ctx, k))
            if not r7.evidence["continue"]:
                break
        self.step("final", 8, lambda ctx: self.final_step(ctx, incumbent))
        return "completed", None


def _rank_rows(rows: list[dict], epochs: int) -> list[dict]:
    """Coarse rows with a value, best first among those that trained all `epochs` (successive halving
    marks the last rung's losers pruned after their full epochs: they count), then the rest."""
    ok = [r for r in rows if r["value"] is not None and math.isfinite(r["value"])]
    return sorted(ok, key=lambda r: ((r["epochs"] or 0) < epochs, -r["value"]))


def _warm_up() -> float:
    """Pay torch's one-time import costs now (the first optimizer imports torch._dynamo: ~1 s on an idle
    machine, 15 s and more on a loaded one), so they do not distort the first step's timing. Returns the
    seconds it took: what a search worker process will pay again when it starts."""
    import torch

    t0 = time.time()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    return time.time() - t0


def _jsonable(obj: Any) -> Any:
    """Evidence as JSON (NaN/Inf as None, tuples as lists, dict keys as strings)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _check_same_config(store: Store, study: str, hp: Config) -> None:
    for run in store.runs(study=study, kind="step"):
        old = run["hparams"]
        new = hp.model_dump(mode="json")
        if old != new:
            diff = next(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
                        if old.get(k) != new.get(k))
            raise ConfigError(f"recipe: study {study!r} was started with another config ({diff}); "
                              "run with the same config to resume it, or --fresh to start over")
        return


def run_recipe(hp: Config, *, budget_minutes: float = 5.0, workers: int | None = None,
               out: str | Path = "recipe-report", db: str | Path | None = None, fresh: bool = False,
               force: bool = False, quiet: bool = False, runs_dir: str = DEFAULT_RUNS_DIR) -> RecipeResult:
    """Run the seven steps on `hp` (its task and model; the recipe chooses lr, weight decay, epochs and
    what the doctor asks for), write the report to `out`, and return what was done.

    `budget_minutes` of wall-clock time in all (within 10%; the report is written after). `workers`
    search processes (default: the machine's cores, at most 4) with cores/workers torch threads each.
    Running again with the same arguments resumes the study; `fresh` starts a new one; `force` goes on
    after a failed check. Ctrl-C stops cleanly: the result's status is "interrupted" and the report
    shows what was done. Raises ConfigError for bad input, before anything is written.
    """
    from trainlab.search.workers import default_workers
    from trainlab.tasks import load_task

    if not isinstance(budget_minutes, (int, float)) or not math.isfinite(budget_minutes) or budget_minutes <= 0:
        raise ConfigError(f"budget: must be a positive number of minutes, got {budget_minutes!r}")
    if workers is None:
        workers = default_workers()
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")
    hp = apply_overrides(hp, {})
    task = load_task(hp)   # ConfigError for an unknown task or model, before the store is touched
    db_url = normalize_url(db)
    store = Store(db_url)
    out = Path(out)
    budget_s = 60.0 * budget_minutes
    warmup_s = _warm_up()
    started = time.time()
    base = study_name(hp)
    attempts = _attempts(store, base)
    if fresh or not attempts:
        n = (attempts[-1][0] + 1) if attempts else 1
        study = base if n == 1 else f"{base}-{n}"
    else:
        study = attempts[-1][1]
        _check_same_config(store, study, hp)
    spent = sum((r.get("summary") or {}).get("seconds", 0.0) for r in store.runs(study=study, kind="step")
                if r["status"] == "completed")
    recipe = _Recipe(hp, task, store, db_url, study, out, budget_s, workers, force, quiet, runs_dir, spent, warmup_s)
    plan = plan_budget(budget_s)
    resumed = sum(1 for r in recipe.done.values() if r["status"] == "completed")
    recipe.say(f"trainlab recipe: {task.name}/{hp.model}, budget {budget_minutes:g} min, {workers} worker"
               f"{'s' if workers > 1 else ''}; study {study}" + (f" (resumed: {resumed} steps done, "
                                                                  f"{spent:.0f} s spent)" if resumed else "")
               + f"; report {out}/index.html")
    recipe.say("plan: " + ", ".join(f"{name} {sec:.0f} s ({100 * w:.0f}%)" for (name, w), sec in
                                    zip(PHASES, plan.values())) + f"; {recipe.reserve_s:.0f} s kept for the report")

    def on_sigint(signum, frame):
        recipe.interrupted = True
        raise KeyboardInterrupt

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, on_sigint)
    status, reason = "completed", None
    try:
        status, reason = recipe.run()
    except (_Interrupted, KeyboardInterrupt):
        status, reason = "interrupted", "interrupted (Ctrl-C): run the same command again to resume"
    except _StopRecipe as err:
        status, reason = "stopped", str(err)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    final = next((s.evidence for s in recipe.steps if s.key == "final"), None)
    from trainlab.recipe.report import write_report

    seconds = time.time() - started
    result = RecipeResult(study, status, reason, recipe.steps, final, None, seconds, budget_s, plan)
    report = write_report(store, study, out, result=result)
    result.report = str(report)
    result.seconds = time.time() - started
    if reason:
        recipe.say(f"{status}: {reason}")
    if final and not quiet:
        print(f"final model: val/acc {final['val_acc']:.4f}, test/acc {final['test_acc']:.4f}; config {final['yaml']}")
    recipe.say(f"report: {report} ({result.seconds:.0f} s this run, budget {budget_s:.0f} s)")
    store.close()
    return result
