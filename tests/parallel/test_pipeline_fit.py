"""Pipeline parallelism through the one loop: `fit` with `parallel: pipeline` on 2 gloo ranks (forked, with the
environment torchrun gives its workers) against one process: losses, weights, validation, checkpoints,
resume, and the bad configurations."""

from __future__ import annotations

import pytest
import torch

from trainlab.cli import main
from trainlab.config import Config, ConfigError
from trainlab.parallel.ddp import Dist
from trainlab.models import build_model
from trainlab.store import Store
from trainlab.tasks import load_task
from trainlab.train import fit, load_checkpoint
from trainlab.train.pipelined import PipelineRun, _microbatches, check_pipeline
from helpers import InterruptAt
from test_ddp import _max_diff, run_ranks

# SGD with momentum, no BatchNorm, no dropout; val_fraction leaves 3590 training examples: the epoch's last
# batch has 6, which runs as 3 micro-batches of 2 (4 does not divide it)
PIPE = dict(model="mlp", width=32, optimizer="momentum", lr=0.05, schedule="cosine", monitor_every=0, batch_size=32,
            val_fraction=0.1025, grad_clip=1.0)
STEPS = 130  # 113 updates per epoch: crosses the short last batch and the reshuffle


def _pipe_rank(dist: Dist, hp: Config, db: str, runs: str, resume=None, interrupt=None):
    store = Store(db) if dist.rank == 0 else None
    result = fit(load_task(hp), hp, store=store, runs_dir=runs, quiet=True, dist=dist, resume=resume,
                 callbacks=[InterruptAt(interrupt)] if interrupt else ())
    return {"status": result.status, "steps": result.steps, "run_id": result.run_id, "history": result.history,
            "model": result.model.state_dict(), "test": result.test}


@pytest.mark.slow
def test_pipeline_on_2_ranks_trains_like_one_process_and_resumes(tmp_path):
    hp = Config(**PIPE, steps=STEPS, parallel="pipeline", pipeline_microbatches=4)
    db, runs = tmp_path / "pipe.db", tmp_path / "runs"
    ranks = run_ranks(_pipe_rank, hp, str(db), str(runs), tmp_path=tmp_path)
    one_store = Store(tmp_path / "one.db")
    one = fit(load_task(hp), Config(**PIPE, steps=STEPS), store=one_store, runs_dir=tmp_path / "one", quiet=True)

    assert [r["status"] for r in ranks] == ["completed", "completed"] and ranks[0]["steps"] == STEPS
    store = Store(db)
    (run,) = store.runs()
    pipe_loss = store.metrics(run["id"], ["train/loss"])["train/loss"]
    one_loss = one_store.metrics(one.run_id, ["train/loss"])["train/loss"]
    assert pipe_loss["step"] == list(range(STEPS)), "one train/loss per step, written once"
    assert pipe_loss["value"] == pytest.approx(one_loss["value"], abs=1e-5), "the losses of one process"
    assert ranks[0]["history"]["val/acc"] == pytest.approx(one.history["val/acc"], abs=1e-6)
    assert ranks[0]["history"]["val/loss"] == pytest.approx(one.history["val/loss"], abs=1e-5)
    assert ranks[0]["test"]["acc"] == pytest.approx(one.test["acc"], abs=1e-6) and ranks[1]["test"] is None
    assert _max_diff(ranks[0]["model"], ranks[1]["model"]) == 0, "every rank ends with the whole model"

    last = load_checkpoint(runs / f"run-{run['id']}" / "last.pt")
    one_last = load_checkpoint(tmp_path / "one" / f"run-{one.run_id}" / "last.pt")
    assert _max_diff(last["model"], one_last["model"]) < 1e-5, "rank 0's checkpoint holds every stage"
    assert sorted(last["optimizer"]["state"]) == sorted(one_last["optimizer"]["state"]), "and every stage's momentum"
    pipeline = run["summary"]["execution"]["pipeline"]
    assert pipeline["stages"] == [["stage1"], ["stage2", "head"]] and pipeline["microbatches"] == 4
    assert pipeline["bubble_fraction"] == pytest.approx(0.2) and run["summary"]["plan"]["world_size"] == 1

    # Ctrl-C on every rank at step 150 (epoch 2); resumed from epoch 1's last.pt: the uninterrupted run's result
    hp2 = hp.model_copy(update={"steps": 200})
    whole = run_ranks(_pipe_rank, hp2, str(db), str(runs), tmp_path=tmp_path)
    cut = run_ranks(_pipe_rank, hp2, str(db), str(runs), None, 150, tmp_path=tmp_path)
    assert [r["status"] for r in cut] == ["stopped", "stopped"]
    resumed = run_ranks(_pipe_rank, hp2, str(db), str(runs), cut[0]["run_id"], tmp_path=tmp_path)
    assert resumed[0]["status"] == "completed" and resumed[0]["steps"] == 200
    a = load_checkpoint(runs / f"run-{whole[0]['run_id']}" / "last.pt")
    b = load_checkpoint(runs / f"run-{cut[0]['run_id']}" / "last.pt")
    assert _max_diff(a["model"], b["model"]) < 1e-6 and a["step"] == b["step"] == 200
    steps = store.metrics(cut[0]["run_id"], ["train/loss"])["train/loss"]["step"]
    assert steps == list(range(200)), "resumed: every step once"


