"""Unit tests on plain arrays: the doctor's rules, the LR-test analysis, the ratio warnings, the sweep's
schedule. The same rules are tested on real training runs in tests/doctor/test_diagnose.py and tests/test_checks.py."""

import math

import numpy as np
import pytest
import torch

from trainlab.doctor.init_loss import init_loss_verdict
from trainlab.doctor.finding import Finding
from trainlab.doctor.rules import diagnose
from trainlab.doctor.curves import loss_trend, smoothing_window
from trainlab.doctor.lr_range import (AGREE_DECADES, SWEEP_RULE, analyze_lr_sweep, lr_trial_summary, lrs_agree,
                                      pick_discrete_lr)
from trainlab.doctor.ratio import RATIO_BAND, ratio_warnings
from trainlab.monitor import judged_parameters
from trainlab.schedules import exponential_ramp


def noisy(values, sd=0.05, seed=0):
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=float)
    return (v + rng.normal(0, sd, v.shape)).tolist()


def decaying(n=600, start=2.3, end=0.3, tau=80.0):
    t = np.arange(n)
    return end + (start - end) * np.exp(-t / tau)


def epochs(values):
    return {"epoch": list(range(1, len(values) + 1)), "value": list(values)}


def names(findings):
    return [f.name for f in findings]


# --- the doctor on arrays ----------------------------------------------------------------------------

def cosine(n=600, peak=1e-3):
    return (peak * 0.5 * (1 + np.cos(np.pi * np.arange(n) / n))).tolist()


def test_healthy_curves_give_no_finding():
    # the same curve at a constant rate is a plateau (test_plateau_...): with a decaying rate it is healthy
    curves = {"train/loss": noisy(decaying()), "lr": cosine(),
              "train/acc": epochs([0.80, 0.93, 0.97, 0.99, 0.995, 0.996]),
              "val/acc": epochs([0.78, 0.90, 0.94, 0.96, 0.965, 0.963]),
              "val/loss": epochs([0.6, 0.3, 0.2, 0.15, 0.14, 0.141]),
              "train/loss_eval": epochs([0.55, 0.25, 0.12, 0.05, 0.03, 0.028])}
    assert diagnose(curves, num_classes=10) == []


def test_nan_loss_is_a_divergence_with_step_and_lr():
    loss = noisy(decaying(200)) + [float("nan")] * 5
    lr = {"step": list(range(205)), "value": [0.5] * 205}
    (f,) = diagnose({"train/loss": loss, "lr": lr, "train/acc": epochs([0.3]), "val/acc": epochs([0.3])}, 10)
    assert f.name == "diverged" and f.confidence == "high"
    assert f.numbers["step"] == 200 and f.numbers["lr"] == 0.5
    assert "NaN at step 200 at lr 0.5" in f.evidence
    assert "lower the learning rate" in f.action


def test_explosion_over_ten_times_the_initial_loss():
    loss = [2.3, 2.2, 2.1, 40.0] + [2.0] * 60
    (f,) = diagnose({"train/loss": loss}, 10)
    assert f.name == "diverged" and f.numbers["step"] == 3


def test_slow_growth_is_a_medium_divergence():
    loss = noisy(np.linspace(2.3, 4.0, 300))
    (f,) = diagnose({"train/loss": loss}, 10)
    assert (f.name, f.confidence) == ("diverged", "medium")


def test_initial_loss_far_from_log_c():
    loss = noisy(decaying(300, start=9.8), sd=0.02)
    found = diagnose({"train/loss": loss}, num_classes=10)
    assert names(found) == ["initial_loss"]
    assert "expected about 2.3 = log(10)" in found[0].evidence
    # without the number of classes the rule cannot run
    assert diagnose({"train/loss": loss}) == []


def test_flat_start_then_drop_is_a_slow_start():
    loss = noisy([2.3] * 300 + list(decaying(300, start=2.3, end=0.8, tau=40)))
    found = diagnose({"train/loss": loss}, 10)
    assert names(found) == ["slow_start"]
    assert found[0].numbers["plateau_fraction"] >= 0.45
    assert "initialization" in found[0].diagnosis


def test_slow_start_during_warmup_is_low_confidence():
    loss = noisy([2.3] * 300 + list(decaying(300, start=2.3, end=0.8, tau=40)))
    lr = list(np.linspace(1e-5, 1e-3, 300)) + [1e-3] * 300
    f = {x.name: x for x in diagnose({"train/loss": loss, "lr": lr}, 10)}["slow_start"]
    assert f.confidence == "low" and "warmup" in f.evidence


