"""Precision (bf16/fp16 autocast, fp16's GradScaler), torch.compile and channels-last through the one loop,
on real trainings; a compiled model's checkpoints used for resume, ensembles and transfer."""

from __future__ import annotations

import textwrap

import pytest
import torch

from trainlab.checkpoint import plain_state_dict, state_for
from trainlab.cli import main
from trainlab.config import Config, ConfigError
from trainlab.ensemble import evaluate_ensemble, members_from_runs
from trainlab.store import Store
from trainlab.tasks import load_task
from trainlab.train import fit, load_checkpoint
from trainlab.train.precision import Execution, compiler_available
from trainlab.transfer import load_source, prepare_target, target_model
from helpers import InterruptAt

TINY = dict(model="mlp", width=32, batch_size=64, monitor_every=0)


@pytest.fixture(scope="module")
def task():
    return load_task(Config(**TINY))


class DtypeSpy:
    """Records the dtype of the first layer's output during training steps (forward hook)."""

    def __init__(self):
        self.seen: set[torch.dtype] = set()

    def __call__(self, module, args, out):
        if module.training:
            self.seen.add(out.dtype)


def _spied_fit(task, hp, **kw):
    spy = DtypeSpy()
    model = task.build_model()
    model.stage1[1].register_forward_hook(spy)  # the first Linear
    return fit(task, hp, model=model, **kw), spy


def test_default_precision_is_fp32_on_cpu_and_the_choice_is_printed_and_stored(task, tmp_path, capsys):
    store = Store(tmp_path / "t.db")
    result, spy = _spied_fit(task, Config(**TINY, steps=20), store=store, runs_dir=tmp_path / "runs")
    assert spy.seen == {torch.float32}
    ex = store.run(result.run_id)["summary"]["execution"]
    assert ex == {"precision": "fp32", "precision_reason": "auto: fp32 on cpu", "grad_scaler": False,
                  "compile": "off", "channels_last": False, "device_type": "cpu"}
    assert "precision fp32 (auto: fp32 on cpu); compile off; memory format contiguous" in capsys.readouterr().out


def test_bf16_autocast_on_cpu_trains(task, tmp_path):
    hp = Config(**TINY, steps=120, precision="bf16")
    store = Store(tmp_path / "t.db")
    result, spy = _spied_fit(task, hp, store=store, runs_dir=tmp_path / "runs", quiet=True)
    assert spy.seen == {torch.bfloat16}, "forward runs under bf16 autocast"
    assert result.status == "completed" and result.history["val/acc"][-1] > 0.2, "learns (chance is 0.1)"
    loss = store.metrics(result.run_id, ["train/loss"])["train/loss"]["value"]
    assert sum(loss[-10:]) < sum(loss[:10]), "the loss falls"
    assert all(v.dtype == torch.float32 for v in result.model.state_dict().values() if v.is_floating_point()), \
        "the weights stay fp32 (autocast computes in bf16, it does not store in it)"
    assert store.run(result.run_id)["summary"]["execution"]["precision"] == "bf16"


def _fp16_supported() -> str | None:
    try:
        Execution.resolve(Config(precision="fp16"), torch.device("cpu"))
    except ConfigError as err:
        return str(err)
    return None


@pytest.mark.skipif(_fp16_supported() is not None, reason=f"{_fp16_supported()}")
def test_fp16_with_a_grad_scaler_trains_and_resumes_exactly(task, tmp_path):
    hp = Config(**TINY, steps=120, precision="fp16", grad_clip=1.0)
    store = Store(tmp_path / "t.db")
    whole, spy = _spied_fit(task, hp, store=store, runs_dir=tmp_path / "runs", quiet=True)
    assert spy.seen == {torch.float16}
    assert whole.status == "completed" and whole.history["val/acc"][-1] > 0.2
    last = load_checkpoint(tmp_path / "runs" / f"run-{whole.run_id}" / "last.pt")
    assert last["scaler"]["scale"] > 0 and "_growth_tracker" in last["scaler"], "the scaler's state is checkpointed"

    cut = fit(task, hp, store=store, runs_dir=tmp_path / "runs", quiet=True, callbacks=[InterruptAt(70)])
    assert cut.status == "stopped"
    resumed = fit(task, hp, store=store, runs_dir=tmp_path / "runs", quiet=True, resume=cut.run_id)
    a = load_checkpoint(tmp_path / "runs" / f"run-{whole.run_id}" / "last.pt")
    b = load_checkpoint(tmp_path / "runs" / f"run-{resumed.run_id}" / "last.pt")
    assert a["scaler"] == b["scaler"] and a["step"] == b["step"] == 120
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resume is exact under fp16"


