"""The final model: the time the placed decay leaves over (plan.spend_final), step-decay milestones, and
the peak rate its decay starts from (final_plan.pick_peak, final.peak_check)."""

import math

import pytest

from trainlab.recipe.final_plan import MAX_SPENT_MEMBERS, place_decay, spend_final


def rounds_cost(workers: int, epoch_s: float = 2.0, run_s: float = 2.0, overhead: float = 0.0):
    return lambda m, e: overhead + math.ceil(m / workers) * (run_s + e * epoch_s)


def test_time_left_over_goes_to_members_first_then_a_longer_cosine():
    decay = place_decay([5, 5], 10, 60)            # stalled at 5: a 10-epoch cosine, 60 would fit
    assert decay["epochs"] == 10
    d = spend_final(100, decay, 2, rounds_cost(2))
    # 0.9 x 100 s = 90 s: 4 members are 2 rounds of (2 + 10 x 2) = 44 s; then 2 x (2 + 2E) <= 90 -> E <= 21, capped at 20
    assert (d["members"], d["epochs"], d["placed_epochs"], d["patience"]) == (4, 20, 10, 10)
    assert d["stall_epoch"] == 5 and "4 members instead of 2" in d["reason"] and "20 epochs instead of 10" in d["reason"]
    assert d["reason"].startswith(decay["reason"])


def test_nothing_changes_when_nothing_more_fits_or_the_cosine_is_already_the_longest():
    decay = place_decay([5, 5], 10, 60)
    tight = spend_final(24.5, decay, 2, rounds_cost(2))        # 22 s of 0.9 x 24.5: the placed plan is all that fits
    assert (tight["members"], tight["epochs"], tight["reason"]) == (2, 10, decay["reason"])
    still_rising = place_decay([None, 5], 10, 30)             # no stall: the longest cosine that fits, already
    d = spend_final(1000, still_rising, 2, rounds_cost(2))
    assert (d["members"], d["epochs"]) == (2, 30) and d["reason"] == still_rising["reason"]


def test_a_member_that_costs_a_round_waits_for_the_longer_cosine():
    decay = place_decay([5, 5], 10, 60)
    d = spend_final(40, decay, 2, rounds_cost(2))              # a 3rd member needs a 2nd round (44 s > 36 s)
    assert (d["members"], d["epochs"]) == (2, 17)              # 2 + 17 x 2 = 36


def test_members_are_capped_and_one_worker_pays_for_each():
    decay = place_decay([3, 3], 8, 100)                        # 6 epochs placed
    roomy = spend_final(10_000, decay, 2, rounds_cost(2))
    assert roomy["members"] == MAX_SPENT_MEMBERS and roomy["epochs"] == 12   # stretch capped at 2x
    # one worker: 3 members x (2 + 6 x 2) = 42 s fit in 0.9 x 50 s, 4 do not; then 3 x (2 + 2E) <= 45 -> E = 6
    one = spend_final(50, decay, 1, rounds_cost(1))
    assert (one["members"], one["epochs"]) == (3, 6) and "cosine" not in one["reason"].split("time left over")[1]


def test_a_config_with_step_decay_gets_milestones_at_the_stall_and_halfway_through_the_rest():
    from trainlab.recipe.final_plan import shaped
    from trainlab.recipe.configs import final_config
    from trainlab.config import load_config
    from trainlab.schedules import from_config

    decay = place_decay([6, 6], 10, 60)                        # 12 epochs placed
    cos = shaped(decay, "cosine", 0.1)
    assert cos["schedule"] == "cosine" and cos["described"] == "cosine over 12 epochs"
    for kind in ("step", "multistep"):
        d = shaped(decay, kind, 0.2)
        assert d["schedule"] == "multistep" and d["milestones_epochs"] == [6.0, 9.0] and d["gamma"] == 0.2
        assert "lr x0.2 at epochs 6 and 9" in d["described"]
    # stretched by the time left over, the milestones move with the length: the same decay, later
    spent = spend_final(1000, decay, 2, rounds_cost(2))
    assert shaped(spent, "multistep", 0.1)["milestones_epochs"] == [12.0, 18.0] and spent["epochs"] == 24
    # the final config trains exactly that schedule: lr x1 before epoch 6, x0.2 until 9, x0.04 after
    hp = final_config(load_config(None, ["task=digits", "schedule=step"]), {"lr": 0.1, "weight_decay": 0.0}, 12, 6,
                      decay=shaped(decay, "step", 0.2))
    assert (hp.schedule, hp.milestones_epochs, hp.gamma, hp.epochs) == ("multistep", [6.0, 9.0], 0.2, 12)
    f, _ = from_config(hp, 10, 120, 0)
    assert [round(f(s), 6) for s in (0, 59, 60, 89, 90, 119)] == [1.0, 1.0, 0.2, 0.2, 0.04, 0.04]
    assert final_config(load_config(None, ["task=digits"]), {"lr": 0.1, "weight_decay": 0.0}, 12, 6).schedule == "cosine"


