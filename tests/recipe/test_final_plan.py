"""The final model spends the time the placed decay leaves over (plan.spend_final): pure arithmetic."""

import math

from trainlab.recipe.plan import MAX_SPENT_MEMBERS, place_decay, spend_final


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
