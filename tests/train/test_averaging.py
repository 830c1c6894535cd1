"""Weight averaging in the loop: the EMA against closed forms and torch's EMA, BatchNorm statistics of
the averaged weights, EMA state through checkpoints and exact resume, selecting the best epoch on the
EMA metric, and snapshots at the cycle ends of the cyclic cosine schedule."""

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainlab.config import Config, ConfigError, make_config
from trainlab.schedules import cycle_ends
from trainlab.store import Store
from trainlab.tasks import load_task
from trainlab.train import evaluate, fit, load_checkpoint, lr_schedule
from trainlab.train.averaging import EMA, checkpoint_weights, ema_decay, snapshot_steps
from trainlab.train.loop import LoopState
from helpers import TINY, InterruptAt


@pytest.fixture(scope="module")
def task(tiny_task):
    return tiny_task


# --- the EMA's arithmetic ----------------------------------------------------------------------------

def test_ema_decay_rule():
    assert ema_decay(0.999, 0) == 0.999 and ema_decay(0.999, 10**6) == 0.999
    assert ema_decay(0.999, 0, warmup=True) == pytest.approx(1 / 10)
    assert ema_decay(0.999, 5, warmup=True) == pytest.approx(6 / 15)
    assert ema_decay(0.9, 1000, warmup=True) == 0.9, "warm-up never exceeds the decay"
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\), but got decay=1.0"):
        EMA(1.0)


def _feed(ema: EMA, sequence: list[float]) -> nn.Module:
    """Run the callback over a one-parameter model whose weight takes the values of `sequence`."""
    model = nn.Linear(1, 1, bias=False)
    state = LoopState(None, None, model, None, torch.device("cpu"), None, None, 1, len(sequence))
    for t, value in enumerate(sequence, start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        state.step = t
        ema.on_step_end(state)
    return ema.averaged.module


def test_ema_matches_the_closed_form_and_torch():
    torch.manual_seed(0)
    p = torch.randn(40).double().tolist()
    d = 0.9
    averaged = _feed(EMA(d), p).weight.item()
    # The first update copies p[0]; then ema <- d * ema + (1 - d) * p[t]:
    # ema_T = d^(T-1) p_0 + sum_{t>=1} (1 - d) d^(T-1-t) p_t.
    T = len(p)
    closed = d ** (T - 1) * p[0] + sum((1 - d) * d ** (T - 1 - t) * p[t] for t in range(1, T))
    assert averaged == pytest.approx(closed, rel=1e-5)
    # The oracle: torch's own EMA on the same sequence.
    model = nn.Linear(1, 1, bias=False)
    oracle = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d))
    for value in p:
        with torch.no_grad():
            model.weight.fill_(value)
        oracle.update_parameters(model)
    assert averaged == pytest.approx(oracle.module.weight.item(), rel=1e-6)