def test_barely_moving_loss_is_lr_too_low_and_silences_underfitting():
    loss = noisy(np.linspace(2.30, 2.27, 400), sd=0.03)
    curves = {"train/loss": loss, "train/acc": epochs([0.10, 0.11, 0.11]), "val/acc": epochs([0.10, 0.10, 0.11])}
    found = diagnose(curves, 10)
    assert names(found) == ["lr_too_low"]
    assert found[0].confidence == "high"


def test_flat_loss_of_a_model_that_already_fits_is_not_lr_too_low():
    loss = noisy([0.05] * 400, sd=0.01)
    curves = {"train/loss": loss, "train/acc": epochs([0.99, 0.99]), "val/acc": epochs([0.98, 0.98])}
    assert diagnose(curves) == []
    # given C, its low initial loss is still flagged: a fresh model cannot start far below chance
    assert names(diagnose(curves, 10)) == ["initial_loss"]


def test_still_rising_accuracy_says_train_longer():
    curves = {"train/acc": epochs([0.38, 0.49, 0.52]), "val/acc": epochs([0.33, 0.41, 0.45]),
              "val/loss": epochs([1.7, 1.5, 1.46])}
    (f,) = diagnose(curves)
    assert f.name == "train_longer" and f.numbers["epochs"] == [1, 3] and f.confidence == "high"


def test_rising_val_with_train_at_100_percent_is_not_train_longer():
    curves = {"train/acc": epochs([1.0] * 6), "val/acc": epochs([0.96, 0.965, 0.965, 0.965, 0.972, 0.979])}
    assert diagnose(curves) == []


def test_gap_and_rising_val_loss_is_overfitting_with_high_confidence():
    curves = {"train/acc": epochs(np.linspace(0.5, 1.0, 20)), "val/acc": epochs([0.3] * 20),
              "val/loss": epochs(list(np.linspace(2.0, 1.8, 5)) + list(np.linspace(1.85, 3.0, 15))),
              "train/loss_eval": epochs(np.linspace(2.0, 0.05, 20))}
    (f,) = diagnose(curves)
    assert f.name == "overfitting" and f.confidence == "high"
    assert f.numbers["val_loss_min_epoch"] == 5 and "stop earlier (best val/loss at epoch 5)" in f.action


def test_val_loss_rising_alone_is_medium_overfitting():
    curves = {"train/acc": epochs([0.9, 0.95, 0.97, 0.98, 0.985, 0.99]),
              "val/acc": epochs([0.88, 0.92, 0.93, 0.93, 0.93, 0.93]),
              "val/loss": epochs([0.40, 0.30, 0.28, 0.33, 0.36, 0.40]),
              "train/loss_eval": epochs([0.3, 0.2, 0.1, 0.06, 0.04, 0.03])}
    (f,) = diagnose(curves)
    assert (f.name, f.confidence) == ("overfitting", "medium")


def test_no_gap_low_flat_accuracy_is_underfitting():
    curves = {"train/acc": epochs([0.25, 0.30, 0.32, 0.32, 0.32]), "val/acc": epochs([0.24, 0.30, 0.31, 0.31, 0.31])}
    (f,) = diagnose(curves)
    assert f.name == "underfitting" and f.confidence == "high" and "bigger model" in f.action


def test_divergence_silences_the_other_curve_rules():
    loss = [9.0] + [2.3] * 60 + [float("inf")]
    found = diagnose({"train/loss": loss, "train/acc": epochs([0.2]), "val/acc": epochs([0.2])}, 10)
    assert names(found) == ["diverged", "initial_loss"]


def test_curves_may_be_plain_sequences_or_store_dicts_and_findings_serialize():
    (f,) = diagnose({"train/loss": {"step": list(range(100, 161)), "value": [2.3] * 60 + [math.nan]}})
    assert f.numbers["step"] == 160
    d = f.to_dict()
    assert set(d) == {"name", "diagnosis", "evidence", "action", "confidence", "numbers"}
    assert str(f).startswith("diverged (high): ")
    assert isinstance(f, Finding)


def test_loss_trend_and_window():
    assert smoothing_window(100) == 5 and smoothing_window(5000) == 100 and smoothing_window(10 ** 6) == 200
    t = loss_trend([2.3] * 50 + [1.0] * 50)
    assert t["start"] == pytest.approx(2.3) and t["end"] == pytest.approx(1.0) and t["min"] == pytest.approx(1.0)