def _peak_rows(values):
    """Leaderboard rows of a peak check at lr 0.01: {(factor, fold): value}."""
    return [{"params": {"lr": 0.01 * f, "split_seed": fold}, "value": v} for (f, fold), v in values.items()]


def test_the_peak_rate_is_the_best_mean_over_both_folds_the_lower_on_a_tie():
    from trainlab.recipe.final_plan import pick_peak

    rows = _peak_rows({(1, 0): 0.90, (1, 1): 0.92, (2, 0): 0.95, (2, 1): 0.93, (4, 0): 0.97, (4, 1): 0.89})
    assert pick_peak(rows, 0.01)["factor"] == 2.0                        # 0.94 beats 0.93 and 0.91
    tie = _peak_rows({(1, 0): 0.9, (1, 1): 0.9, (2, 0): 0.9, (2, 1): 0.9, (4, 0): 0.9, (4, 1): 0.9})
    assert pick_peak(tie, 0.01) == {"factor": 1.0, "lr": 0.01, "means": {1.0: 0.9, 2.0: 0.9, 4.0: 0.9}}
    # a loss (mode min): the lowest mean; a factor with a fold missing (the deadline, a divergence) is out
    loss = _peak_rows({(1, 0): 0.30, (1, 1): 0.32, (2, 0): 0.20, (2, 1): None, (4, 0): 0.25, (4, 1): 0.27})
    picked = pick_peak(loss, 0.01, mode="min")
    assert picked["factor"] == 4.0 and picked["means"][2.0] is None and math.isclose(picked["lr"], 0.04)
    assert pick_peak(_peak_rows({(2, 0): 0.9}), 0.01)["factor"] == 1.0   # nothing complete: the chosen rate
    assert pick_peak(_peak_rows({(1, 0): float("nan"), (1, 1): 0.9, (2, 0): 0.5, (2, 1): 0.5}), 0.01)["factor"] == 2.0


@pytest.mark.slow
def test_the_peak_check_trains_the_final_decay_from_each_rate_on_both_folds(tmp_path):
    """final.peak_check for real (digits, a small MLP, in this process): six trainings of the placed
    schedule, rate x1/x2/x4 on folds 0 and 1, filed in `<study>/final-peak` with the final's purpose; the
    pick is the best mean of those runs. When the check and the members do not fit it trains nothing."""
    import time

    from trainlab.config import load_config
    from trainlab.recipe.final import peak_check
    from trainlab.recipe.final_plan import PEAK_FACTORS, pick_peak
    from trainlab.recipe.steps import Call, Steps
    from trainlab.store import Store
    from trainlab.tasks import load_task

    hp = load_config(None, ["task=digits", "model=mlp", "width=16", "batch_size=64"])
    store = Store(tmp_path / "r.db")
    steps = Steps(hp, load_task(hp), store, str(tmp_path / "r.db"), "peak", tmp_path / "out", str(tmp_path / "runs"),
                  workers=1, updates_per_epoch=20)
    decay = place_decay([1.5, 1.5], 4, 30)                   # 3 epochs placed
    call = Call(run_id=0, plan=None, seconds=600.0, deadline=time.time() + 600, earlier=())
    assert peak_check(steps, call, {"lr": 0.01, "weight_decay": 0.0}, decay, 2, lambda m, e: 300.0) is None
    assert store.runs(study="peak/final-peak") == []

    peak = peak_check(steps, call, {"lr": 0.01, "weight_decay": 0.0}, decay, 2, lambda m, e: 1.0)
    runs = store.runs(study="peak/final-peak")
    assert len(runs) == len(PEAK_FACTORS) * 2 and all(r["status"] == "completed" for r in runs)
    assert sorted(round(r["hparams"]["lr"] / 0.01, 6) for r in runs) == [1, 1, 2, 2, 4, 4]
    assert {r["hparams"]["split_seed"] for r in runs} == {0, 1}
    assert all(r["hparams"]["schedule"] == "cosine" and r["hparams"]["epochs"] == 3 for r in runs)
    assert all(r["summary"]["purpose"]["phase"] == "final" for r in runs)
    rows = [{"params": {"lr": r["hparams"]["lr"], "split_seed": r["hparams"]["split_seed"]}, "value": r["best_metric"]}
            for r in runs]
    assert {k: peak[k] for k in ("factor", "lr", "means")} == pick_peak(rows, 0.01)
    assert f"peak rate x{peak['factor']:g} of the constant rate 0.01" in peak["reason"]
    store.close()


