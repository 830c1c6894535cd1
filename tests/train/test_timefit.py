"""`minutes`: a run's schedule fitted to its wall time after its first epoch, on real trainings: the decay
ends in time instead of being cut, a slowdown refits or stops at the limit, the fit is stored, and a resumed
run trains the fitted schedule to its end. No assertion on absolute times: what is asserted is what the run
did with the time it measured."""

import time

import pytest

from trainlab.config import Config, ConfigError, fitted_hparams, make_config
from trainlab.store import Store
from trainlab.train import fit
from trainlab.train.plan import RunPlan, fitted_config, updates_that_fit
import helpers
from helpers import InterruptAt, Slowdown

UPDATES = 29  # tiny config: updates per epoch on mnist1d


@pytest.fixture(scope="module")
def task(tiny_task):
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch's one-time import of torch._dynamo, paid here:
    return tiny_task                                         # inside a 3-second limit it would be the first epoch's


def _lrs(store, run_id):
    m = store.metrics(run_id, ["lr"])["lr"]
    return m["step"], m["value"]


def test_a_schedule_too_long_for_its_minutes_is_fitted_and_decays_to_its_end(task, tmp_path):
    # 2000 epochs of 29 updates cannot train in 5 seconds: the cosine is shortened after epoch 1, not cut
    hp = helpers.tiny(epochs=2000, lr=3e-3, minutes=0.08)
    store = Store(tmp_path / "t.db")
    r = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs")
    run = store.run(r.run_id)
    fitted = run["summary"]["fitted"]
    assert r.status == "completed"
    assert UPDATES <= fitted["updates"] < 2000 * UPDATES and fitted["planned_updates"] == 2000 * UPDATES
    assert run["summary"]["plan"]["total_updates"] == fitted["updates"]
    assert fitted["config"]["steps"] == fitted["updates"] and r.epochs == -(-fitted["updates"] // UPDATES)
    steps, lrs = _lrs(store, r.run_id)
    # the decay ran: the last update's rate is a few percent of the peak at most (a cut cosine stays high);
    # the schedule ended by itself, or on a loaded machine at the limit in its last stretch
    assert lrs[-1] < 0.1 * 3e-3
    assert r.steps == fitted["updates"] or r.reason == "the 0.08-minute limit reached"
    # the rate follows the fitted cosine from the fit on: the plan's lr, not a second schedule
    plan = RunPlan.resolve(fitted_config(hp, fitted["updates"], 2000 * UPDATES), len(task.train))
    after = [(s, v) for s, v in zip(steps, lrs) if s >= fitted["at_update"]]
    assert after and all(v == pytest.approx(plan.lr(s), rel=1e-9) for s, v in after)


def test_a_schedule_that_fits_its_minutes_is_left_as_planned(task, tmp_path):
    hp = helpers.tiny(epochs=3, minutes=30.0)
    store = Store(tmp_path / "t.db")
    r = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs")
    fitted = store.run(r.run_id)["summary"]["fitted"]
    assert r.status == "completed" and r.reason is None and r.steps == 3 * UPDATES
    assert fitted["updates"] == fitted["planned_updates"] == 3 * UPDATES and fitted["config"] == {}


def test_a_run_that_slows_down_is_refitted_shorter_or_stops_at_its_limit(task, tmp_path):
    hp = helpers.tiny(epochs=2000, minutes=0.08, batch_size=16)   # epochs of ~200 updates: losses read every 50
    per_epoch = -(-len(task.train) // 16)
    store = Store(tmp_path / "t.db")
    # from the third epoch on, every update is 20 ms slower: the first fit's length no longer fits
    r = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs",
            callbacks=[Slowdown(2 * per_epoch, 0.02)])
    fitted = store.run(r.run_id)["summary"]["fitted"]
    assert r.status == "completed"
    assert fitted["refits"] >= 1 and fitted["after_epochs"] >= 2, fitted
    assert r.steps <= fitted["updates"]
    # refitted inside the slow epoch (at a read of the losses), not only at an epoch's end
    assert any(at % per_epoch and at > 2 * per_epoch for at, _ in fitted["history"]), fitted["history"]


def test_the_limit_stops_a_run_whose_first_epoch_is_longer_than_its_minutes(task, tmp_path):
    hp = helpers.tiny(epochs=5, minutes=0.02)   # 1.2 s; every update sleeps 0.1 s: epoch 1 alone takes 2.9 s
    store = Store(tmp_path / "t.db")
    r = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs", callbacks=[Slowdown(0, 0.1)])
    assert (r.status, r.reason) == ("completed", "the 0.02-minute limit reached")
    assert 0 < r.steps < UPDATES and r.epochs == 1   # stopped inside epoch 1, which was validated
    assert store.run(r.run_id)["status"] == "completed"


def test_a_resumed_run_trains_its_fitted_schedule_to_its_end(task, tmp_path):
    hp = helpers.tiny(epochs=2000, minutes=0.08)
    store = Store(tmp_path / "t.db")
    first = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs", callbacks=[InterruptAt(3 * UPDATES + 5)])
    assert first.status == "stopped"
    row = store.run(first.run_id)
    fitted = row["summary"]["fitted"]
    resumed_hp = make_config(fitted_hparams(row["hparams"], row["summary"]))
    assert resumed_hp.minutes is None and resumed_hp.steps == fitted["updates"]
    again = fit(task, resumed_hp, store=store, quiet=True, runs_dir=tmp_path / "runs", resume=first.run_id)
    assert again.status == "completed" and again.steps == fitted["updates"]
    assert store.run(first.run_id)["summary"]["fitted"] == fitted  # not fitted a second time
    _, lrs = _lrs(store, first.run_id)
    assert lrs[-1] < 0.01 * hp.lr


def test_fitted_config_scales_step_decay_and_clears_minutes():
    hp = Config(schedule="multistep", milestones_epochs=[10, 15], epochs=20, minutes=1.0)
    f = fitted_config(hp, 500, 1000)
    assert (f.steps, f.minutes, f.milestones_epochs, f.step_size_epochs) == (500, None, [5.0, 7.5], 15.0)
    assert updates_that_fit(0.0, 40, 100, 10, 1.0, 1.0) == 40


@pytest.mark.parametrize("given,field", [({"minutes": 0}, "minutes"), ({"minutes": -2}, "minutes"),
                                         ({"minutes": "soon"}, "minutes"),
                                         ({"minutes": 1, "schedule": "cyclic_cosine"}, "minutes")])
def test_bad_minutes_are_one_line_naming_the_field(given, field):
    with pytest.raises(ConfigError) as err:
        make_config(given)
    assert field in str(err.value) and "\n" not in str(err.value)