@pytest.mark.parametrize("loss,ok,words", [
    (2.31, True, "look right"),
    (2.30 * 1.24, True, "look right"),
    (2.30 * 1.30, False, "output layer's scale is too large"),
    (9.8, False, "initial loss 9.8, expected about 2.3 = log(10)"),
    (0.9, False, "labels do not match the number of classes"),
    (float("nan"), False, "not finite"),
])
def test_init_loss_verdict(loss, ok, words):
    v = init_loss_verdict(loss, 10)
    assert v["ok"] is ok and words in v["message"]


def test_init_loss_verdict_rejects_one_class():
    with pytest.raises(ValueError, match="num_classes must be >= 2, but got num_classes=1"):
        init_loss_verdict(0.0, 1)


# --- the LR test's analysis --------------------------------------------------------------------------

def test_trial_summary_statuses():
    assert lr_trial_summary(list(decaying(100, 2.3, 1.0, 20)))["status"] == "ok"
    assert lr_trial_summary([2.3] * 100)["status"] == "no drop"
    spiky = [2.3] * 10 + [6.0] * 10 + [1.0] * 80
    s = lr_trial_summary(spiky)
    assert s["status"] == "unstable" and "over 2x the initial" in s["why"]
    assert pick_discrete_lr([{"lr": 0.1, **s}, {"lr": 0.01, "status": "ok", "end": 1.5}]) == 0.01
    assert lr_trial_summary([2.3, 2.2, float("nan")])["status"] == "diverged"
    assert lr_trial_summary([2.3] * 50, stopped="loss became 1e4 at step 49")["why"] == "loss became 1e4 at step 49"


def test_discrete_pick_is_the_lowest_final_loss_among_ok_trials():
    rows = [{"lr": 0.1, "status": "diverged", "end": 0.1}, {"lr": 0.01, "status": "ok", "end": 0.9},
            {"lr": 0.001, "status": "ok", "end": 0.6}, {"lr": 1e-4, "status": "no drop", "end": 2.2}]
    assert pick_discrete_lr(rows) == 0.001
    assert pick_discrete_lr([{"lr": 0.1, "status": "diverged", "end": 1.0}]) is None


def sweep_curve(n=200, lo=1e-6, hi=10.0, best=1e-2, seed=0, sd=0.03):
    """A loss against an exponentially rising lr: flat, then falling, lowest near `best`, then exploding."""
    lrs = lo * (hi / lo) ** (np.arange(n) / (n - 1))
    x = np.log10(lrs / best)
    loss = 2.3 - 1.2 / (1 + np.exp(-3 * (x + 1.5))) + np.where(x > 0, 8 * x ** 2, 0.0)
    return lrs, np.asarray(noisy(loss, sd, seed))


def test_sweep_suggestion_is_a_tenth_of_the_smoothed_minimum():
    lrs, loss = sweep_curve()
    a = analyze_lr_sweep(lrs, loss)
    assert a["rule"] == SWEEP_RULE
    assert a["suggested_lr"] == pytest.approx(a["lr_at_min"] / 10)
    i = a["min_index"]
    assert a["smoothed"][i] == min(a["smoothed"][a["skip"]:a["cut"]])
    # the EMA lags a little: the minimum sits within half a decade past the true one
    assert 1e-2 <= a["lr_at_min"] <= 10 ** -1.5
    assert "4x its minimum" in a["cut_reason"] and a["cut"] < len(lrs)


def test_sweep_is_stable_under_noise():
    picks = [analyze_lr_sweep(*sweep_curve(seed=s, sd=0.15))["suggested_lr"] for s in range(5)]
    assert max(picks) / min(picks) < 10 ** 0.5


def test_sweep_drops_nan_and_cuts_there():
    lrs, loss = sweep_curve()
    loss[150:] = np.nan
    a = analyze_lr_sweep(lrs, loss)
    assert a["cut"] <= 150 and a["dropped_nonfinite"] == 50 and len(a["raw"]) == 150
    assert a["suggested_lr"] is not None


def test_sweep_skips_the_first_points():
    lrs, loss = sweep_curve()
    loss[:5] = 0.01   # garbage at the start must not be taken for the minimum
    a = analyze_lr_sweep(lrs, loss)
    assert a["min_index"] >= a["skip"] and a["suggested_lr"] > 1e-4


def test_sweep_without_a_drop_has_no_suggestion():
    lrs = np.geomspace(1e-6, 10, 200)
    a = analyze_lr_sweep(lrs, noisy([2.3] * 200, 0.02))
    assert a["suggested_lr"] is None and "never fell 10%" in a["note"]


def test_sweep_still_falling_at_the_end_says_lower_bound():
    lrs = np.geomspace(1e-6, 1e-2, 200)
    a = analyze_lr_sweep(lrs, np.linspace(2.3, 0.5, 200))
    assert a["suggested_lr"] == pytest.approx(1e-3) and "lower bound" in a["note"]