def test_pipeline_configurations_that_cannot_work_are_one_line(tmp_path, capsys):
    two = Dist(True, 0, 0, 2)
    with pytest.raises(ConfigError, match=r"^parallel: pipeline splits the model across processes; launch them with "
                                          r"trainlab train --nproc K, got 'pipeline'$"):
        check_pipeline(Config(parallel="pipeline"), None)
    with pytest.raises(ConfigError, match=r"^pipeline_microbatches: batch_size 30 does not split into 4 equal "
                                          r"micro-batches; pick a divisor of it, got 4$"):
        check_pipeline(Config(parallel="pipeline", batch_size=30), two)
    with pytest.raises(ConfigError, match=r"^ema: parallel=pipeline does not support an EMA of the weights yet"):
        check_pipeline(Config(parallel="pipeline", ema=0.99), two)
    with pytest.raises(ConfigError, match=r"^precision: parallel=pipeline does not support mixed precision yet, "
                                          r"got 'bf16'$"):
        check_pipeline(Config(parallel="pipeline", precision="bf16"), two)
    model = build_model("mlp", (1, 40), 10, 8)
    with pytest.raises(ConfigError, match=r"^parallel: the model has 3 stages \(stage1, stage2, head\), fewer than "
                                          r"the 4 processes; use --nproc 3 or fewer, got 'pipeline'$"):
        PipelineRun(model, Config(parallel="pipeline"), Dist(True, 0, 0, 4), torch.nn.functional.cross_entropy,
                    torch.optim.SGD(model.parameters(), 0.1))
    assert [_microbatches(n, 4) for n in (32, 6, 7, 2, 9)] == [4, 3, 1, 2, 3]
    db = tmp_path / "t.db"
    assert main(["train", "--set", "parallel=pipeline", "--db", str(db)]) == 2
    assert "parallel: pipeline splits the model across processes" in capsys.readouterr().err
    assert not db.exists() or Store(db).runs() == [], "nothing stored"


@pytest.mark.slow
def test_pipeline_with_batchnorm_keeps_its_running_statistics_sane(tmp_path):
    # torch infers stage shapes by running stages on uninitialized tensors unless given them: NaN statistics
    hp = Config(model="resnet", width=4, batch_size=32, steps=40, monitor_every=0, parallel="pipeline")
    ranks = run_ranks(_pipe_rank, hp, str(tmp_path / "p.db"), str(tmp_path / "runs"), tmp_path=tmp_path)
    one = fit(load_task(hp), Config(model="resnet", width=4, batch_size=32, steps=40, monitor_every=0), quiet=True)
    val = ranks[0]["history"]["val/loss"]
    assert all(v == v for v in val) and val == pytest.approx(one.history["val/loss"], abs=0.15), \
        "close to one process (BatchNorm normalizes per micro-batch, so not equal)"
    bn = {k: v for k, v in ranks[0]["model"].items() if "running_var" in k}
    assert bn and all(torch.isfinite(v).all() and (v > 0).all() for v in bn.values())


def test_boundaries_touch_no_batchnorm_statistics():
    from trainlab.parallel.pipeline import boundaries, partition

    model = build_model("resnet", (1, 40), 10, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    edges = boundaries(model.train(), partition(model, 2), torch.randn(8, 1, 40))
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert edges[0].shape == (8, 1, 40) and edges[-1].shape == (8, 10) and edges[1].requires_grad