def test_ema_warmup_matches_the_closed_form():
    p = [float(v) for v in range(1, 31)]
    d = 0.99
    averaged = _feed(EMA(d, warmup=True), p).weight.item()
    expected = p[0]
    for t in range(1, len(p)):  # before update t, t updates are averaged
        decay = min(d, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * p[t]
    assert averaged == pytest.approx(expected, rel=1e-6)
    assert abs(averaged - _feed(EMA(d), p).weight.item()) > 1.0, "warm-up must change the average"


def test_ema_state_round_trips_before_and_after_its_first_step():
    first = EMA(0.8)
    _feed(first, [1.0, 2.0, 3.0])
    saved = first.state_dict()
    assert saved["n_averaged"] == 3
    second = EMA(0.8)
    second.load_state_dict(saved)       # before the copy exists: kept until the first step
    assert second.state_dict()["n_averaged"] == 3
    a, b = _feed(first, [4.0]).weight.item(), _feed(second, [4.0]).weight.item()
    assert a == b == pytest.approx(((0.8 * 1 + 0.2 * 2) * 0.8 + 0.2 * 3) * 0.8 + 0.2 * 4)


# --- EMA inside fit ------------------------------------------------------------------------------------

def test_fit_with_ema_stores_ema_metrics_and_checkpoints_the_average(task, tmp_path):
    hp = Config(**TINY, epochs=3, ema=0.9)
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs")
    m = store.metrics(result.run_id, ["val/acc", "val/acc_ema", "val/loss_ema"])
    assert m["val/acc_ema"]["epoch"] == [1, 2, 3] and len(m["val/loss_ema"]["value"]) == 3
    assert result.history["val/acc_ema"] == m["val/acc_ema"]["value"]
    last = load_checkpoint(tmp_path / "runs" / f"run-{result.run_id}" / "last.pt")
    saved = last["callbacks"]["EMA"]
    assert saved["n_averaged"] == result.steps == 3 * 29
    model = task.build_model()
    model.load_state_dict(saved["model"])
    assert evaluate(model, task.val)["acc"] == pytest.approx(m["val/acc_ema"]["value"][-1])
    weights, kind = checkpoint_weights(last)
    assert kind == "raw" and weights is last["model"], "selection on val/acc: the checkpoint stands for raw weights"




def test_resume_continues_the_same_average(task, tmp_path):
    hp = Config(**TINY, epochs=3, ema=0.95, ema_warmup=True, dropout=0.1)
    store = Store(tmp_path / "t.db")
    ref = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs")
    cut = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs", callbacks=[InterruptAt(45)])
    assert cut.status == "stopped"
    resumed = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs", resume=cut.run_id)
    assert resumed.status == "completed" and resumed.history["val/acc_ema"] == ref.history["val/acc_ema"]
    a = load_checkpoint(tmp_path / "runs" / f"run-{ref.run_id}" / "last.pt")["callbacks"]["EMA"]
    b = load_checkpoint(tmp_path / "runs" / f"run-{cut.run_id}" / "last.pt")["callbacks"]["EMA"]
    assert a["n_averaged"] == b["n_averaged"] == ref.steps
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_selecting_on_the_ema_metric_returns_and_checkpoints_the_averaged_weights(task, tmp_path):
    hp = Config(**TINY, epochs=4, ema=0.9, early_stop_metric="val/acc_ema")
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs")
    accs = result.history["val/acc_ema"]
    assert result.best_metric == max(accs) and result.best_epoch == accs.index(max(accs)) + 1
    best = load_checkpoint(store.run(result.run_id)["checkpoint"])
    weights, kind = checkpoint_weights(best)
    assert kind == "ema"
    state = result.model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in state), "fit returns the EMA weights of the best epoch"
    assert not all(torch.equal(state[k], best["model"][k]) for k in state)
    assert evaluate(result.model, task.val)["acc"] == pytest.approx(result.best_metric)
    assert store.run(result.run_id)["summary"]["test/acc"] == pytest.approx(evaluate(result.model, task.test)["acc"])


def test_ema_metric_without_ema_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^ema: early_stop_metric 'val/acc_ema' is measured only with an EMA"):
        make_config({"early_stop_metric": "val/acc_ema"})
    with pytest.raises(ConfigError, match=r"^ema: input should be less than 1, got 1.0"):
        make_config({"ema": 1.0})