def test_sweep_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length, but got 3 and 2"):
        analyze_lr_sweep([1, 2, 3], [1, 2])


def test_agreement_is_less_than_one_decade():
    assert AGREE_DECADES == 1.0
    assert lrs_agree(4.8e-3, 1e-2) is True
    assert lrs_agree(1.01e-3, 1e-2) is True
    assert lrs_agree(9e-4, 1e-2) is False
    assert lrs_agree(1e-1, 1e-2) is False
    assert lrs_agree(None, 1e-2) is None


# --- ratio warnings ----------------------------------------------------------------------------------

def test_ratio_warnings_judge_the_median_against_the_band():
    ratios = {"ok.weight": [1e-3, 2e-3, 5e-4], "hot.weight": [0.5, 2e-2, 3e-2, 1e-3], "cold.weight": [1e-5] * 4,
              "dead.weight": [0.0] * 3, "spiky.weight": [1e-3, 1e-3, 1.0], "few.weight": [1.0, 1.0],
              "nan.weight": [float("nan"), 1e-3, 1e-3, 1e-3]}
    w = {x.name: x for x in ratio_warnings(ratios)}
    assert set(w) == {"hot.weight", "cold.weight", "dead.weight"}
    assert w["hot.weight"].side == "high" and w["hot.weight"].median == pytest.approx(2.5e-2)
    assert w["cold.weight"].side == "low" and "want about 1e-3" in w["cold.weight"].message
    assert "does not change at all" in w["dead.weight"].message
    assert RATIO_BAND == (1e-4, 1e-2)
    with pytest.raises(ValueError, match="band must be"):
        ratio_warnings(ratios, band=(1e-2, 1e-4))


def test_judged_parameters_are_matrices_and_kernels():
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.BatchNorm1d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 38, 10))
    assert judged_parameters(model) == ["0.weight", "3.weight"]


# --- the sweep's schedule ----------------------------------------------------------------------------

def test_exponential_ramp_matches_torch_exponential_lr():
    steps, start = 50, 1e-6
    f = exponential_ramp(steps, start)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=10 * start)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=start ** (-1 / (steps - 1)))
    for s in range(steps):
        assert opt.param_groups[0]["lr"] == pytest.approx(10 * f(s), rel=1e-9)
        opt.step()
        sched.step()
    assert f(0) == pytest.approx(start) and f(steps - 1) == pytest.approx(1.0)


@pytest.mark.parametrize("args,message", [((1, 0.1), "total_steps must be an integer >= 2"),
                                          ((10, 0.0), "start_factor must be in \\(0, 1\\)"),
                                          ((10, 1.5), "start_factor must be in \\(0, 1\\)")])
def test_exponential_ramp_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        exponential_ramp(*args)


def test_the_default_runs_late_val_loss_wander_is_noise_not_overfitting():
    # measured: `trainlab train` (mnist1d resnet, defaults), per epoch; test/acc 0.988
    val_loss = [0.3471, 0.1839, 0.1377, 0.1012, 0.0746, 0.1152, 0.0852, 0.0781, 0.0646, 0.1189, 0.0418, 0.0492,
                0.0517, 0.0542, 0.0538, 0.0393, 0.0526, 0.0439, 0.0513, 0.0490, 0.0444, 0.0469, 0.0409, 0.0570,
                0.0494, 0.0473, 0.0478, 0.0497, 0.0517, 0.0529]
    val_acc = [0.8925, 0.9325, 0.96, 0.9575, 0.9775, 0.9675, 0.9675, 0.975, 0.9825, 0.97, 0.9825, 0.98, 0.98,
               0.9825, 0.9825, 0.99, 0.985, 0.99, 0.985, 0.985, 0.985, 0.9875, 0.9875, 0.9875, 0.9875, 0.985, 0.99,
               0.9875, 0.9875, 0.985]
    train_acc = [0.9175, 0.9475, 0.985, 0.9925, 0.9825, 0.9875, 0.985, 0.995, 0.985, 0.995] + [1.0] * 20
    train_loss = list(np.geomspace(0.31, 0.0002, 30))
    curves = {"val/loss": epochs(val_loss), "val/acc": epochs(val_acc), "train/acc": epochs(train_acc),
              "train/loss_eval": epochs(train_loss)}
    assert diagnose(curves) == []
    # the same epochs with a real, steady rise on top are overfitting
    risen = val_loss[:20] + [v + 0.01 * (i + 1) for i, v in enumerate(val_loss[20:])]
    assert names(diagnose({**curves, "val/loss": epochs(risen)})) == ["overfitting"]


