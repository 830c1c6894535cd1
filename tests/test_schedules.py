import doctest
import math
import re

import pytest
import torch
from torch.optim import lr_scheduler

from trainlab import schedules
from trainlab.schedules import KINDS, apply_lr, cycle_ends, make_schedule

BASE = 0.1
REL = 1e-9


# --- closed forms, written out independently of the module ---------------------------------


def _reference(kind, t, T, *, m=0.0, step_size=None, milestones=(), gamma=0.1,
               period=None, period_mult=1.0, s=1):
    """The schedule's closed form at t steps after warmup (no warmup)."""
    if kind == "constant":
        return 1.0
    if kind == "step":
        return gamma ** (t // step_size)
    if kind == "multistep":
        return gamma ** len([x for x in milestones if x <= t])
    if kind == "cosine":
        return m if t >= T else m + (1 - m) * (1 + math.cos(math.pi * t / T)) / 2
    if kind == "linear":
        return max(m, 1 - t / T)
    if kind == "inverse_sqrt":
        return 1 / math.sqrt(max(t, s) / s)
    if kind == "cyclic_cosine":
        length, t_cur = (period or T), t
        while t_cur >= length:  # walk the cycles one by one
            t_cur -= length
            length *= period_mult
        return m + (1 - m) * (1 + math.cos(math.pi * t_cur / length)) / 2
    raise AssertionError(kind)


CASES = {
    "constant": [{}],
    "step": [{"step_size": 7, "gamma": 0.5}, {"step_size": 1, "gamma": 0.9}],
    "multistep": [{"milestones": [10, 25, 25, 60], "gamma": 0.3}, {"milestones": [0, 40]}],
    "cosine": [{}, {"min_factor": 0.2}],
    "linear": [{}, {"min_factor": 0.25}],
    "inverse_sqrt": [{}, {"timescale": 1}, {"timescale": 16}],
    "cyclic_cosine": [{"period": 13}, {"period": 10, "period_mult": 2.0, "min_factor": 0.1},
                      {"period": 5, "period_mult": 1.5}, {}],
}


def test_cases_cover_every_kind():
    assert set(CASES) == set(KINDS)


@pytest.mark.parametrize("warmup", [0, 1, 9])
@pytest.mark.parametrize(
    "kind,kwargs", [(k, kw) for k in KINDS for kw in CASES[k]], ids=lambda v: str(v)
)
def test_every_kind_matches_its_closed_form(kind, kwargs, warmup):
    total = 120
    T = total - warmup
    f = make_schedule(kind, total, warmup_steps=warmup, **kwargs)
    ref_kwargs = {k: v for k, v in kwargs.items() if k not in ("min_factor", "timescale")}
    ref = lambda t: _reference(kind, t, T, m=kwargs.get("min_factor", 0.0),  # noqa: E731
                               s=kwargs.get("timescale", max(1, warmup)), **ref_kwargs)
    for step in range(warmup):
        assert f(step) == pytest.approx(ref(0) * (step + 1) / warmup, rel=REL)
    for step in range(warmup, total + 50):  # past total_steps too: cosine holds m, SGDR cycles
        assert f(step) == pytest.approx(ref(step - warmup), rel=REL, abs=1e-15), step


def test_hand_picked_values():
    f = make_schedule("cosine", 6, warmup_steps=2)
    assert [round(f(s), 3) for s in range(8)] == [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0, 0.0]
    f = make_schedule("linear", 4, min_factor=0.3)
    assert [f(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.3, 0.3]
    # inverse_sqrt with s = warmup_steps = 4: flat for 4 steps after warmup, then sqrt(4 / t)
    f = make_schedule("inverse_sqrt", 100, warmup_steps=4)
    assert [f(s) for s in (0, 3, 4, 8, 12, 20)] == pytest.approx([0.25, 1, 1, 1, 0.5**0.5, 0.5])
    f = make_schedule("multistep", 100, warmup_steps=2, milestones=[0, 3], gamma=0.5)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.5, 0.5, 0.5, 0.25]  # warmup ramps to main(0)


def test_factor_is_pure_so_resuming_is_just_calling_it():
    f = make_schedule("cyclic_cosine", 200, warmup_steps=10, period=20, period_mult=2.0)
    forward = [f(s) for s in range(200)]
    assert [f(s) for s in reversed(range(200))] == forward[::-1]
    assert make_schedule("cyclic_cosine", 200, warmup_steps=10, period=20, period_mult=2.0)(137) \
        == forward[137]


def test_docstring_examples():
    assert doctest.testmod(schedules).failed == 0


# --- oracles: torch's own schedulers, stepping a real optimizer ---------------------------


def _torch_lrs(make_scheduler, n_steps, base=BASE):
    """lr used for each of n_steps updates of SGD driven by a torch scheduler."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(n_steps):
        lrs.append(opt.param_groups[0]["lr"])
        param.grad = torch.ones(1)
        opt.step()
        sched.step()
    return lrs


def _assert_matches_torch(make_scheduler, factor, n_steps):
    lrs = _torch_lrs(make_scheduler, n_steps)
    for step, lr in enumerate(lrs):
        # abs: torch's recursive cosine leaves ~1e-18 where the closed form gives exactly 0
        assert lr == pytest.approx(BASE * factor(step), rel=REL, abs=1e-15), step


ORACLES = {
    "StepLR": (lambda o: lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
               make_schedule("step", 100, step_size=7, gamma=0.5), 100),
    "MultiStepLR": (lambda o: lr_scheduler.MultiStepLR(o, milestones=[10, 25, 25, 60], gamma=0.3),
                    make_schedule("multistep", 100, milestones=[10, 25, 25, 60], gamma=0.3), 100),
    "CosineAnnealingLR": (lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=100),
                          make_schedule("cosine", 100), 101),
    "CosineAnnealingLR-eta_min": (
        lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=100, eta_min=0.2 * BASE),
        make_schedule("cosine", 100, min_factor=0.2), 101),
    "LinearLR": (lambda o: lr_scheduler.LinearLR(o, 1.0, 0.0, total_iters=100),
                 make_schedule("linear", 100), 120),
    "CosineAnnealingWarmRestarts-T_mult1": (
        lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=13, eta_min=0.1 * BASE),
        make_schedule("cyclic_cosine", 100, period=13, min_factor=0.1), 100),
    "CosineAnnealingWarmRestarts-T_mult2": (
        lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2),
        make_schedule("cyclic_cosine", 150, period=10, period_mult=2), 150),
}


@pytest.mark.parametrize("name", ORACLES)
def test_matches_torch_scheduler(name):
    make_scheduler, factor, n_steps = ORACLES[name]
    _assert_matches_torch(make_scheduler, factor, n_steps)


@pytest.mark.parametrize("warmup", [1, 2, 10])
def test_warmup_cosine_matches_torch_sequential_lr(warmup):
    # LinearLR from 1/W to 1 over W-1 steps gives (step + 1) / W, full lr at the last warmup
    # step; SequentialLR then restarts CosineAnnealingLR at its own step 0, i.e. t = step - W.
    total = 60
    T = total - warmup

    def torch_schedule(opt):
        warm = lr_scheduler.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0,
                                     total_iters=warmup - 1)
        cos = lr_scheduler.CosineAnnealingLR(opt, T_max=T)
        return lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[warmup])

    _assert_matches_torch(torch_schedule, make_schedule("cosine", total, warmup_steps=warmup),
                          total)


# --- cycle_ends ----------------------------------------------------------------------------


@pytest.mark.parametrize("warmup", [0, 5])
@pytest.mark.parametrize("period,mult", [(10, 1.0), (7, 1.0), (10, 2.0), (4, 3.0), (6, 1.5)])
def test_cycle_ends_are_where_the_factor_jumps_back_up(period, mult, warmup):
    total = 200
    f = make_schedule("cyclic_cosine", total, warmup_steps=warmup, period=period,
                      period_mult=mult)
    ends = cycle_ends(total, warmup_steps=warmup, period=period, period_mult=mult)
    # f is defined past total_steps, so a cycle ending on the last step shows its jump too.
    jumps = [s for s in range(warmup, total) if f(s + 1) > f(s)]
    assert ends == jumps
    assert len(ends) >= 2 and ends[-1] <= total - 1


def test_cycle_ends_include_a_cycle_ending_on_the_last_step():
    assert cycle_ends(30, period=10) == [9, 19, 29]
    assert cycle_ends(29, period=10) == [9, 19]
    assert cycle_ends(100, warmup_steps=5, period=10, period_mult=2) == [14, 34, 74]
    assert cycle_ends(75, warmup_steps=5, period=10, period_mult=2) == [14, 34, 74]
    assert cycle_ends(74, warmup_steps=5, period=10, period_mult=2) == [14, 34]


# --- apply_lr ------------------------------------------------------------------------------


def test_apply_lr_sets_each_group_from_its_own_base_lr():
    backbone, head = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [backbone], "lr": 0.01}, {"params": [head]}], lr=0.1)
    apply_lr(opt, 0.5)
    assert [g["base_lr"] for g in opt.param_groups] == [0.01, 0.1]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 0.05], rel=REL)
    apply_lr(opt, 0.25)  # from base_lr, not compounding on the current lr
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0025, 0.025], rel=REL)
    apply_lr(opt, 1.0)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]


def test_apply_lr_keeps_an_explicit_base_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param], "base_lr": 0.3}], lr=0.1)
    apply_lr(opt, 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.15, rel=REL)


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("args,kwargs,message", [
    (("warmup", 10), {}, "kind must be one of ('constant', 'step', 'multistep', 'cosine', "
     "'linear', 'inverse_sqrt', 'cyclic_cosine'), but got kind='warmup'."),
    (("cosine", 0), {}, "total_steps must be a positive integer, but got total_steps=0."),
    (("cosine", 10.0), {}, "total_steps must be a positive integer, but got total_steps=10.0."),
    (("cosine", 10), {"warmup_steps": 10},
     "warmup_steps must be an integer in [0, total_steps), but got warmup_steps=10 with "
     "total_steps=10."),
    (("cosine", 10), {"warmup_steps": -1},
     "warmup_steps must be an integer in [0, total_steps), but got warmup_steps=-1 with "
     "total_steps=10."),
    (("cosine", 10), {"min_factor": 1.0},
     "min_factor must be in [0, 1), but got min_factor=1.0."),
    (("cosine", 10), {"min_factor": -0.1},
     "min_factor must be in [0, 1), but got min_factor=-0.1."),
    (("step", 10), {"step_size": 2, "gamma": 0.0}, "gamma must be in (0, 1], but got gamma=0.0."),
    (("step", 10), {"step_size": 2, "gamma": 1.5}, "gamma must be in (0, 1], but got gamma=1.5."),
    (("step", 10), {},
     "step_size must be a positive integer for kind='step', but got step_size=None."),
    (("step", 10), {"step_size": 0},
     "step_size must be a positive integer for kind='step', but got step_size=0."),
    (("multistep", 10), {"milestones": [5, 3]},
     "milestones must be non-negative integers in non-decreasing order, but got "
     "milestones=[5, 3]."),
    (("multistep", 10), {"milestones": [-1, 3]},
     "milestones must be non-negative integers in non-decreasing order, but got "
     "milestones=[-1, 3]."),
    (("cyclic_cosine", 10), {"period": 0}, "period must be a positive integer, but got period=0."),
    (("cyclic_cosine", 10), {"period": 5, "period_mult": 0.5},
     "period_mult must be >= 1, but got period_mult=0.5."),
    (("inverse_sqrt", 10), {"timescale": 0},
     "timescale must be a positive integer, but got timescale=0."),
])
def test_make_schedule_rejects_bad_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_schedule(*args, **kwargs)


def test_negative_step_is_rejected():
    message = "step must be a non-negative integer, but got step=-1."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_schedule("constant", 10)(-1)


@pytest.mark.parametrize("kwargs,message", [
    ({"total_steps": 0, "period": 5},
     "total_steps must be a positive integer, but got total_steps=0."),
    ({"total_steps": 10, "warmup_steps": 12, "period": 5},
     "warmup_steps must be an integer in [0, total_steps), but got warmup_steps=12 with "
     "total_steps=10."),
    ({"total_steps": 10, "period": 0}, "period must be a positive integer, but got period=0."),
    ({"total_steps": 10, "period": 5, "period_mult": 0.9},
     "period_mult must be >= 1, but got period_mult=0.9."),
])
def test_cycle_ends_rejects_bad_arguments(kwargs, message):
    total = kwargs.pop("total_steps")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cycle_ends(total, **kwargs)
