"""Transfer learning: freezing, per-group learning rates, probes, weight files, the advisor and the CLI.

One tiny source (a width-8 resnet trained for two epochs on mnist1d) is trained once per module and
stored in a real SQLite store; targets come from examples/transfer_target.py (the mnist1d generator
with other settings), a few hundred examples, trained for one or two epochs.
"""

from __future__ import annotations

import importlib.util
import json
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainlab import Config, Store, Task, fit, load_task
from trainlab.transfer.advisor import SIMILAR_GAIN, advise, ridge_cv_accuracy
from trainlab.transfer.backbone import (FrozenStages, backbone_stages, head_name, load_weights, pool_features,
                                        read_state_dict, stage_features)
from trainlab.cli import main
from trainlab.config import ConfigError, apply_overrides
from trainlab.train import CheckpointError, evaluate
from trainlab.transfer import (FeatureCache, load_source, parse_strategy, plan_strategy, prepare_target,
                               target_model, train_strategy)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transfer_target.py"


def _example():
    spec = importlib.util.spec_from_file_location("transfer_target_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # two OpenMP threads on a shared 2-core machine spin against each other: 10x slower for models this small
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def src(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("transfer")
    store = Store(root / "runs.db")
    hp = Config(model="resnet", width=8, epochs=2, monitor_every=0)
    result = fit(load_task(hp), hp, store=store, quiet=True, runs_dir=root / "runs")
    yield SimpleNamespace(root=root, store=store, run_id=result.run_id, hp=hp,
                          source=load_source(result.run_id, store=store), model=result.model)
    store.close()


def _target(src, n=200, different=False, **hp_overrides):
    task = _example().make_target(src.hp, n, different=different)
    hp = apply_overrides(src.hp, {"task": task.name, "epochs": 1, **hp_overrides})
    return prepare_target(task, hp), hp


class Spy:
    """A callback that records, after every optimizer step, what `record(state)` returns."""

    def __init__(self, record):
        self.record, self.seen = record, []

    def on_step_end(self, state):
        self.seen.append(self.record(state))

    def on_epoch_end(self, state):
        return None

    def on_fit_end(self, state):
        return None


# --- freezing ------------------------------------------------------------------------------------------

def test_source_run_loads_its_best_checkpoint(src):
    assert src.source.name == f"run{src.run_id}"
    assert backbone_stages(src.source.model) == ["stem", "stage1", "stage2", "stage3"]
    for (k, a), b in zip(src.model.state_dict().items(), src.source.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_frozen_stages_stay_bit_identical_get_no_gradients_and_keep_batchnorm_in_eval(src):
    task, hp = _target(src, epochs=2)
    model = target_model(src.source, task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_strategy(model, "finetune:1", hp)
    frozen = ["stem", "stage1", "stage2"]
    assert isinstance(plan.model, FrozenStages) and plan.model.frozen == frozen

    def record(state):
        m = state.model.module
        return {
            "frozen_grads": [p.grad is None for s in frozen for p in m.get_submodule(s).parameters()],
            "frozen_requires_grad": [p.requires_grad for s in frozen for p in m.get_submodule(s).parameters()],
            "frozen_bn_training": [b.training for s in frozen for b in m.get_submodule(s).modules()
                                   if isinstance(b, nn.BatchNorm1d)],
            "stage3_grads": [p.grad is not None for p in m.stage3.parameters()],
            "stage3_bn_training": m.stage3.bn1.training,
        }

    spy = Spy(record)
    fit(task, hp, model=plan.model, optimizer=plan.optimizer, callbacks=[spy], quiet=True)
    assert len(spy.seen) > 5
    for seen in spy.seen:
        assert all(seen["frozen_grads"]) and not any(seen["frozen_requires_grad"])
        assert seen["frozen_bn_training"] and not any(seen["frozen_bn_training"])
        assert all(seen["stage3_grads"]) and seen["stage3_bn_training"]
    after = model.state_dict()
    for key, value in after.items():
        if key.split(".")[0] in frozen:  # weights and BatchNorm running statistics alike
            assert torch.equal(value, before[key]), key
    assert not torch.equal(after["stage3.conv1.weight"], before["stage3.conv1.weight"])
    assert not torch.equal(after["stage3.bn1.running_mean"], before["stage3.bn1.running_mean"])
    assert not torch.equal(after["head.3.weight"], before["head.3.weight"])


def test_frozen_stages_wrapper_train_keeps_frozen_stages_in_eval():
    model = nn.Sequential(OrderedDict(stem=nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)),
                                      head=nn.Linear(4, 2)))
    wrapped = FrozenStages(model, ["stem"])
    wrapped.train()
    assert wrapped.training and model.head.training
    assert not any(m.training for m in model.stem.modules())
    wrapped.unfreeze("stem")
    wrapped.train()
    assert all(m.training for m in model.stem.modules()) and all(p.requires_grad for p in model.stem.parameters())
    assert list(wrapped.state_dict())[0] == "module.stem.0.weight"
    plain = nn.Sequential(OrderedDict(stem=nn.Linear(4, 4), head=nn.Linear(4, 2)))
    other = nn.Sequential(OrderedDict(stem=nn.Linear(4, 4), head=nn.Linear(4, 2)))
    load_weights(plain, FrozenStages(other).state_dict())  # a checkpoint of a wrapped model: module. is stripped
    assert torch.equal(plain.stem.weight, other.stem.weight)


def test_gradual_unfreezing_unfreezes_one_stage_per_epoch_top_down(src):
    task, hp = _target(src, epochs=2, unfreeze_every_epochs=1)
    model = target_model(src.source, task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_strategy(model, "finetune:2", hp)
    assert plan.model.frozen == ["stem", "stage1", "stage2", "stage3"]  # K stages wait for their epoch
    spy = Spy(lambda state: (state.epoch, *(next(state.model.module.get_submodule(s).parameters()).grad is not None
                                            for s in ("stage1", "stage2", "stage3", "head"))))
    result = fit(task, hp, model=plan.model, optimizer=plan.optimizer, callbacks=[*plan.callbacks, spy], quiet=True)
    assert result.history["transfer/unfrozen"] == [0.0, 1.0]
    # epoch 1: the head alone; epoch 2: stage3 joins; stage2 is unfrozen only after the last epoch
    assert {seen for seen in spy.seen} == {(0, False, False, False, True), (1, False, False, True, True)}
    after = model.state_dict()
    assert torch.equal(after["stage2.conv1.weight"], before["stage2.conv1.weight"])
    assert torch.equal(after["stem.0.weight"], before["stem.0.weight"])
    assert plan.model.frozen == ["stem", "stage1"]


# --- learning rates ------------------------------------------------------------------------------------

def test_per_group_learning_rates_are_applied_as_configured(src):
    task, hp = _target(src, optimizer="sgd", lr=0.02, backbone_lr_mult=0.25, schedule="constant")
    plan = plan_strategy(target_model(src.source, task), "finetune:2", hp)
    by_name = {n: g["lr"] for g in plan.optimizer.param_groups for n in g["names"]}
    assert not any(n.startswith(("module.stem.", "module.stage1.")) for n in by_name)  # frozen: not in the optimizer
    assert {by_name[n] for n in by_name if n.startswith(("module.stage2.", "module.stage3."))} == {0.02 * 0.25}
    assert {by_name[n] for n in by_name if n.startswith("module.head.")} == {0.02}

    spy = Spy(lambda state: {n: g["lr"] for g in state.optimizer.param_groups for n in g["names"]})
    fit(task, hp, model=plan.model, optimizer=plan.optimizer, callbacks=[spy], quiet=True)
    assert spy.seen and all(seen == by_name for seen in spy.seen)  # the loop keeps each group's rate

    # and the rates are the ones the update used: plain SGD moves each weight by -lr x its gradient
    model = plan.model
    x, y = task.train.tensors[0][:16], task.train.tensors[1][:16]
    plan.optimizer.zero_grad()
    task.loss(model(x), y).backward()
    old = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    plan.optimizer.step()
    for name, p in model.named_parameters():
        if p.requires_grad:
            expected = by_name[name] * p.grad
            assert torch.linalg.norm(old[name] - p.detach() - expected) <= 1e-3 * torch.linalg.norm(expected), name


def test_full_finetuning_uses_discriminative_rates_rising_to_the_head(src):
    task, hp = _target(src, lr=0.01, backbone_lr_mult=0.1)
    plan = plan_strategy(target_model(src.source, task), "full", hp)
    by_stage = {}
    for g in plan.optimizer.param_groups:
        for n in g["names"]:
            by_stage.setdefault(n.split(".")[0], set()).add(g["lr"])
    lrs = [by_stage[s] for s in ("stem", "stage1", "stage2", "stage3", "head")]
    assert all(len(s) == 1 for s in lrs)
    lrs = [s.pop() for s in lrs]
    assert lrs == pytest.approx([0.01 * 0.1 ** (k / 4) for k in (4, 3, 2, 1, 0)])


def test_scratch_reinitializes_every_weight(src):
    task, hp = _target(src)
    model = target_model(src.source, task)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("weight")}
    plan = plan_strategy(model, "scratch", hp)
    assert all(not torch.equal(plan.model.state_dict()[k], v) for k, v in before.items() if "bn" not in k)


# --- features and probes --------------------------------------------------------------------------------

def test_pool_features_flattens_small_outputs_and_pools_large_ones():
    assert pool_features(torch.randn(3, 4, 10)).shape == (3, 40)
    assert pool_features(torch.randn(3, 64, 40), 512).shape == (3, 512)     # 8 positions of 64 channels
    assert pool_features(torch.randn(3, 16, 8, 8), 64).shape == (3, 64)     # a 2x2 grid of 16 channels
    assert pool_features(torch.randn(3, 1024, 4), 512).shape == (3, 1024)   # at least global pooling
    x = torch.randn(2, 3, 6)
    assert torch.allclose(pool_features(x, 3), x.mean(2))


def test_stage_probes_return_one_result_per_stage(src):
    task, hp = _target(src)
    feats = stage_features(src.source.model, task.train.tensors[0][:10])
    assert list(feats) == backbone_stages(src.source.model)
    assert all(f.shape[0] == 10 and f.shape[1] <= 512 for f in feats.values())
    runs_before = len(src.store.runs())
    result = train_strategy(src.source, task, "probe", hp, store=src.store, runs_dir=src.root / "runs")
    assert [row["stage"] for row in result.probes] == ["stem", "stage1", "stage2", "stage3"]
    for row in result.probes:
        assert 0.0 <= row["val_acc"] <= 1.0 and 0.0 <= row["test_acc"] <= 1.0 and row["dim"] <= 512
    best = max(result.probes, key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert result.detail == f"best stage {best['stage']}" and result.test_acc == best["test_acc"]
    runs = src.store.runs(study=f"transfer-run{src.run_id}-{task.name}")
    assert len(src.store.runs()) == runs_before + 4
    assert [r["name"] for r in runs[-4:]] == ["probe:stem", "probe:stage1", "probe:stage2", "probe:stage3"]
    assert runs[-1]["summary"]["transfer/strategy"] == "probe"


def test_linear_trains_on_cached_features_and_its_run_is_a_source(src):
    hp = apply_overrides(src.hp, {"task": f"{EXAMPLE}:build", "epochs": 2})  # a task the run can rebuild
    task = load_task(hp)
    cache = FeatureCache(src.source.model, task)
    assert cache.head_inputs() is cache.head_inputs()  # computed once
    result = train_strategy(src.source, task, "linear", hp, store=src.store, runs_dir=src.root / "runs", cache=cache)
    assert result.trainable_params == 32 * 10 + 10
    assert evaluate(result.model, task.test)["acc"] == pytest.approx(result.test_acc, abs=1e-6)
    source_state = src.source.model.state_dict()
    for key, value in result.model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, source_state[key]), key
    again = load_source(result.run_id, store=src.store)  # best.pt holds the whole network
    assert torch.equal(again.model.head[3].weight, result.model.head[3].weight)


def test_head_is_replaced_when_the_number_of_classes_differs(src):
    x, y = torch.randn(40, 1, 40), torch.arange(40) % 3
    task = prepare_target(Task("three", lambda: None, TensorDataset(x, y), TensorDataset(x, y), 3), src.hp)
    model = target_model(src.source, task)
    assert model.head[3].out_features == 3 and src.source.model.head[3].out_features == 10
    assert torch.equal(model.stage3.conv1.weight, src.source.model.stage3.conv1.weight)
    wrong = Task("2d", lambda: None, TensorDataset(torch.randn(4, 3, 8, 8), y[:4]), TensorDataset(x, y), 3)
    with pytest.raises(ConfigError, match=r"target: inputs of shape \(3, 8, 8\) do not fit the source model"):
        target_model(src.source, prepare_target(wrong, src.hp))


# --- weights files ---------------------------------------------------------------------------------------

class TorchvisionStyle(nn.Module):
    """Shaped like torchvision's ResNet: named children, a forward of its own, the head called fc."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _images(n=48, classes=3, size=8):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, size, size, generator=g) + y[:, None, None, None].float()
    return Task("images", lambda: None, TensorDataset(x, y), TensorDataset(x, y), classes)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_torchvision_style_model_with_a_local_weights_file(tmp_path, suffix):
    pretrained = TorchvisionStyle(num_classes=7)
    nn.init.normal_(pretrained.bn1.running_mean)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(pretrained.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file(pretrained.state_dict(), str(path))
    source = load_source(path, arch=lambda shape, n: TorchvisionStyle(n))
    assert source.model.fc.out_features == 7  # sized from the file
    assert torch.equal(source.model.bn1.running_mean, pretrained.bn1.running_mean)
    assert backbone_stages(source.model) == ["conv1", "bn1", "layer1", "layer2"] and head_name(source.model) == "fc"
    hp = Config(epochs=1, batch_size=16, monitor_every=0)
    task = prepare_target(_images(), hp)
    result = train_strategy(source, task, "finetune:1", hp)
    assert result.model.fc.out_features == 3
    for name in ("conv1", "bn1", "layer1"):
        for key, value in result.model.get_submodule(name).state_dict().items():
            assert torch.equal(value, source.model.get_submodule(name).state_dict()[key]), f"{name}.{key}"
    assert len(train_strategy(source, task, "probe", hp).probes) == 4


def test_torchvision_resnet_with_a_local_weights_file(tmp_path):
    torchvision = pytest.importorskip("torchvision", reason="torchvision is an optional extra and is not installed")
    pretrained = torchvision.models.resnet18(num_classes=5)
    path = tmp_path / "resnet18.pt"
    torch.save(pretrained.state_dict(), path)
    source = load_source(path, arch="torchvision:resnet18")
    assert source.model.fc.out_features == 5
    assert backbone_stages(source.model) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    hp = Config(epochs=1, batch_size=16, monitor_every=0)
    task = prepare_target(_images(16, size=32), hp)
    result = train_strategy(source, task, "finetune:1", hp)
    assert result.model.fc.out_features == 3
    assert torch.equal(result.model.layer3[0].conv1.weight, pretrained.layer3[0].conv1.weight)


class _NotATensor:
    pass


def test_bad_weight_files_give_clear_errors(tmp_path, src):
    resnet = src.source.model
    with pytest.raises(ConfigError, match=r"^weights: no such file '.*missing\.pt'$"):
        load_source(tmp_path / "missing.pt", arch="resnet", input_shape=(1, 40))

    cnn = load_task(Config(model="cnn", width=8)).build_model()
    torch.save({"model": cnn.state_dict()}, tmp_path / "cnn.pt")
    with pytest.raises(ConfigError, match=r"do not fit the Sequential: missing keys \[stem\.0\.weight, stem\.1\.weight, "
                                          r".*\(\+41 more\)\]; unexpected keys \[stage1\.0\.weight, stage1\.0\.bias, "
                                          r"stage2\.0\.weight, stage2\.0\.bias\]; wrong shapes \[head\.3\.weight "
                                          r"\(10, 16\) vs \(10, 32\)\]$"):
        load_weights(resnet, tmp_path / "cnn.pt")

    torch.save(load_task(Config(model="resnet", width=16)).build_model().state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match=r"missing keys \[\]; unexpected keys \[\]; wrong shapes \[stem\.0\.weight "
                                          r"\(16, 1, 3\) vs \(8, 1, 3\)"):
        load_weights(resnet, tmp_path / "wide.pt")

    torch.save({"model": resnet.state_dict(), "extra": _NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=r"cannot load '.*pickled\.pt' safely: Weights only load failed"):
        read_state_dict(tmp_path / "pickled.pt")

    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ConfigError, match=r"is not a valid safetensors file"):
        read_state_dict(tmp_path / "junk.safetensors")

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match=r"holds no state_dict"):
        read_state_dict(tmp_path / "list.pt")

    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    with pytest.raises(ConfigError):
        load_weights(resnet, tmp_path / "wide.pt")
    assert all(torch.equal(v, before[k]) for k, v in resnet.state_dict().items())  # nothing half-loaded


def test_cli_bad_weights_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    torch.save({"model": {"bogus.weight": torch.zeros(2, 2)}}, tmp_path / "bogus.pt")
    db = tmp_path / "runs.db"
    rc = main(["transfer", "compare", "--source", str(tmp_path / "bogus.pt"), "--arch", "resnet", "--target", "mnist1d",
               "--db", str(db)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("trainlab: error: weights: ") and "missing keys [stem.0.weight" in err[0]
    assert "unexpected keys [bogus.weight]" in err[0]
    assert not db.exists()


# --- strategies by name ----------------------------------------------------------------------------------

def test_strategy_names_are_validated():
    assert parse_strategy("finetune:3", 4) == ("finetune", 3) and parse_strategy("scratch") == ("scratch", None)
    with pytest.raises(ConfigError, match=r"^strategy: unknown strategy 'fine'; choose one of linear, probe, "
                                          r"finetune:K, full, scratch$"):
        parse_strategy("fine")
    with pytest.raises(ConfigError, match=r"needs 1 <= K <= 4 \(this backbone's stages\), got 'finetune:5'"):
        parse_strategy("finetune:5", 4)
    with pytest.raises(ConfigError, match=r"^backbone_lr_mult: input should be greater than 0, got 0"):
        apply_overrides(Config(), {"backbone_lr_mult": 0})


# --- the advisor -----------------------------------------------------------------------------------------

def test_ridge_probe_separates_what_is_separable_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.randn(200, 20, generator=g)
    x[torch.arange(200), y] += 3.0  # each class shifted along its own direction
    assert ridge_cv_accuracy(x, y, 4) > 0.9
    assert ridge_cv_accuracy(torch.randn(200, 20, generator=g), y, 4) < 0.4
    wide = torch.randn(40, 300, generator=g)  # more features than examples: the dual form
    assert ridge_cv_accuracy(wide, y[:40], 4) < 0.5
    centers = torch.randn(4, 300, generator=g)  # a class mean spread over every feature
    assert ridge_cv_accuracy(wide + 0.3 * centers[y[:40]], y[:40], 4) > 0.9


def test_advisor_places_targets_in_the_table(src):
    cells = {}
    for n, different in ((60, False), (60, True), (600, False), (600, True)):
        task, _ = _target(src, n, different)
        cells[(n, different)] = advise(src.source, task)
    assert [(a.size, a.similarity) for a in cells.values()] == [
        ("little", "similar"), ("little", "different"), ("a lot", "similar"), ("a lot", "different")]
    similar, different = cells[(600, False)], cells[(600, True)]
    assert similar.gain >= SIMILAR_GAIN > different.gain and similar.top_score > different.top_score
    assert cells[(60, False)].strategy == "linear" and cells[(600, True)].strategy == "scratch"
    assert all(a.reasons[-1].startswith("pick: ") for a in cells.values())
    assert list(similar.stage_scores) == ["stem", "stage1", "stage2", "stage3"]


# --- the command line -------------------------------------------------------------------------------------

def test_cli_advise_run_and_compare_store_their_runs(src, capsys):
    common = ["--source", str(src.run_id), "--target", f"{EXAMPLE}:build", "--set", "epochs=1",
              "--db", str(src.root / "runs.db"), "--runs-dir", str(src.root / "runs")]
    before = len(src.store.runs())
    assert main(["transfer", "advise", *common, "--json", "--run"]) == 0
    advice = json.loads(capsys.readouterr().out)
    assert advice["strategy"] == "linear" and (advice["size"], advice["similarity"]) == ("little", "similar")
    run = src.store.run(advice["result"]["run"])
    assert run["study"] == f"transfer-run{src.run_id}-mnist1d-similar-200" and run["name"] == "linear"
    assert run["hparams"]["task"].endswith("transfer_target.py:build") and run["status"] == "completed"

    assert main(["transfer", "compare", *common, "--strategies", "finetune:1,scratch"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.startswith("strategy"))
    assert out[header].split()[:4] == ["strategy", "val_acc", "test_acc", "seconds"]
    assert [line.split()[0] for line in out[header + 1:]] == ["finetune:1", "scratch"]
    assert len(src.store.runs()) == before + 3

    assert main(["transfer", "compare", *common, "--strategies", "linear,finetune:9"]) == 2
    assert "finetune:K needs 1 <= K <= 4" in capsys.readouterr().err
    assert main(["transfer", "run", *common]) == 2
    assert "give --strategy" in capsys.readouterr().err
    assert len(src.store.runs()) == before + 3


def test_cli_weights_file_source_records_its_architecture(src, tmp_path, capsys):
    from safetensors.torch import save_file

    save_file(src.source.model.state_dict(), str(tmp_path / "source.safetensors"))
    db = tmp_path / "runs.db"
    rc = main(["transfer", "run", "--source", str(tmp_path / "source.safetensors"), "--arch", "resnet", "--set",
               "width=8", "--set", "epochs=1", "--target", f"{EXAMPLE}:build_shuffled", "--strategy", "linear",
               "--json", "--db", str(db), "--runs-dir", str(tmp_path / "runs")])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)
    store = Store(db)
    run = store.run(row["run"])
    assert run["study"] == "transfer-source-mnist1d-different-200" and run["hparams"]["model"] == "resnet"
    again = load_source(row["run"], store=store)  # the run rebuilds from its hyperparameters and best.pt
    for key, value in again.model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, src.source.model.state_dict()[key]), key
    store.close()