def test_batchnorm_statistics_of_the_averaged_weights_are_right(tmp_path):
    """On the resnet (BatchNorm), the averaged weights validate close to the raw ones, not near chance;
    with other statistics the same weights fail, so this test catches stale statistics."""
    hp = Config(model="resnet", width=8, batch_size=128, epochs=3, monitor_every=0)
    task = load_task(hp)
    ema = EMA(0.99, warmup=True)

    class AveragedBuffers:  # the alternative: BatchNorm's running statistics averaged like the weights
        averaged = None

        def on_step_end(self, state):
            if self.averaged is None:
                self.averaged = AveragedModel(state.model, multi_avg_fn=get_ema_multi_avg_fn(0.98), use_buffers=True)
            self.averaged.update_parameters(state.model)

        def on_epoch_end(self, state):
            return None

        def on_fit_end(self, state):
            return None

    alternative = AveragedBuffers()
    result = fit(task, hp, quiet=True, callbacks=[ema, alternative], evaluate_test=False)
    raw, averaged = result.history["val/acc"][-1], result.history["val/acc_ema"][-1]
    assert raw > 0.5, "the resnet learns in 3 epochs"
    assert averaged > 0.5 and abs(averaged - raw) < 0.08
    stale = copy.deepcopy(ema.averaged.module)
    for module in stale.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    assert evaluate(stale, task.val)["acc"] < 0.35, "initial statistics ruin the same weights"
    assert evaluate(alternative.averaged.module, task.val)["acc"] < 0.3, "averaged statistics go near chance here"


# --- snapshots -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    dict(cycles=3, epochs=3),
    dict(cycles=4, epochs=5, warmup_steps=7),
    dict(restart_period_epochs=1.0, restart_mult=2.0, epochs=8),
])
def test_snapshot_steps_are_where_the_learning_rate_restarts(settings):
    hp = Config(**TINY, schedule="cyclic_cosine", **settings)
    spe = 29
    factor, total, warmup = lr_schedule(hp, spe)
    ends = snapshot_steps(hp, spe)
    assert ends and ends[-1] < total
    lrs = [factor(s) for s in range(total)]
    for s in range(warmup, total - 1):
        if s in ends and (s != ends[-1] or hp.restart_period_epochs):
            assert lrs[s + 1] == 1.0 and lrs[s] < 0.05, f"restart after step {s}"
        else:
            assert lrs[s + 1] <= lrs[s], f"no restart after step {s}"
    if not hp.restart_period_epochs:  # steps left after the last of `cycles` cycles hold its final lr
        assert len(ends) == hp.cycles and all(v == lrs[ends[-1]] for v in lrs[ends[-1]:])
    if (total - warmup) % hp.cycles == 0 and not hp.restart_period_epochs:
        assert len(ends) == hp.cycles and ends[-1] == total - 1


def test_snapshots_are_saved_at_the_cycle_ends_and_listed_in_the_summary(task, tmp_path):
    hp = Config(**TINY, epochs=3, schedule="cyclic_cosine", cycles=3, snapshots=True)
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, quiet=True, runs_dir=tmp_path / "runs")
    snaps = store.run(result.run_id)["summary"]["snapshots"]
    expected = cycle_ends(87, period=29)
    assert expected == [28, 57, 86]
    assert [s["step"] for s in snaps] == expected and [s["cycle"] for s in snaps] == [1, 2, 3]
    run_dir = tmp_path / "runs" / f"run-{result.run_id}"
    assert sorted(p.name for p in run_dir.glob("snapshot-*.pt")) == ["snapshot-1.pt", "snapshot-2.pt", "snapshot-3.pt"]
    files = [load_checkpoint(s["path"]) for s in snaps]
    assert [f["step"] for f in files] == expected and files[0]["hparams"]["snapshots"] is True
    last = load_checkpoint(run_dir / "last.pt")
    assert all(torch.equal(files[-1]["model"][k], v) for k, v in last["model"].items()), \
        "the last cycle ends at the last step"
    assert not all(torch.equal(files[0]["model"][k], v) for k, v in last["model"].items())
    assert last["callbacks"]["Snapshots"]["taken"] == snaps


def test_snapshots_need_the_cyclic_schedule_and_a_run_directory(task):
    with pytest.raises(ConfigError, match=r"^snapshots: needs schedule cyclic_cosine .* but schedule is 'cosine'"):
        make_config({"snapshots": True})
    hp = Config(**TINY, epochs=1, schedule="cyclic_cosine", cycles=2, snapshots=True)
    with pytest.raises(ConfigError, match=r"^snapshots: saving snapshots needs a store and checkpoints"):
        fit(task, hp, quiet=True)