def test_a_final_whose_length_the_time_sets_is_fitted_to_it_and_one_the_evidence_sets_is_not():
    from trainlab.recipe.costs import CostModel
    from trainlab.recipe.final import FIT_GROWTH, fitted_to_time, member_minutes

    # measured: 10 s an epoch side by side, 2 s start-up per training, 5 s of search overhead
    costs = CostModel(2, 100, evidence=(("coarse", {"epoch_s": 10.0, "run_s": 2.0, "overhead_s": 5.0, "workers": 2}),))
    longest = place_decay([None], 4, 4)                  # the longest cosine that fits: 4 epochs (47 s of 50)
    d = fitted_to_time(longest, 2, 2, costs, 50.0)
    assert d["fit"] and d["estimated_epochs"] == 4 and d["epochs"] == math.ceil(FIT_GROWTH * 4) == 6
    assert d["patience"] == 5 and "fitted to the time: at most 6 epochs" in d["reason"]
    placed = place_decay([3, 3], 8, 20)                  # stalled at 3: a 6-epoch decay, 67 s of 200: time to spare
    assert fitted_to_time(placed, 2, 2, costs, 200.0) == placed
    # a placed decay the time does cut is fitted, within its stretch (2 x the placed epochs)
    tight = {**place_decay([2, 2], 8, 20), "placed_epochs": 4}
    t = fitted_to_time(tight, 2, 2, costs, 40.0)           # 4 epochs: 47 s > 0.9 x 40
    assert t["fit"] and t["epochs"] == 6
    # each member's minutes: the time to the deadline less the search's overhead, per round of members
    import time
    assert member_minutes(time.time() + 125.0, 4, 2, costs) == pytest.approx((125.0 - 5.0) / 2 / 60, abs=0.01)


def test_an_ensemble_only_when_each_member_gets_its_epochs_else_one_model_with_every_core():
    from trainlab.recipe.costs import CostModel
    from trainlab.recipe.final import ENSEMBLE_MIN_EPOCHS, size_members

    # measured: 60 s an epoch side by side and 35 s alone (a slow model), 2 s start-up, 5 s overhead
    slow = CostModel(2, 100, evidence=(("coarse", {"epoch_s": 60.0, "run_s": 2.0, "overhead_s": 5.0, "workers": 2}),
                                       ("refine-1", {"epoch_s": 35.0, "run_s": 2.0, "overhead_s": 1.0, "workers": 1})))
    size, workers = size_members(slow, 260.0, 2)
    assert (size["members"], workers) == (1, 1) and size["epochs"] == 6   # not 2 members x 3 epochs
    # a fast model: both members get far more than ENSEMBLE_MIN_EPOCHS side by side: an ensemble
    fast = CostModel(2, 100, evidence=(("coarse", {"epoch_s": 1.0, "run_s": 2.0, "overhead_s": 5.0, "workers": 2}),
                                       ("refine-1", {"epoch_s": 0.6, "run_s": 2.0, "overhead_s": 1.0, "workers": 1})))
    size, workers = size_members(fast, 60.0, 2)
    assert (size["members"], workers) == (2, 2) and size["epochs"] >= ENSEMBLE_MIN_EPOCHS
