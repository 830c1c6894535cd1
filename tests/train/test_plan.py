"""RunPlan: a run's length and learning rate from hp, the number of examples and the number of processes.
Pure arithmetic: no model, no data, no loop."""

import math

import pytest

from trainlab.config import Config, ConfigError
from trainlab.train import RunPlan, lr_schedule
from trainlab.train.averaging import snapshot_steps


@pytest.mark.parametrize("examples, world, batch, accum, micro, updates", [
    (3600, 1, 32, 1, 113, 113),   # ceil(3600 / 32)
    (3600, 1, 32, 2, 113, 57),    # a short last group of micro-batches is one more update
    (1030, 2, 32, 2, 17, 9),      # each rank: ceil(1030 / 2) = 515 examples, ceil(515 / 32) = 17 micro-batches
    (1000, 4, 25, 5, 10, 2),      # 250 per rank, exactly 10 micro-batches, 2 updates
    (7, 2, 32, 3, 1, 1),          # fewer examples than one batch
])
def test_updates_per_epoch_with_accumulation_and_world_size(examples, world, batch, accum, micro, updates):
    hp = Config(batch_size=batch, accum_steps=accum, epochs=3)
    plan = RunPlan.resolve(hp, examples, world)
    assert (plan.micro_batches_per_epoch, plan.updates_per_epoch) == (micro, updates)
    assert plan.total_updates == 3 * updates and plan.epochs == 3
    assert plan.global_batch == batch * accum * world
    assert plan.total_updates == lr_schedule(hp, updates, world)[1], "the same arithmetic as lr_schedule"


def test_steps_cut_the_last_epoch():
    plan = RunPlan.resolve(Config(batch_size=32, steps=250), 3600)
    assert (plan.updates_per_epoch, plan.total_updates, plan.epochs) == (113, 250, 3)


def test_lr_scaling_scales_the_lr_and_adds_a_warmup():
    hp = Config(lr=0.1, batch_size=32, lr_scaling="linear", base_batch_size=32, scaling_warmup_epochs=0.5,
                schedule="constant", epochs=4)
    plan = RunPlan.resolve(hp, 3200, world_size=4)  # 800 per rank, 25 updates per epoch, global batch 128
    assert plan.updates_per_epoch == 25 and plan.global_batch == 128
    assert plan.warmup_updates == round(0.5 * 25) == 12
    assert plan.scaling.warmup_added and plan.scaling.effective_lr == pytest.approx(0.4)
    assert plan.lr(0) == pytest.approx(0.4 / 12), "warmup starts at 1/warmup of the scaled lr"
    assert plan.lr(plan.warmup_updates) == pytest.approx(0.4) and plan.lr(plan.total_updates - 1) == pytest.approx(0.4)
    assert all(plan.lr(s) < plan.lr(s + 1) for s in range(plan.warmup_updates - 1)), "the lr rises through warmup"
    one = RunPlan.resolve(hp, 3200, world_size=1)  # global batch 32 = base: no scaling, but still the added warmup
    assert one.scaling.effective_lr == pytest.approx(0.1) and one.warmup_updates == round(0.5 * 100)
    explicit = RunPlan.resolve(hp.model_copy(update={"warmup_steps": 5}), 3200, world_size=4)
    assert explicit.warmup_updates == 5 and not explicit.scaling.warmup_added, "an explicit warmup wins"
    off = RunPlan.resolve(hp.model_copy(update={"lr_scaling": "none"}), 3200, world_size=4)
    assert off.warmup_updates == 0 and off.lr(0) == pytest.approx(0.1)


def test_a_warmup_longer_than_the_run_is_a_config_error():
    hp = Config(batch_size=32, lr_scaling="linear", scaling_warmup_epochs=5.0, epochs=2)
    with pytest.raises(ConfigError, match=r"^scaling_warmup_epochs: the warmup that lr_scaling=linear adds is 565 "
                                          r"updates, not fewer than the run's 226"):
        RunPlan.resolve(hp, 3600)


