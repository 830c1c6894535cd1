import pytest
import torch

from trainlab.config import Config, ConfigError
from trainlab.models import build_model, stage_names
from trainlab.optim import build_optimizer, param_groups
from trainlab.tasks import load_task, mnist1d_arrays


def test_mnist1d_sizes_and_fixed_val_split():
    hp = Config(model="mlp")
    task = load_task(hp)
    assert (len(task.train), len(task.val), len(task.test)) == (3600, 400, 1000)
    assert task.train.tensors[0].shape == (3600, 1, 40) and task.num_classes == 10
    again = load_task(Config(model="mlp", seed=5))
    assert torch.equal(again.val.tensors[0], task.val.tensors[0]), "the split must not move with the training seed"
    other = load_task(Config(model="mlp", split_seed=1))
    assert not torch.equal(other.val.tensors[0], task.val.tensors[0])
    train_rows = {tuple(r.tolist()) for r in task.train.tensors[0][:, 0, :5]}
    assert not any(tuple(r.tolist()) in train_rows for r in task.val.tensors[0][:, 0, :5])


def test_mnist1d_shuffle_permutes_positions():
    plain, shuffled = mnist1d_arrays(), mnist1d_arrays(shuffle_seq=True)
    assert plain["x"].shape == shuffled["x"].shape == (4000, 40)
    assert (plain["y"] == shuffled["y"]).all()
    assert not (plain["x"] == shuffled["x"]).all()


def test_digits_is_2d():
    task = load_task(Config(task="digits", model="resnet"))
    assert task.train.tensors[0].shape[1:] == (1, 8, 8)
    assert len(task.train) + len(task.val) + len(task.test) == 1797
    out = task.build_model()(task.train.tensors[0][:4])
    assert out.shape == (4, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_models_have_named_stages_ending_in_head(name):
    model = build_model(name, (1, 40), 10)
    names = stage_names(model)
    assert names[-1] == "head" and len(names) >= 3
    assert model(torch.randn(3, 1, 40)).shape == (3, 10)


def test_mlp_is_40_100_100_10():
    model = build_model("mlp", (1, 40), 10)
    shapes = [tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")]
    assert shapes == [(100, 40), (100, 100), (10, 100)]


def test_user_task_example_and_errors(tmp_path):
    task = load_task(Config(task="examples/spirals.py:build"))
    assert task.name == "spirals" and task.num_classes == 3 and len(task.val) == 120
    bad = tmp_path / "bad.py"
    bad.write_text("def build(hp):\n    return 3\n")
    with pytest.raises(ConfigError, match=r"returned int, expected trainlab.Task"):
        load_task(Config(task=f"{bad}:build"))
    with pytest.raises(ConfigError, match=r"has no function 'nope'"):
        load_task(Config(task=f"{bad}:nope"))
    with pytest.raises(ConfigError, match=r"cannot import module 'no_such_pkg.mod'"):
        load_task(Config(task="no_such_pkg.mod:build"))


def test_no_weight_decay_on_biases_and_norms():
    model = build_model("resnet", (1, 40), 10)
    groups = param_groups(model, lr=0.1, weight_decay=1e-4)
    for g in groups:
        for name, p in zip(g["names"], g["params"]):
            assert (g["weight_decay"] > 0) == (p.ndim >= 2), name
    assert any(n.endswith("bn1.weight") for g in groups if g["weight_decay"] == 0 for n in g["names"])


def test_per_stage_lr_multiplier():
    model = build_model("mlp", (1, 40), 10)
    groups = param_groups(model, lr=0.1, weight_decay=0.0, lr_mult={"stage1": 0.1, "stage2": 0.5})
    lrs = {n: g["lr"] for g in groups for n in g["names"]}
    assert lrs["stage1.1.weight"] == pytest.approx(0.01)
    assert lrs["stage2.0.bias"] == pytest.approx(0.05)
    assert lrs["head.weight"] == pytest.approx(0.1)


@pytest.mark.parametrize("name, cls, extra", [
    ("sgd", torch.optim.SGD, {"momentum": 0}), ("momentum", torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    ("nesterov", torch.optim.SGD, {"nesterov": True}), ("adagrad", torch.optim.Adagrad, {}),
    ("rmsprop", torch.optim.RMSprop, {}), ("adam", torch.optim.Adam, {"betas": (0.9, 0.999)}),
    ("adamw", torch.optim.AdamW, {}),
])
def test_every_optimizer_builds_and_steps(name, cls, extra):
    model = build_model("mlp", (1, 40), 10, width=8)
    opt = build_optimizer(Config(optimizer=name, lr=0.01, weight_decay=1e-4), model)
    assert type(opt) is cls
    for key, value in extra.items():
        assert opt.param_groups[0][key] == value
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 1, 40)), torch.randint(0, 10, (16,)))
    loss.backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
