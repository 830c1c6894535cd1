"""trainlab recipe: budget arithmetic, search sizing, the doctor's move, bad input, and one real recipe on
digits (tiny MLP, small budget) that is interrupted with SIGINT in a real process, resumed in-process,
re-run (every step skipped), whose final.yaml `trainlab train` accepts and whose report a headless
Chromium renders with every image loaded."""

import contextlib
import html
import io
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainlab.cli import main
from trainlab.config import ConfigError, load_config
from trainlab.recipe import run_recipe
from trainlab.recipe.runner import study_name
from trainlab.recipe.plan import (PHASES, choose_move, phase_allowance, plan_budget, rank_coarse, size_coarse, size_final,
                                  size_refine)
from trainlab.store import Store

pytestmark = pytest.mark.slow  # every test here runs recipe steps for real

BUDGET_MIN = "0.5"
STEP_KEYS = ["init", "overfit", "lr", "coarse"]


# --- pure arithmetic ------------------------------------------------------------------------------------

def test_plan_budget_shares_and_replanning():
    plan = plan_budget(300)
    assert plan == {"checks": 30.0, "coarse": 75.0, "refine": 105.0, "final": 90.0}
    assert math.isclose(sum(plan.values()), 300)
    assert [n for n, _ in PHASES] == list(plan)
    # each phase gets its share of what is left: time saved early goes to the later phases, pro rata
    assert phase_allowance(300, "checks") == 30.0
    assert math.isclose(phase_allowance(270 + 15, "coarse"), 285 * 25 / 90)     # checks took 15 s of 30
    assert math.isclose(phase_allowance(100, "refine"), 100 * 35 / 65)          # an overrun shrinks the rest
    assert phase_allowance(42, "final") == 42.0 and phase_allowance(-5, "final") == 0.0
    with pytest.raises(ValueError, match="budget must be > 0 seconds, but got budget_s=0"):
        plan_budget(0)
    with pytest.raises(ValueError, match="phase must be one of checks, coarse, refine, final"):
        phase_allowance(10, "warmup")


def test_search_sizing_fits_the_share():
    # plenty of time: the full 4x3 grid, capped at 5 epochs; 6 rounds of 2 workers x 5 epochs x 1.5 s = 45 s
    assert size_coarse(75, 1.5, 2) == {"n_lrs": 4, "n_wds": 3, "epochs": 5, "prune": "none"}
    # 12 points x 1 epoch on 2 workers = 6 rounds = 18 s at 3 s/epoch; 30 s fits no 2nd plain epoch, but with
    # successive halving the 2nd epoch is for the best third (+1 per worker): 6 + 3 rounds = 27 s
    assert size_coarse(30, 3.0, 2) == {"n_lrs": 4, "n_wds": 3, "epochs": 2, "prune": "sha"}
    # not even one epoch of 12 points: the grid shrinks until one fits
    assert size_coarse(10, 3.0, 1) == {"n_lrs": 3, "n_wds": 1, "epochs": 1, "prune": "none"}
    assert size_coarse(0.1, 3.0, 1) == {"n_lrs": 1, "n_wds": 1, "epochs": 1, "prune": "none"}
    # refine: 3x2 points x 2 folds = 12 trainings = 6 rounds on 2 workers; 90 s / (6 x 1.5 s) = 10 epochs
    assert size_refine(90, 1.5, 2) == {"n_lrs": 3, "n_wds": 2, "epochs": 10, "short": False}
    assert size_refine(1000, 1.5, 2)["epochs"] == 20                       # capped at 20
    assert size_refine(63, 1.5, 2) == {"n_lrs": 3, "n_wds": 1, "epochs": 14, "short": False}
    assert size_refine(40, 1.5, 2) == {"n_lrs": 2, "n_wds": 1, "epochs": 13, "short": False}
    # no grid gets 10 epochs: the largest that gets 5 (a choice to make) beats one point trained longer
    assert size_refine(24, 1.5, 2) == {"n_lrs": 3, "n_wds": 1, "epochs": 5, "short": True}
    assert size_refine(5, 1.0, 1) == {"n_lrs": 1, "n_wds": 1, "epochs": 2, "short": True}
    # the start-up of each training counts once per round: 6 rounds x (2 s + E x 1.5 s) <= 75 s -> E = 7 -> 5
    assert size_coarse(75, 1.5, 2, run_s=2.0)["epochs"] == 5 and size_coarse(75, 1.5, 2, run_s=8.0)["epochs"] == 3
    assert size_refine(90, 1.5, 2, run_s=3.0) == {"n_lrs": 3, "n_wds": 1, "epochs": 18, "short": False}
    # the final model keeps 10% of its time in hand: 0.9 x 90 s / 1.5 s = 54 epochs
    assert size_final(90, 1.5, 2) == {"members": 2, "epochs": 54, "patience": 27}
    assert size_final(90, 1.5, 2, run_s=6.0)["epochs"] == 50
    assert size_final(90, 1.5, 1, members=2)["epochs"] == 27     # two members one after the other
    assert rank_coarse([{"lr": 1, "value": 0.9, "epochs": 3, "status": "completed"},
                        {"lr": 2, "value": 0.95, "epochs": 3, "status": "pruned"},       # lost the last rung
                        {"lr": 3, "value": 0.97, "epochs": 1, "status": "stopped"}], 3)[0]["lr"] == 2
    assert size_final(90, 1.5, 1)["members"] == 1 and size_final(1, 9.0, 8) == {"members": 3, "epochs": 1,
                                                                                  "patience": 5}


