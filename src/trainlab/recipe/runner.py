"""The recipe: choosing hyperparameters end to end, in seven steps, within a wall-clock budget.

This module carries the steps out: it resumes, handles Ctrl-C, keeps the budget and records each step;
what each step does is `check_steps.py`, `steps.py` and `final.py`, the arithmetic behind it `plan.py` and `costs.py`, the report `report.py`.

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
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from trainlab.config import DEFAULT_RUNS_DIR, Config, ConfigError, apply_overrides
from trainlab.recipe.check_steps import init_step, lr_step, overfit_step
from trainlab.recipe.costs import CostModel
from trainlab.recipe.final import final_step
from trainlab.recipe.plan import (
    CHECKS_CAP,
    FINAL_MIN_EPOCHS,
    FIRST_ROUND_SHARE,
    MAX_ROUNDS,
    PHASE_OF_STEP,
    PHASES,
    STEP_TITLES,
    phase_allowance,
    plan_budget,
)
from trainlab.recipe.records import Interrupted, RecipeResult, StepResult, StopRecipe
from trainlab.recipe.report import write_report
from trainlab.recipe.configs import search_base
from trainlab.recipe.startup import (MIN_THREAD_SPEEDUP, REPORT_FIGURES, Progress, figure_cost, jsonable,
                                     thread_speedup, warm_up)
from trainlab.recipe.steps import Call, Steps
from trainlab.search.workers import default_workers, idle_cores
from trainlab.store import Store, normalize_url

if TYPE_CHECKING:  # the annotation only: importing trainlab.recipe stays free of torch
    from trainlab.tasks import Task

__all__ = ["run_recipe", "study_name", "DEFAULT_BUDGET_MINUTES", "DEFAULT_REPORT_DIR"]

DEFAULT_BUDGET_MINUTES = 5.0        # wall-clock budget of a recipe
DEFAULT_REPORT_DIR = "recipe-report"

# --- helpers --------------------------------------------------------------------------------------------

def study_name(hp: Config, task: Task | None = None) -> str:
    """recipe-<task>-<model>: the task's file stem for `path.py:build`, its module for `pkg.mod:build`; the
    model is the Config's for a built-in task, and for a user task (given `task`) the name it gives its model
    (`Task.model_name`), or none: a user task builds its own model, whatever `hp.model` says
    (`recipe-regression-mlp-regressor`, `recipe-mytask`)."""
    name = hp.task
    if ":" in name:
        target = name.rpartition(":")[0]
        name = Path(target).stem if target.endswith(".py") else target
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "task"
    model = hp.model
    if task is not None and ":" in hp.task:   # a user task, file.py:fn or pkg.mod:fn
        model = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(task.model_name or task.info.get("model") or "")).strip("-")
    return f"recipe-{slug}-{model}" if model else f"recipe-{slug}"


def _attempts(store: Store, base: str) -> list[tuple[int, str]]:
    pattern = re.compile(re.escape(base) + r"(?:-(\d+))?$")
    found = []
    for s in store.studies(kind=None):
        m = pattern.match(s["name"])
        if m:
            found.append((int(m.group(1) or 1), s["name"]))
    return sorted(found)


# --- the recipe -------------------------------------------------------------------------------------------

class _Recipe:
    """Carries the steps out: resumes (a step with a completed run is read back, not run), keeps the budget
    (each phase's deadline, fixed when it starts), records every step as a run and prints its verdict."""

    def __init__(self, steps: Steps, budget_s: float, force: bool, quiet: bool, spent_before: float,
                 started: float | None = None, figure_s: float = 0.0):
        self.steps, self.store, self.study = steps, steps.store, steps.study
        self.budget_s, self.force, self.quiet = budget_s, force, quiet
        # kept back for the report: its figures, at what one measured figure cost on this machine now, less
        # the promise's own tolerance (5% + 10 s, of which 8 s are used here: the steps' own overruns get the rest)
        report_s = min(0.3 * budget_s, max(2.0, 0.04 * budget_s, 3.0 + REPORT_FIGURES * figure_s))
        self.reserve_s = max(2.0, report_s - (0.05 * budget_s + 8.0))
        self.started = time.time() if started is None else started
        self.end = self.started - spent_before + budget_s - self.reserve_s
        self.checks_end: float | None = None   # the checks' hard cap, counted from when they begin
        self.results: list[StepResult] = []
        self.done = self._finished_steps()
        self.interrupted = False
        self.phase_deadline: dict[str, float] = {}

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

    def costs(self) -> CostModel:
        """The cost model as of now: what the steps so far measured."""
        return self.steps.costs(self.results)

    def deadline(self, phase: str) -> float:
        """The phase's deadline, fixed when the phase first asks for it: its share of the time left, but
        at least the least work that makes the phase mean something (`CostModel.min_work`), within the
        budget: a search's floor may take the later phases' share, never the final model's; the final's
        may take what is left, never more (a model whose two epochs do not fit the budget, shapes32/resnet
        at 0.5 minutes, trains what fits, stopped at its `minutes` and validated, instead of overrunning
        the budget 4x)."""
        if phase not in self.phase_deadline:
            now = time.time()
            floor = self.costs().min_work(phase)
            later = self.costs().min_work("final") if phase != "final" else 0.0
            floor = min(floor, max(0.0, self.end - now - later))
            self.phase_deadline[phase] = now + max(phase_allowance(self.end - now, phase), floor)
        return self.phase_deadline[phase]

    def fits(self, phase: str) -> tuple[bool, str]:
        """Whether the least useful work of search phase `phase` (two epochs of one training) fits in its share
        of the budget's time left, and the final model's FINAL_MIN_EPOCHS in the rest, and the numbers that say
        so. A search that does not fit is skipped: a slow model's search at its floor (two constant-rate epochs
        per training) teaches less than it costs the final model's decayed epochs (shapes32/resnet at 5 minutes:
        a 2-epoch refine left the final one epoch, 26% test accuracy), overrunning the budget would break the
        promise, and the final model is what the recipe delivers."""
        costs, left = self.costs(), max(0.0, self.end - time.time())
        need, share = costs.min_work(phase), phase_allowance(left, phase)
        final = costs.training_cost(1, FINAL_MIN_EPOCHS)
        if need > share:
            return False, (f"{left:.0f} s of the budget left; the {phase} search needs about {need:.0f} s at least, "
                           f"more than its share of that ({share:.0f} s): the final model trains longer instead")
        why = (f"{left:.0f} s of the budget left; the {phase} search needs about {need:.0f} s at least "
               f"and the final model {final:.0f} s for {FINAL_MIN_EPOCHS} epochs after it")
        return left >= need + final, why

    def cap(self, phase: str, share: float = 1.0) -> float:
        """The most seconds a step of `phase` may take, floors included (`Call.cap`; `share` of it): for the
        checks, what is left of CHECKS_CAP x the budget, counted from the first check (a slow start-up is not
        theirs); no cap for the other phases, which keep to their deadlines."""
        if phase != "checks":
            return math.inf
        if self.checks_end is None:
            self.checks_end = time.time() + CHECKS_CAP * self.budget_s
        return max(0.0, self.checks_end - time.time()) * share

    def left(self, phase: str) -> float:
        return max(0.0, self.deadline(phase) - time.time())

    def step(self, key: str, number: int, fn: Callable[[Call], StepResult], phase_share: float = 1.0) -> StepResult:
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
            self.results.append(result)
            self.say(f"{label}: {result.verdict}: {result.message} (done before, skipped)")
            return result
        phase = PHASE_OF_STEP[number]
        left = self.left(phase) * phase_share
        stored_plan = (prev or {}).get("summary", {}).get("plan") if prev else None
        if prev is not None:
            run_id = prev["id"]
            self.store.update_run(run_id, status="running", reason=None)
        else:
            hp = self.steps.hp
            run_id = self.store.create_run(name=f"step-{number}-{key}" if number <= 7 else "step-final",
                                           hparams=hp.model_dump(mode="json"), seed=hp.seed,
                                           study=self.study, kind="step")
        self.store.update_run(run_id, summary={"key": key, "step": number, "title": title, "phase": phase})
        call = Call(run_id=run_id, plan=stored_plan, seconds=left, deadline=self.deadline(phase),
                    earlier=tuple(self.results), interrupted=lambda: self.interrupted, cap=self.cap(phase, phase_share))
        progress = Progress(label, left, not self.quiet)
        t0 = time.time()
        try:
            result = fn(call)
            if self.interrupted:
                raise Interrupted()
        except (KeyboardInterrupt, Interrupted):
            progress.close()
            self.store.finish_run(run_id, "stopped", reason="interrupted (Ctrl-C); run the same command to resume",
                                  summary={"seconds": time.time() - t0})
            self.results.append(StepResult(key, number, title, "stopped", "interrupted (Ctrl-C)", {},
                                           time.time() - t0, run_id, "stopped"))
            raise Interrupted() from None
        except BaseException as err:
            progress.close()
            self.store.finish_run(run_id, "failed", reason=f"{type(err).__name__}: {err}"[:500])
            raise
        progress.close()
        result.seconds, result.run_id = time.time() - t0, run_id
        self.store.finish_run(run_id, "completed", reason=result.message,
                              summary={"verdict": result.verdict, "message": result.message,
                                       "evidence": jsonable(result.evidence), "seconds": result.seconds})
        self.results.append(result)
        self.say(f"{label}: {result.verdict}: {result.message} ({result.seconds:.0f} s of {left:.0f} s)")
        return result

    # ---- the whole recipe
    def run(self) -> tuple[str, str | None]:
        steps = self.steps
        r1 = self.step("init", 1, lambda call: init_step(steps, call))
        if r1.verdict == "fail" and not self.force:
            return "stopped", f"step 1 failed: {r1.message} (--force goes on anyway)"
        r2 = self.step("overfit", 2, lambda call: overfit_step(steps, call), phase_share=0.45)
        if r2.verdict == "fail" and not self.force:
            return "stopped", f"step 2 failed: {r2.message} (--force goes on anyway)"
        r3 = self.step("lr", 3, lambda call: lr_step(steps, call))
        if r3.verdict == "fail" and not self.force:
            return "stopped", f"step 3 failed: {r3.message} (--force goes on anyway)"
        fits, why = (True, "") if "coarse" in self.done else self.fits("coarse")
        self.step("coarse", 4, steps.coarse_step if fits else lambda call: steps.skip_coarse(call, why))
        incumbent, move = None, None
        fits, why = (True, "") if "refine-1" in self.done else self.fits("refine")
        if not fits:
            incumbent = self.step("refine-1", 5, lambda call: steps.skip_refine(call, why)).evidence["incumbent"]
        for k in range(1, MAX_ROUNDS + 1 if fits else 1):
            share = FIRST_ROUND_SHARE if k == 1 else 1.0
            r5 = self.step(f"refine-{k}", 5, lambda call, k=k, inc=incumbent, mv=move: steps.refine_step(call, k, inc, mv),
                           phase_share=share)
            incumbent = r5.evidence["incumbent"]
            r6 = self.step(f"doctor-{k}", 6, lambda call, k=k: steps.doctor_step(call, k))
            move = r6.evidence
            r7 = self.step(f"loop-{k}", 7, lambda call, k=k: steps.loop_step(call, k))
            if not r7.evidence["continue"]:
                break
        self.step("final", 8, lambda call: final_step(steps, call, incumbent))
        return "completed", None


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


def run_recipe(hp: Config, *, budget_minutes: float = DEFAULT_BUDGET_MINUTES, workers: int | None = None,
               out: str | Path = DEFAULT_REPORT_DIR, db: str | Path | None = None, fresh: bool = False,
               force: bool = False, quiet: bool = False, runs_dir: str = DEFAULT_RUNS_DIR,
               final_schedule: str = "placed", started_at: float | None = None,
               threads: int | str | None = None) -> RecipeResult:
    """Run the seven steps on `hp` (its task and model; the recipe chooses lr, weight decay, epochs and
    what the doctor asks for), write the report to `out`, and return what was done.

    `budget_minutes` of wall-clock time in all, the report included: counted from `started_at` (a
    time.time(); the command line passes its process's start, so torch's import counts) or, without it,
    from the end of torch's warm-up in this call; kept to within 5% + 10 s. `final_schedule` "placed" (default) sizes the final cosine from step 5's
    constant-rate curves (`final_plan.place_decay`); "fixed" runs the longest cosine that fits. `workers`
    search processes (default: `default_workers()`, the machine's cores, at most MAX_DEFAULT_WORKERS) with
    cores/workers torch threads each. `threads`: torch threads of the trainings in this process (the checks,
    a search or a final model run here, alone): "auto" takes the cores idle now (`idle_cores`) where this
    model's update is at least MIN_THREAD_SPEEDUP faster on them (`thread_speedup`), else one; None (default)
    is "auto" unless $OMP_NUM_THREADS is set (then torch's current count); an int is taken as given.
    Restored at the end.
    Running again with the same arguments resumes the study; `fresh` starts a new one; `force` goes on
    after a failed check. Ctrl-C stops cleanly: the result's status is "interrupted" and the report
    shows what was done. Raises ConfigError for bad input, before anything is written.
    """
    from trainlab.preflight import load_checked_task
    from trainlab.tasks import model_label
    from trainlab.train.plan import RunPlan

    if not isinstance(budget_minutes, (int, float)) or not math.isfinite(budget_minutes) or budget_minutes <= 0:
        raise ConfigError(f"budget: must be a positive number of minutes, got {budget_minutes!r}")
    if workers is None:
        workers = default_workers()
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")
    if final_schedule not in ("placed", "fixed"):
        raise ConfigError(f"final_schedule: must be placed or fixed, got {final_schedule!r}")
    if threads not in (None, "auto") and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"threads: must be an integer >= 1 or 'auto', got {threads!r}")
    hp = apply_overrides(hp, {})
    task = load_checked_task(hp)   # ConfigError for an unknown task or model or bad data, before the store is touched
    # The cost model's epochs: updates per epoch of the searches' trainings, from their RunPlan (the one
    # place run lengths are derived; a config whose run the plan rejects is a ConfigError here, before the store).
    updates_per_epoch = RunPlan.resolve(search_base(hp), examples=len(task.train), world_size=1).updates_per_epoch
    db_url = normalize_url(db)
    store = Store(db_url)
    out = Path(out)
    budget_s = 60.0 * budget_minutes
    warmup_s = warm_up()
    figure_s = figure_cost()
    started = time.time() if started_at is None else float(started_at)
    base = study_name(hp, task)
    attempts = _attempts(store, base)
    if not attempts and base != study_name(hp):   # a user task's recipe begun before its study took the task's model
        attempts = _attempts(store, study_name(hp))
    if fresh or not attempts:
        n = (attempts[-1][0] + 1) if attempts else 1
        study = base if n == 1 else f"{base}-{n}"
    else:
        study = attempts[-1][1]
        _check_same_config(store, study, hp)
    spent = sum((r.get("summary") or {}).get("seconds", 0.0) for r in store.runs(study=study, kind="step")
                if r["status"] == "completed")
    import torch

    threads_before = torch.get_num_threads()
    speedup = None
    if threads is None:
        threads = threads_before if "OMP_NUM_THREADS" in os.environ else "auto"
    if threads == "auto":
        threads = idle_cores()
        if threads > 1:   # the idle cores, where this model trains faster on them
            speedup = thread_speedup(task, hp, threads, min(5.0, 0.015 * budget_s))
            if speedup is None or speedup < MIN_THREAD_SPEEDUP:
                threads, speedup = 1, None
    steps = Steps(hp, task, store, db_url, study, out, runs_dir, workers, updates_per_epoch, warmup_s, final_schedule,
                  threads=threads, thread_speedup=speedup)
    recipe = _Recipe(steps, budget_s, force, quiet, spent, started, figure_s)
    plan = plan_budget(budget_s)
    resumed = sum(1 for r in recipe.done.values() if r["status"] == "completed")
    recipe.say(f"trainlab recipe: {task.name}/{model_label(task, hp)}, budget {budget_minutes:g} min, {workers} worker"
               f"{'s' if workers > 1 else ''}, {threads} thread{'s' if threads > 1 else ''} here"
               + (f" ({speedup:.2f}x one's speed)" if speedup else "") + f"; study {study}" + (f" (resumed: {resumed} steps done, "
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
    torch.set_num_threads(threads)
    try:
        status, reason = recipe.run()
    except (Interrupted, KeyboardInterrupt):
        status, reason = "interrupted", "interrupted (Ctrl-C): run the same command again to resume"
    except StopRecipe as err:
        status, reason = "stopped", str(err)
    finally:
        torch.set_num_threads(threads_before)
        if old is not None:
            signal.signal(signal.SIGINT, old)
    final = next((s.evidence for s in recipe.results if s.key == "final"), None)
    seconds = time.time() - started
    result = RecipeResult(study, status, reason, recipe.results, final, None, seconds, budget_s, plan)
    report = write_report(store, study, out, result=result)
    result.report = str(report)
    result.seconds = time.time() - started
    if reason:
        recipe.say(f"{status}: {reason}")
    if final and not quiet:
        print(f"final model: {final.get('metric', 'val/acc')} {final['val_acc']:.4f}, "
              f"{final.get('test_metric', 'test/acc')} {final['test_acc']:.4f}; config {final['yaml']}")
    recipe.say(f"report: {report} ({result.seconds:.0f} s this run, budget {budget_s:.0f} s)")
    store.close()
    return result
