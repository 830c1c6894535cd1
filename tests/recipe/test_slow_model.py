"""A slow model on a short budget (shapes32/resnet at 5 minutes: ~50 s an epoch). Steps 2-3 keep to the
checks' cap: step 2 trains the least steps that show its loss falling and tries no remedy the cap cannot
hold; step 3 does not widen past the cap, and then goes on from the rate at which step 2's loss fell
instead of calling a failure; the cost model takes step 2's training seconds per update. A search whose
least work (two epochs) is more than its share of the time left is skipped, so the final model trains
longer. Real checks on real data, in this process."""

import time

import pytest

from helpers import noisy_task
from trainlab.config import load_config
from trainlab.recipe.plan import MIN_OVERFIT_STEPS
from trainlab.recipe.records import StepResult
from trainlab.recipe.check_steps import LR_STEPS_SHORT, lr_step, overfit_step
from trainlab.recipe.steps import Call, Steps
from trainlab.store import Store


def _steps(tmp_path, hp, task):
    return Steps(hp, task, Store(tmp_path / "r.db"), str(tmp_path / "r.db"), "cap", tmp_path / "out",
                 str(tmp_path / "runs"), workers=1, updates_per_epoch=20)


def _call(cap, earlier=()):
    return Call(run_id=0, plan=None, seconds=0.0, deadline=time.time(), earlier=tuple(earlier), cap=cap)


def test_a_capped_overfit_check_trains_the_least_steps_and_tries_no_remedy(tmp_path):
    from trainlab.tasks import load_task

    hp = load_config(None, ["task=digits", "model=mlp", "width=16", "lr=0.0003"])   # slow: 30 steps do not memorize
    steps = _steps(tmp_path, hp, load_task(hp))
    r = overfit_step(steps, _call(cap=0.0))
    assert [a["max_steps"] for a in r.evidence["attempts"]] == [MIN_OVERFIT_STEPS]
    # the loss barely moved in 30 steps: without the cap a remedy at 10x the rate would follow; with it, no
    # failure (a remedy left out is no evidence), and step 3 tests the rates
    assert r.verdict == "warn" and "no time for the remedy at lr 0.003 within the checks' cap" in r.message
    # seconds per training update from the check run's epoch times: positive, and below the check's own
    # seconds per step, which carry its validations
    assert 0 < r.evidence["train_step_s"] < 1.5 * r.evidence["step_s"]
    steps.store.close()


def _overfit(learned: bool) -> StepResult:
    """Step 2's evidence: its loss fell at lr 0.03 (`learned`), or nothing tried; 1 ms per step."""
    ev = {"attempts": [{"lr": 0.03, "verdict": "warn", "cause": "too slow"}], "loss_fell_at": 0.03} if learned else {}
    return StepResult("overfit", 2, "overfit a small sample", "warn", "the loss fell", {**ev, "step_s": 0.001})


@pytest.mark.parametrize("learned", [True, False], ids=["step-2-learned", "no-evidence"])
def test_a_capped_lr_test_is_not_widened_and_goes_on_from_step_2s_rate(tmp_path, learned):
    """Inputs that carry nothing: no rate moves the loss in the short test, and the cap (0.3 s: the short
    test, not 1.5x more) leaves no time to widen it. Not a failure: the rate at which step 2's loss fell goes
    on, or without that evidence the config's own rate (the doctor judges the runs that follow)."""
    hp = load_config(None, ["model=mlp", "width=64"])
    steps = _steps(tmp_path, hp, noisy_task(0.06, zero_inputs=True))
    r = lr_step(steps, _call(cap=0.3, earlier=[_overfit(learned)]))
    assert [a["steps"] for a in r.evidence["attempts"]] == [LR_STEPS_SHORT]       # not widened
    assert "no time to widen the test" in r.message
    assert r.verdict == "warn"   # a test cut short is no evidence that no rate trains the model
    if learned:
        assert r.evidence["suggested_lr"] == 0.03
        assert r.message.startswith("suggested lr 0.03, the rate at which step 2's loss fell")
    else:
        assert r.evidence["suggested_lr"] == hp.lr and "the config's own rate" in r.message
    steps.store.close()


def test_an_lr_test_the_cap_cannot_hold_is_not_run_when_step_2_learned(tmp_path):
    hp = load_config(None, ["model=mlp", "width=64"])
    steps = _steps(tmp_path, hp, noisy_task(0.06, zero_inputs=True))
    r = lr_step(steps, _call(cap=0.1, earlier=[_overfit(True)]))   # the shortest test: about 2 x 6.5 x 20 ms
    assert r.verdict == "warn" and r.evidence["suggested_lr"] == 0.03 and r.evidence["check_run"] is None
    assert "does not fit the checks' cap" in r.message
    assert steps.store.runs(study="cap") == []                   # nothing trained
    steps.store.close()


def test_an_lr_test_with_time_widens_as_before(tmp_path):
    """The same dead inputs with no cap: all three tries run (the widening is only ever cut by time)."""
    from trainlab.checks import check_lr_widened

    hp = load_config(None, ["model=mlp", "width=64"])
    dead = check_lr_widened(noisy_task(0.06, zero_inputs=True), hp, steps=20, sweep_steps=40, max_steps=40,
                            seconds=1e9)
    assert [a["steps"] for a in dead.settings["attempts"]] == [20, 40, 40] and "cut" not in dead.settings
    assert dead.message.startswith("no rate moves the loss, after 3 tries")


@pytest.mark.parametrize("train_step_s, runs", [(0.5, False), (0.25, False), (0.05, True)],
                         ids=["beyond-its-share", "final-too-short", "fast"])
def test_a_search_runs_only_when_its_share_holds_two_epochs_and_the_final_keeps_ten(tmp_path, train_step_s, runs):
    """300 s, 100 updates an epoch. At 0.5 s an update one epoch takes ~58 s: two are more than the coarse
    grid's share (25/90 of the ~298 s left, ~83 s). At 0.25 s two epochs (~59 s) fit its share, but the
    final model's 10 epochs (~289 s) do not fit after them. Both skipped, saying why; at 0.05 s it runs."""
    from trainlab.recipe.runner import _Recipe

    hp = load_config(None, ["model=mlp"])
    steps = Steps(hp, None, Store(tmp_path / "r.db"), str(tmp_path / "r.db"), "fits", tmp_path / "out",
                  str(tmp_path / "runs"), workers=2, updates_per_epoch=100)
    recipe = _Recipe(steps, budget_s=300.0, force=False, quiet=True, spent_before=0.0)
    recipe.results.append(StepResult("overfit", 2, "overfit a small sample", "pass", "memorized",
                                     {"train_step_s": train_step_s}))
    need = recipe.costs().min_work("coarse")
    assert need == pytest.approx(1.0 + 2 * train_step_s * 100 * 1.15)          # in this process: the cheaper way
    fits, why = recipe.fits("coarse")
    assert fits is runs
    if train_step_s == 0.5:
        assert f"needs about {need:.0f} s at least, more than its share" in why and "trains longer" in why
    elif not runs:
        assert f"needs about {need:.0f} s at least and the final model" in why and "for 10 epochs after it" in why
    steps.store.close()