# --- schedule-aware rules and precedence (on arrays; real runs in test_diagnose.py) -----------------------

def test_plateau_at_a_constant_rate_says_decay_now_with_its_first_step():
    loss = noisy(decaying(), sd=0.05)
    (f,) = diagnose({"train/loss": loss, "lr": [1e-3] * 600}, 10)
    assert f.name == "plateau" and "decay the learning rate now" in f.action
    assert 150 <= f.numbers["step"] <= 350 and f.numbers["lr"] == 1e-3
    assert f"from step {f.numbers['step']} (lr 0.001" in f.evidence
    assert f.numbers["slope"] < 0.1 * f.numbers["slope_before"]


@pytest.mark.parametrize("n", [300, 1200, 5000])
def test_still_falling_constant_rate_runs_of_any_length_have_no_plateau(n):
    t = np.arange(n)
    loss = noisy(2.3 - 1.2 * np.log1p(t / 30) / np.log1p(n / 30), sd=0.05)  # falling to the very end
    assert diagnose({"train/loss": loss, "lr": [1e-3] * n}, 10) == []


def test_made_up_plateau_curve_is_not_told_bigger_model():
    # the case: flat accuracy, no gap, a loss that stopped at a constant rate: decay, not "underfitting"
    curves = {"train/loss": noisy(decaying(600, end=1.0)), "lr": [1e-2] * 600,
              "train/acc": epochs([0.5, 0.6, 0.61, 0.61, 0.61]), "val/acc": epochs([0.5, 0.59, 0.6, 0.6, 0.6])}
    found = diagnose(curves, 10)
    assert names(found) == ["plateau"] and found[0].numbers["silences"] == ["underfitting"]


def test_step_decay_while_the_loss_still_falls_steeply_is_decayed_too_early():
    n, d = 800, 200
    fast = 2.3 - 1.6 * (1 - np.exp(-np.arange(n) / 300))            # still falling fast at step 200
    slow = fast[d] - 0.05 * (1 - np.exp(-np.arange(n - d) / 100))   # after x0.1: crawls
    loss = noisy(np.concatenate([fast[:d], slow]), sd=0.03)
    lr = [0.1] * d + [0.01] * (n - d)
    (f,) = diagnose({"train/loss": loss, "lr": lr}, 10)
    assert f.name == "decayed_too_early" and f.numbers["step"] == d
    assert f.numbers["lr_before"] == 0.1 and f.numbers["lr_after"] == 0.01
    assert f.numbers["slope_after"] < 0.5 * f.numbers["slope_before"]
    assert "decay later" in f.action


def test_step_decay_at_a_plateau_is_healthy():
    n, d = 800, 400
    first = decaying(d, start=2.3, end=1.0, tau=50)                 # flat well before step 400
    second = 1.0 - 0.4 * (1 - np.exp(-np.arange(n - d) / 60))       # the decay's drop, then flat again
    loss = noisy(np.concatenate([first, second]), sd=0.03)
    lr = [0.1] * d + [0.01] * (n - d)
    assert diagnose({"train/loss": loss, "lr": lr}, 10) == []


@pytest.mark.parametrize("n", [100, 400, 3000])
def test_slow_start_does_not_depend_on_the_run_length(n):
    # a healthy exponential-like fall, cut at any length, is never a slow start ...
    healthy = noisy(decaying(n, tau=max(30, n / 4)), sd=0.03)
    assert "slow_start" not in names(diagnose({"train/loss": healthy}, 10))
    # ... and the same flat start (40% of the first quarter) is one, whatever comes after
    flat = max(40, n // 10)
    bad = noisy([2.3] * flat + list(decaying(n - flat, tau=max(10, n / 40))), sd=0.03)
    assert "slow_start" in names(diagnose({"train/loss": bad}, 10))


def test_overfitting_and_train_longer_on_one_run_keep_overfitting():
    curves = {"train/acc": epochs([0.7, 0.85, 0.95, 0.99]), "val/acc": epochs([0.6, 0.66, 0.7, 0.74]),
              "val/loss": epochs([1.0, 0.9, 0.88, 0.87])}
    found = diagnose(curves)
    assert names(found) == ["overfitting"] and found[0].numbers["silences"] == ["train_longer"]


def test_precedence_does_not_depend_on_order():
    from trainlab.doctor.rules import resolve

    fs = [Finding(n, "", "", "", "medium") for n in ("underfitting", "train_longer", "plateau", "overfitting")]
    assert names(resolve(fs)) == names(resolve(fs[::-1]))[::-1] == ["plateau", "overfitting"]
