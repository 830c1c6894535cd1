"""Step 2's remedies: the next learning rate from the attempts so far, inside the bracket they set, and a
model whose loss falls is never given up on (pure arithmetic; the recipe's real runs are in test_recipe.py)."""

import math

import pytest

from trainlab.recipe.plan import next_overfit_lr


def _a(lr, cause):
    return {"lr": lr, "cause": cause}


@pytest.mark.parametrize("attempts, want", [
    ([_a(0.03, "too slow")], 0.3),                                              # one decade up
    ([_a(0.03, "loss not going down")], 0.3),
    ([_a(0.3, "loss exploding")], 0.03),                                        # one decade down
    # too slow at 0.03, exploding at 0.3: halfway (in log) between them, not back to 0.03 (the old dead end)
    ([_a(0.03, "too slow"), _a(0.3, "loss exploding")], math.sqrt(0.03 * 0.3)),
    ([_a(0.03, "too slow"), _a(0.3, "loss exploding"), _a(math.sqrt(0.009), "too slow")],
     math.sqrt(math.sqrt(0.009) * 0.3)),
    ([_a(0.1, "loss exploding"), _a(0.01, "loss exploding")], 0.001),           # still exploding: keep going down
    ([_a(1.0, "too slow"), _a(3.0, "too slow")], None),                        # 30 is out of range
    ([_a(0.1, "too slow"), _a(0.18, "loss exploding")], None),                  # bracket closed (within 2x)
])
def test_next_overfit_lr(attempts, want):
    got = next_overfit_lr(attempts)
    assert (got is None) if want is None else got == pytest.approx(want)
