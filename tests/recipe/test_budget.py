"""The recipe's budget promise: total wall time within --budget x 1.05 + 10 s, start-up included, measured
from outside a real `trainlab recipe` process on a second task/model pair (the recipe's own tests use
digits/mlp); and the sizing rules that keep it when the time left is short (pure arithmetic)."""

import os
import time

import pytest

from trainlab.recipe.costs import CostModel
from trainlab.recipe.plan import size_final
from trainlab.store import Store


def test_a_search_that_fits_nowhere_takes_the_cheaper_way():
    """Worker processes train more side by side, but when neither way fits the seconds (both at their floor
    of one epoch) the recipe takes the one that costs less: here, without the workers' start-up."""
    slow_start = {"epoch_s": 5.0, "run_s": 0.0, "overhead_s": 12.0, "workers": 2}
    here = {"epoch_s": 4.0, "run_s": 0.0, "overhead_s": 0.5, "workers": 1}
    costs = CostModel(2, 100, evidence=(("coarse", slow_start), ("refine-1", here)))

    def final(members):
        return lambda s, e, w, r: size_final(s, e, w, run_s=r, members=members)

    size, workers = costs.sized(3.0, final(2), lambda z: z["members"])
    assert (size["epochs"], workers) == (1, 1)  # 2 x 4 s here (8.5 s) beats 12 s of start-up + 5 s
    assert costs.cost(2, 1, 1, False) == pytest.approx(8.5) and costs.cost(2, 1, 2, True) == pytest.approx(17.0)
    # with the time for it, the workers train more
    size, workers = costs.sized(60.0, final(2), lambda z: z["members"])
    assert workers == 2 and size["epochs"] > 1


@pytest.mark.slow
def test_a_tiny_budget_is_kept_on_a_users_regression_task(regression_recipe):
    """`trainlab recipe --set task=examples/regression.py:build --budget 0.5` (the session's one real process of
    it, tests/conftest.py) ends within 0.5 x 60 x 1.05 + 10 s of wall time, start-up and report included, with
    a final model; a step the budget could not hold says so. A second pair beside the recipe's own tests
    (digits/mlp): a user's task file, a regression judged by its loss."""
    r = regression_recipe
    limit = 60 * r["budget_min"] * 1.05 + 10
    if r["wall"] > limit and r["load"] > 2 * (os.cpu_count() or 1):
        pytest.xfail(f"{r['wall']:.1f} s for a {60 * r['budget_min']:.0f} s budget on a machine at load {r['load']:.1f}: "
                     "other jobs took the cores (benchmarks/recipe_budget.py measures the promise)")
    assert r["wall"] <= limit, f"{r['wall']:.1f} s for a {60 * r['budget_min']:.0f} s budget (limit {limit:.1f} s, load {r['load']:.1f})"
    report = r["cwd"] / "recipe-report"
    assert (report / "index.html").is_file() and (report / "final.yaml").is_file()
    store = Store(r["cwd"] / "trainlab.db", read_only=True)
    steps = {run["summary"]["key"]: run for run in store.runs(kind="step")}
    store.close()
    assert {"init", "overfit", "lr", "coarse", "refine-1", "final"} <= set(steps)
    assert all(run["status"] == "completed" for run in steps.values())
    for key in ("coarse", "refine-1"):
        if steps[key]["summary"]["verdict"] == "skipped":  # the budget left could not hold it: the numbers say why
            assert "s of the budget left" in steps[key]["summary"]["message"]


@pytest.mark.slow
def test_the_final_model_is_never_given_up_when_the_time_ran_out(tmp_path, monkeypatch):
    """When the final phase's time is gone before any member finished an epoch (a loaded machine, a slow
    start: forced here by a final deadline in the past), the recipe still delivers a model: one member
    trained for one epoch past the deadline, and the headline says so."""
    from trainlab import Config
    from trainlab.recipe import run_recipe
    from trainlab.recipe.runner import _Recipe

    deadline = _Recipe.deadline
    monkeypatch.setattr(_Recipe, "deadline",
                        lambda self, phase: time.time() - 1 if phase == "final" else deadline(self, phase))
    hp = Config(task="digits", model="mlp", width=16, batch_size=64)
    result = run_recipe(hp, budget_minutes=0.1, workers=1, out=tmp_path / "report", db=tmp_path / "r.db",
                        runs_dir=tmp_path / "runs", quiet=True)
    assert result.status == "completed", result.to_dict()
    store = Store(tmp_path / "r.db")
    (final,) = [r for r in store.runs(study="recipe-digits-mlp", kind="step") if r["summary"]["key"] == "final"]
    store.close()
    ev = final["summary"]["evidence"]
    assert ev["least_model_s"] is not None and "over the budget: no member finished an epoch" in final["summary"]["message"]
    assert [m["epochs"] for m in ev["members"]] == [1] and ev["test_acc"] > 0.2  # one epoch: well above chance (0.1)
    assert (tmp_path / "report" / "final.yaml").is_file()