@pytest.mark.parametrize("settings", [
    dict(cycles=3, epochs=3),
    dict(cycles=4, epochs=5, warmup_steps=7),
    dict(cycles=3, epochs=4, lr_scaling="sqrt", base_batch_size=16, scaling_warmup_epochs=0.5),
    dict(restart_period_epochs=1.0, restart_mult=2.0, epochs=8),
])
def test_cycle_ends_are_where_the_learning_rate_restarts(settings):
    hp = Config(batch_size=128, schedule="cyclic_cosine", **settings)
    plan = RunPlan.resolve(hp, 3600)  # 29 updates per epoch
    ends, total, warmup = list(plan.cycle_ends), plan.total_updates, plan.warmup_updates
    assert ends and ends[-1] < total
    lrs = [plan.lr(s) for s in range(total)]
    restarts = [s for s in range(warmup, total - 1) if lrs[s + 1] > lrs[s]]
    assert restarts == [s for s in ends if s < total - 1 and lrs[s + 1] > lrs[s]]
    inner = [s for s in ends if s != ends[-1] or hp.restart_period_epochs]
    assert set(inner) <= set(restarts), "every cycle but a held last one ends with a restart"
    assert all(lrs[s + 1] <= lrs[s] for s in range(warmup, total - 1) if s not in ends), "no restart elsewhere"
    if not hp.restart_period_epochs:
        assert len(ends) == hp.cycles
    assert ends == snapshot_steps(hp, plan.updates_per_epoch), "snapshot_steps reads the same plan"


def test_only_the_cyclic_schedule_and_its_own_factor_have_cycle_ends():
    assert RunPlan.resolve(Config(schedule="cosine"), 3600).cycle_ends == ()
    sweep = RunPlan.resolve(Config(schedule="cyclic_cosine", epochs=2), 3600, factor=lambda s: 1.5 ** s)
    assert sweep.cycle_ends == () and sweep.schedule == "custom"
    assert sweep.lr(3) == pytest.approx(3e-3 * 1.5 ** 3), "a given factor replaces hp's schedule"


def test_summary_keys_and_values():
    hp = Config(batch_size=32, accum_steps=2, schedule="cyclic_cosine", cycles=2, epochs=2, lr_scaling="sqrt",
                base_batch_size=32, scaling_warmup_epochs=0.0)
    plan = RunPlan.resolve(hp, 3600, world_size=2)
    summary = plan.summary()
    assert set(summary) == {"effective_lr", "global_batch_size", "base_batch_size", "per_device_batch_size",
                            "world_size", "accum_steps", "warmup_steps", "warmup_added", "lr_scaling", "plan"}
    assert summary["global_batch_size"] == 128 and summary["lr_scaling"] == "sqrt"
    assert summary["effective_lr"] == pytest.approx(3e-3 * math.sqrt(4))
    assert summary["plan"] == {
        "examples": 3600, "world_size": 2, "updates_per_epoch": 29, "micro_batches_per_epoch": 57, "accum_steps": 2,
        "total_updates": 58, "epochs": 2, "warmup_updates": 0, "schedule": "cyclic_cosine", "cycle_period": 29,
        "cycle_ends": [28, 57]}


def test_describe_prints_the_schedule_and_the_scaling():
    hp = Config(model="mlp", lr=0.1, batch_size=32, epochs=2, schedule="constant", lr_scaling="linear", base_batch_size=64,
                scaling_warmup_epochs=0.0)
    lines = RunPlan.resolve(hp, 3200, world_size=4).describe(hp, "run 7", "mnist1d")
    assert lines[0] == ("run 7: mnist1d/mlp, adam lr 0.1, constant schedule over 50 optimizer updates "
                        "(25 per epoch, batch 32); warmup 0 updates")
    assert lines[1] == "  lr at step 0: 0.2, 12: 0.2, 25: 0.2, 37: 0.2, 49: 0.2"
    assert lines[2].startswith("  lr 0.2 = 0.1 x 128/64 (linear scaling from base batch 64)")


def test_an_empty_training_set_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^task: the training set is empty, got 0 examples$"):
        RunPlan.resolve(Config(), 0)
