"""Sanity checks before a real training run: the loss at initialization, overfitting a small sample, and
the learning-rate range test (the recipe's steps 1-3, as tools of their own).

Each check returns a dataclass with a `verdict` ("pass"/"fail"), a one-line `message` and its evidence,
and is recorded in the store (when one is given) as a run of kind "check" named "check-init",
"check-overfit" or "check-lr", status "completed" (a failed check is a completed run whose summary says
"fail": the check itself worked). Training checks are short `fit()`s; the model a caller hands in is
copied, never changed, and torch's global RNG state is put back afterwards, so a check leaves no trace.

    from trainlab import Config, load_task
    from trainlab.checks import check_init, check_overfit, check_lr

    hp = Config(model="mlp")
    task = load_task(hp)
    check_init(task, hp).message      # 'initial loss 2.31, expected about 2.3 = log(10) ...'
    check_lr(task, hp).suggested_lr   # 0.01 (the table and the plot say why)
"""

from trainlab.checks.common import CheckResult
from trainlab.checks.init import check_init, check_start
from trainlab.checks.lr import LECTURE_LRS, LRTestResult, check_lr, check_lr_widened
from trainlab.checks.overfit import check_overfit

__all__ = ["CheckResult", "LRTestResult", "check_init", "check_overfit", "check_lr", "check_lr_widened", "check_start",
           "LECTURE_LRS"]