def test_cost_model_from_the_run_plan_then_from_measurements():
    """Before any search the seconds per epoch come from the checks' seconds per update x the searches'
    updates per epoch (their RunPlan: accumulation and batch size count); after one, from what it measured."""
    from trainlab.config import Config
    from trainlab.recipe.costs import PARALLEL_SLOWDOWN, CostModel, thread_speedup
    from trainlab.recipe.configs import search_base
    from trainlab.train.plan import RunPlan

    hp = Config(batch_size=32, accum_steps=2, warmup_steps=5, schedule="cosine")
    updates = RunPlan.resolve(search_base(hp), examples=1000).updates_per_epoch
    assert updates == 16                                       # ceil(ceil(1000 / 32) / 2)
    before = CostModel(1, updates, evidence=(("lr", {"step_s": 0.01}),))
    assert before.epoch_seconds() == pytest.approx(0.01 * 16 * 1.15)
    # step 2's training seconds per update (its epochs' times, no set-up or validation) win over the LR test's
    timed = CostModel(2, updates, evidence=(("overfit", {"step_s": 0.03, "train_step_s": 0.004}), ("lr", {"step_s": 0.01})))
    assert timed.epoch_seconds(False) == pytest.approx(0.004 * 16 * 1.15)
    assert timed.epoch_seconds(True) == pytest.approx(0.004 * 16 * 1.15 * PARALLEL_SLOWDOWN)
    # checks timed at 2 threads here, a worker at 1: a worker's epoch is the thread speed-up longer
    threads = CostModel(2, updates, evidence=timed.evidence, threads=2, worker_threads=1)
    assert threads.epoch_seconds(False) == pytest.approx(0.004 * 16 * 1.15)
    assert threads.epoch_seconds(True) == pytest.approx(0.004 * 16 * 1.15 * PARALLEL_SLOWDOWN * thread_speedup(2))
    assert thread_speedup(1) == 1.0 and 1.5 < thread_speedup(2) < 2.0
    measured = {"epoch_s": 2.0, "run_s": 1.0, "overhead_s": 3.0, "workers": 1}
    after = CostModel(1, updates, evidence=(("lr", {"step_s": 0.01}), ("coarse", measured)))
    assert after.epoch_seconds() == 2.0 and after.training_cost(4, 3) == 3.0 + 4 * (1.0 + 3 * 2.0)
    assert after.min_work("checks") == 0.0 and after.min_work("refine") == 3.0 + 2 * (1.0 + 2 * 2.0)