def test_bad_precision_and_channels_last_are_one_line_and_store_nothing(tmp_path, capsys):
    db = tmp_path / "t.db"
    assert main(["train", "--set", "precision=fp8", "--db", str(db)]) == 2
    assert "precision: input should be 'auto', 'fp32', 'bf16' or 'fp16', got 'fp8'" in capsys.readouterr().err
    assert main(["train", "--set", "channels_last=true", "--set", "steps=5", "--db", str(db), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("trainlab: error: channels_last: needs 4-D image batches (N, C, H, W), but this task's batches "
                   "have 3 dimensions; set channels_last=false, got True")
    assert not db.exists() or Store(db).runs() == [], "nothing stored"


def test_compile_without_a_compiler_is_a_clear_error(monkeypatch):
    import trainlab.train.precision as precision

    monkeypatch.setattr(precision, "compiler_available", lambda: None)
    with pytest.raises(ConfigError, match=r"^compile: torch.compile on CPU needs a C\+\+ compiler \(g\+\+ or "
                                          r"clang\+\+\) on PATH, and none was found; .*got True$"):
        Execution.resolve(Config(compile=True), torch.device("cpu"))
    assert Execution.resolve(Config(compile=True), torch.device("cpu"), user_compiled=True).compile == \
        "by the task's build_model", "a task that compiled its model needs nothing from us"


def test_channels_last_on_images(tmp_path):
    hp = Config(task="digits", model="cnn", width=8, batch_size=32, steps=30, channels_last=True, monitor_every=0)
    task = load_task(hp)
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, runs_dir=tmp_path / "runs", quiet=True)
    conv = result.model.stage2[0].weight  # (16, 8, 3, 3): its layout tells the formats apart
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert result.status == "completed" and store.run(result.run_id)["summary"]["execution"]["channels_last"]
    plain = load_task(hp.model_copy(update={"channels_last": False})).build_model()
    plain.load_state_dict(load_checkpoint(result.checkpoint)["model"])  # loads into a contiguous model


# --- compiled models: checkpoints without `_orig_mod.` ---------------------------------------------------

COMPILED_TASK = textwrap.dedent('''
    import torch
    from trainlab.tasks import load_task

    def build(hp):
        base = load_task(hp.model_copy(update={"task": "mnist1d"}))
        make = base.build_model
        base.build_model = lambda: torch.compile(make(), backend="eager")   # what a user may write
        base.name = "compiled-mnist1d"
        return base
''')


@pytest.fixture(scope="module")
def compiled_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compiled")
    (root / "task.py").write_text(COMPILED_TASK)
    hp = Config(**{**TINY, "model": "resnet", "width": 8}, task=f"{root / 'task.py'}:build", epochs=2)
    store = Store(root / "t.db")
    results = [fit(load_task(h), h, store=store, runs_dir=root / "runs", quiet=True)
               for h in (hp, hp.model_copy(update={"seed": 1}))]
    return root, hp, store, results


def test_a_compiled_models_checkpoint_has_plain_keys_and_resumes(compiled_runs):
    root, hp, store, results = compiled_runs
    result = results[0]
    assert type(load_task(hp).build_model()).__name__ == "OptimizedModule", "the task really compiles"
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["model"] and not any("_orig_mod" in k for k in ckpt["model"])
    assert set(ckpt["model"]) == set(load_task(Config(**{**TINY, "model": "resnet", "width": 8})).build_model()
                                      .state_dict())
    assert store.run(result.run_id)["summary"]["execution"]["compile"] == "by the task's build_model"
    assert result.model.__class__.__name__ == "Sequential", "fit returns the plain module"

    cut = fit(load_task(hp), hp, store=store, runs_dir=root / "runs", quiet=True, callbacks=[InterruptAt(70)])
    resumed = fit(load_task(hp), hp, store=store, runs_dir=root / "runs", quiet=True, resume=cut.run_id)
    assert resumed.status == "completed" and resumed.steps == result.steps
    a, b = ckpt["model"], load_checkpoint(resumed.checkpoint)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a), "resume equals the whole run"


def test_compiled_runs_ensemble_and_transfer(compiled_runs):
    root, hp, store, results = compiled_runs
    members = members_from_runs(store, [r.run_id for r in results])
    ens = evaluate_ensemble(members, split="test")
    assert [m["acc"] for m in ens.members] == pytest.approx([r.test["acc"] for r in results], abs=1e-6)
    source = load_source(results[0].run_id, store=store)
    target = prepare_target(load_task(hp), hp)
    model = target_model(source, target)
    want = load_checkpoint(results[0].checkpoint)["model"]
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


def test_state_for_maps_plain_and_prefixed_keys_both_ways():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    compiled = torch.compile(net, backend="eager")
    sd = compiled.state_dict()
    assert list(sd) == ["_orig_mod.0.weight", "_orig_mod.0.bias"]
    assert list(plain_state_dict(sd)) == ["0.weight", "0.bias"]
    compiled.load_state_dict(state_for(compiled, plain_state_dict(sd)))
    net.load_state_dict(state_for(net, sd))
    outer = torch.nn.Sequential()
    outer.add_module("stage1", torch.compile(torch.nn.Linear(2, 2), backend="eager"))  # a compiled submodule
    outer.load_state_dict(state_for(outer, {"stage1.weight": torch.ones(2, 2), "stage1.bias": torch.zeros(2)}))
    assert torch.equal(outer.stage1.weight, torch.ones(2, 2))


@pytest.mark.slow
@pytest.mark.skipif(compiler_available() is None, reason="torch.compile on CPU needs a C++ compiler; none on PATH")
def test_compile_true_trains_with_inductor_on_cpu(task, tmp_path):
    hp = Config(**TINY, steps=40, compile=True)
    store = Store(tmp_path / "t.db")
    result = fit(task, hp, store=store, runs_dir=tmp_path / "runs", quiet=True)
    plain = fit(task, hp.model_copy(update={"compile": False}), quiet=True)
    assert result.status == "completed" and store.run(result.run_id)["summary"]["execution"]["compile"] == "torch.compile"
    ckpt = load_checkpoint(result.checkpoint)
    assert not any("_orig_mod" in k for k in ckpt["model"])
    assert result.history["val/loss"] == pytest.approx(plain.history["val/loss"], rel=1e-3), \
        "compiled and eager training agree (up to the order of float sums)"