def test_doctor_move_priority():
    point = {"lr": 0.01, "weight_decay": 1e-4, "width": None, "dropout": 0.0, "epochs": 12}
    f = lambda name: {"name": name, "confidence": "high", "evidence": f"{name} seen"}  # noqa: E731
    assert choose_move([f("overfitting"), f("diverged")], point, 32)["changes"] == {"lr": pytest.approx(0.01 / 3)}
    assert choose_move([f("lr_too_low")], point, 32) == {"move": "raise lr", "reason": "lr_too_low (high): lr_too_low seen",
                                                         "changes": {"lr": pytest.approx(0.03)}}
    assert choose_move([f("train_longer"), f("overfitting")], point, 32)["changes"] == {"weight_decay": pytest.approx(1e-3)}
    assert choose_move([f("overfitting")], {**point, "weight_decay": 0.0}, 32)["changes"] == {"weight_decay": 1e-4}
    assert choose_move([f("overfitting")], {**point, "weight_decay": 1e-2}, 32)["changes"] == {"dropout": 0.1}
    assert choose_move([f("underfitting")], point, 32)["changes"] == {"width": 64}
    assert choose_move([f("update_ratio_high"), f("train_longer")], point, 32)["move"] == "train longer"
    assert choose_move([f("update_ratio_high")], point, 32)["changes"] == {"lr": pytest.approx(0.01 / 3)}
    assert choose_move([f("train_longer")], point, 32)["changes"] == {"epochs": 24}
    healthy = choose_move([], point, 32)
    assert healthy["move"] == "add decay" and healthy["changes"] == {} and "cosine" in healthy["reason"]


def test_study_names():
    assert study_name(load_config(None, ["task=digits", "model=cnn"])) == "recipe-digits-cnn"
    assert study_name(load_config(None, ["task=examples/spirals.py:build", "model=mlp"])) == "recipe-spirals-mlp"


# --- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--budget", "-1"], "trainlab: error: --budget: must be a positive number of minutes (at most 1e6), got -1\n"),
    (["--task", "nope"], "trainlab: error: task: unknown task 'nope'"),
    (["--workers", "0"], "trainlab: error: --workers: must be at least 1, got 0\n"),
    (["--threads", "0"], "trainlab: error: --threads: must be >= 1, got 0\n"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, args, message):
    db = tmp_path / "bad.db"
    assert main(["recipe", *args, "--db", str(db), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not db.exists() and not (tmp_path / "rep").exists()   # nothing written


def test_bad_threads_in_the_library_call_is_one_line_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"^threads: must be an integer >= 1 or 'auto', got 0$"):
        run_recipe(load_config(None, ["task=digits"]), threads=0, db=tmp_path / "r.db", out=tmp_path / "rep")
    assert not (tmp_path / "r.db").exists()


# --- a real recipe: interrupted, resumed, re-run -----------------------------------------------------

def _args(d: Path) -> list[str]:
    return ["recipe", str(d / "cfg.yaml"), "--task", "digits", "--budget", BUDGET_MIN, "--workers", "1",
            "--db", str(d / "r.db"), "--out", str(d / "report"), "--runs-dir", str(d / "runs")]


def _steps(db: Path) -> dict[str, dict]:
    store = Store(db)
    try:
        out = {}
        for r in store.runs(study="recipe-digits-mlp", kind="step"):
            out[r["summary"].get("key")] = r
        return out
    finally:
        store.close()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A real `trainlab recipe` process, sent SIGINT (as Ctrl-C does) once step 3 is done."""
    d = tmp_path_factory.mktemp("recipe")
    (d / "cfg.yaml").write_text("model: mlp\nwidth: 16\nbatch_size: 64\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", *_args(d)], cwd=d, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    try:
        while time.time() - t0 < 240:
            if proc.poll() is not None:
                break
            if (d / "r.db").exists():
                steps = _steps(d / "r.db")
                if steps.get("lr", {}).get("status") == "completed":
                    time.sleep(0.5)   # into step 4, the coarse grid
                    os.killpg(proc.pid, signal.SIGSTOP)   # frozen: checked, then interrupted where it is
                    assert "final" not in _steps(d / "r.db"), "the recipe ended before it could be interrupted"
                    os.killpg(proc.pid, signal.SIGINT)
                    os.killpg(proc.pid, signal.SIGCONT)
                    break
            time.sleep(0.3)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return d, proc.returncode, output


def test_interrupt_leaves_a_report(interrupted):
    d, code, output = interrupted
    assert code == 130, output
    assert "interrupted (Ctrl-C): run the same command again to resume" in output
    steps = _steps(d / "r.db")
    assert [steps[k]["status"] for k in ("init", "overfit", "lr")] == ["completed"] * 3
    stopped = [k for k, r in steps.items() if r["status"] == "stopped"]
    assert stopped and "final" not in steps
    page = (d / "report" / "index.html").read_text()
    assert "interrupted" in page and "Step 3: learning-rate test" in page
    ran = steps["lr"]["summary"]["evidence"].get("check_run") is not None   # not run when the checks' cap cannot hold it
    assert (d / "report" / "lr_test.png").is_file() == ran


@pytest.fixture(scope="module")
def resumed(interrupted):
    d, _, _ = interrupted
    before = _steps(d / "r.db")
    out = io.StringIO()
    with contextlib.redirect_stderr(out):  # progress goes to stderr; stdout carries only the result
        code = main(_args(d))
    return d, code, out.getvalue(), before, _steps(d / "r.db")


def test_resume_skips_finished_steps_and_completes(resumed):
    d, code, output, before, after = resumed
    assert code == 0, output
    for key in ("init", "overfit", "lr"):
        assert after[key]["id"] == before[key]["id"] and "(done before, skipped)" in output
    assert "resumed: 3 steps done" in output
    # every step has a verdict and evidence; 5-7 loop at least once; the final model was tested once
    for key in ("init", "overfit", "lr", "coarse", "refine-1", "doctor-1", "loop-1", "final"):
        s = after[key]["summary"]
        assert after[key]["status"] == "completed" and s["verdict"] and s["message"] and isinstance(s["evidence"], dict)
    final = after["final"]["summary"]["evidence"]
    assert 0.5 < final["test_acc"] <= 1 and 0.5 < final["val_acc"] <= 1 and final["test_n"] == 360
    refine = after["refine-1"]["summary"]["evidence"]
    assert all(len(c["folds"]) == 2 for c in refine["candidates"])        # chosen on two folds
    assert refine["best"]["mean"] == pytest.approx(sum(refine["best"]["folds"].values()) / 2)
    coarse = after["coarse"]["summary"]["evidence"]
    # every grid point tried is one of the grid's (a trial the deadline left before it got its point has none)
    assert {r["weight_decay"] for r in coarse["rows"] if r["weight_decay"] is not None} <= {1e-4, 1e-5, 0.0}
    assert all(r.get("summary", {}).get("test/acc") is None
               for r in Store(d / "r.db").runs(kind="train"))          # no search run saw the test split
    names = {p.name for p in (d / "report").iterdir()}
    assert {"index.html", "final.yaml", "overfit.png", "coarse_grid.png", "refine_1.png",
            "cv_1.png", "final_fold0.png"} <= names
    assert ("lr_test.png" in names) == (after["lr"]["summary"]["evidence"].get("check_run") is not None)


def test_final_yaml_is_accepted_by_train(resumed, capsys):
    d, *_ = resumed
    path = d / "report" / "final.yaml"
    hp = load_config(path)
    final = _steps(d / "r.db")["final"]["summary"]["evidence"]
    assert hp.model_dump(mode="json") == final["config"]
    assert hp.schedule == "cosine" and hp.patience is not None and hp.task == "digits" and hp.width == 16
    assert main(["train", str(path), "--db", str(d / "train.db"), "--runs-dir", str(d / "runs2"), "--quiet"]) == 0


def test_rerun_skips_every_step(resumed):
    d, _, _, _, after = resumed
    figures = {p.name: p.stat().st_mtime_ns for p in (d / "report").glob("*.png")}
    out = io.StringIO()
    with contextlib.redirect_stderr(out):  # progress goes to stderr
        assert main(_args(d)) == 0
    text = out.getvalue()
    assert len(figures) >= 4 and {p.name: p.stat().st_mtime_ns for p in (d / "report").glob("*.png")} == figures, \
        "a rerun whose steps were all done redraws no figure"
    assert text.count("(done before, skipped)") == len(after) - sum(1 for r in after.values() if r["status"] != "completed")
    assert {k: r["id"] for k, r in _steps(d / "r.db").items()} == {k: r["id"] for k, r in after.items()}


def test_fresh_starts_a_new_study(tmp_path):
    """--fresh files a second attempt under recipe-<task>-<model>-2 (checked without training: bad budget
    first, then a config that fails step 1 cheaply is not needed; the naming is what is tested)."""
    from trainlab.recipe.runner import _attempts

    store = Store(tmp_path / "s.db")
    for name in ("recipe-digits-mlp", "recipe-digits-mlp/coarse", "recipe-digits-mlp-2", "recipe-digits-mlp-x"):
        store.study_id(name)
    assert _attempts(store, "recipe-digits-mlp") == [(1, "recipe-digits-mlp"), (2, "recipe-digits-mlp-2")]


def test_report_renders_in_chromium(resumed):
    d, *_ = resumed
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page()
            errors, requests = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((d / "report" / "index.html").as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
            text = page.inner_text("body")
        finally:
            browser.close()
    assert errors == []
    assert len(images) >= 6 and all(w > 0 for _, w in images), images
    assert all(u.startswith("file://") for u in requests)          # nothing from the network
    for heading in ("Step 1: initial loss", "Step 2: overfit a small sample", "Step 3: learning-rate test",
                    "Step 4: coarse grid", "Step 5: refine", "Step 6: doctor", "Step 7: loop", "Final model: final model"):
        assert heading in text
    assert "test accuracy" in text and "validation accuracy" in text and "split_seed" in text


# --- the deadline: a fit() callback, and run_search(deadline=...) ------------------------------------------

def test_deadline_stops_fit_and_search(tmp_path):
    from trainlab import fit, load_task
    from trainlab.search import run_search
    from trainlab.train.callbacks import BUDGET_REACHED, Deadline

    hp = load_config(None, ["task=digits", "model=mlp", "width=8", "epochs=50", "monitor_every=0"])
    cb = Deadline(time.time())
    r = fit(load_task(hp), hp, callbacks=[cb], quiet=True, evaluate_test=False)
    assert cb.fired and r.status == "stopped" and r.reason == BUDGET_REACHED and r.steps == 1
    assert r.best_metric is not None                     # the partial epoch is still validated
    cb = Deadline(time.time() + 3600)
    r = fit(load_task(hp), load_config(None, ["task=digits", "model=mlp", "width=8", "epochs=1"]), callbacks=[cb],
            quiet=True, evaluate_test=False)
    assert not cb.fired and r.status == "completed"
    # a search whose deadline has passed starts no trial
    res = run_search(hp, {"lr": "grid(0.01, 0.001)"}, strategy="grid", db=tmp_path / "s.db", study="late",
                     quiet=True, checkpoints=False, deadline=time.time() - 1)
    assert res.leaderboard == [] and not res.complete


def test_final_schedule_is_placed_from_step_5_and_the_headline_says_what_ran(resumed):
    d, _, _, _, after = resumed
    final = after["final"]["summary"]["evidence"]
    decay = final["decay"]
    assert decay["epochs"] == final["epochs"] and decay["reason"] in after["final"]["summary"]["message"]
    if decay["stall_epoch"] is not None:   # placed: 2x the epoch where step 5's constant-rate curves stalled
        assert decay["placed_epochs"] <= max(2, math.ceil(2 * decay["stall_epoch"]))
        # time left over stretches it to at most twice that, and adds members (one per fold)
        assert decay["placed_epochs"] <= decay["epochs"] <= math.ceil(2 * decay["placed_epochs"])
        assert len(final["members"]) == decay["members"] == len(final["folds"])
    store = Store(d / "r.db")
    for m in final["members"]:
        run = store.run(m["run"])
        assert f"{run['epochs']} epochs" in final["ran"] and f"best epoch {run['best_epoch']}" in final["ran"]
    page = (d / "report" / "index.html").read_text()
    assert "final run: " in page and html.escape(final["ran"]) in page


def test_coarse_trials_carry_their_purpose_and_expected_findings_are_no_problem(resumed):
    from trainlab.doctor import diagnose_run, diagnose_study

    d, _, _, _, after = resumed
    store = Store(d / "r.db")
    study = after["coarse"]["summary"]["evidence"]["study"]
    runs = store.runs(study=study)
    assert runs and all(r["summary"]["purpose"]["phase"] == "coarse" for r in runs)
    # a trial the phase's deadline stopped before its first step has nothing to diagnose
    diagnosed = [d_ for d_ in (diagnose_run(store, r["id"]) for r in runs) if d_.steps]
    assert diagnosed
    for d_ in diagnosed:
        names = {f.name for f in d_.findings}
        assert not names & {"train_longer", "update_ratio_high", "plateau"}, names
    sd = diagnose_study(store, study)
    assert [d_.run_id for d_ in sd.runs] == [d_.run_id for d_ in diagnosed]
    assert all(d_.purpose["phase"] == "coarse" for d_ in sd.runs)
    assert {s["name"] for s in sd.shared}.isdisjoint({"train_longer", "update_ratio_high"})


def test_a_figure_is_drawn_again_only_when_what_it_shows_changed(tmp_path):
    from trainlab.recipe.report import _figure

    calls, drawn = [], {}

    def draw(path):
        calls.append(path.name)
        path.write_bytes(b"png")

    _figure(tmp_path, "a.png", "s1", drawn, draw)
    _figure(tmp_path, "a.png", "s1", drawn, draw)           # same inputs, on disk: kept
    _figure(tmp_path, "a.png", "s2", drawn, draw)           # the step's evidence changed
    (tmp_path / "a.png").unlink()
    _figure(tmp_path, "a.png", "s2", drawn, draw)           # deleted by hand
    _figure(tmp_path, "a.png", None, drawn, draw)           # a step under way: always drawn, not remembered
    _figure(tmp_path, "a.png", "s2", drawn, draw)
    assert calls == ["a.png"] * 5 and drawn == {"a.png": "s2"}

    def broken(path):
        raise ValueError("no rows")

    with pytest.raises(ValueError):
        _figure(tmp_path, "a.png", "s3", drawn, broken)
    assert drawn == {}                                       # a failed draw is not remembered


def test_thread_speedup_is_timed_on_the_model_and_leaves_the_thread_count_as_it_was():
    import torch

    from trainlab.recipe.startup import thread_speedup
    from trainlab.tasks import load_task

    hp = load_config(None, ["task=digits", "model=mlp"])
    task = load_task(hp)
    before = torch.get_num_threads()
    ratio = thread_speedup(task, hp, 2, 1.0)
    assert ratio is not None and 0.2 < ratio < 4.0     # a ratio of two timings, whatever the load
    assert torch.get_num_threads() == before
    assert thread_speedup(task, hp, 1, 1.0) is None     # nothing to compare
    assert thread_speedup(task, hp, 2, 1e-6) is None    # not two updates a setting fit
