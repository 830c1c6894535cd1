"""Search-space syntax: every function parses to the right distribution; every bad space is one line naming it."""

import math

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from trainlab.cli import main
from trainlab.config import Config, ConfigError
from trainlab.search.space import load_space, parse_param, parse_space


def test_every_function_parses_to_its_distribution():
    space = parse_space({
        "lr": "loguniform(1e-4, 1e-1)",
        "dropout": "uniform(0.0, 0.5)",
        "width": "int(32, 256, log)",
        "batch_size": "int(16, 64)",
        "weight_decay": "choice(0, 1e-5, 1e-4)",
        "optimizer": "grid(adam, 'sgd', momentum)",
        "momentum": "logspace(0.5, 0.99, 3)",
    })
    assert space.names == ["lr", "dropout", "width", "batch_size", "weight_decay", "optimizer", "momentum"]
    p = space.params
    assert p["lr"].distribution() == FloatDistribution(1e-4, 1e-1, log=True)
    assert p["dropout"].distribution() == FloatDistribution(0.0, 0.5)
    assert p["width"].distribution() == IntDistribution(32, 256, log=True)
    assert p["batch_size"].distribution() == IntDistribution(16, 64)
    assert p["weight_decay"].distribution() == CategoricalDistribution((0, 1e-5, 1e-4))
    assert p["optimizer"].values == ("adam", "sgd", "momentum") and p["optimizer"].grid
    assert p["momentum"].values == (0.5, 0.703562, 0.99) and p["momentum"].log
    assert space.grid_size() is None  # continuous parameters: no grid


def test_logspace_is_exact_and_grids_multiply():
    space = parse_space({"lr": "logspace(1e-4, 1e-1, 4)", "weight_decay": "grid(0, 1e-4)"})
    assert space.params["lr"].values == (1e-4, 1e-3, 1e-2, 1e-1)
    assert space.grid() == {"lr": [1e-4, 1e-3, 1e-2, 1e-1], "weight_decay": [0, 1e-4]}
    assert space.grid_size() == 8
    assert parse_param("width", "logspace(16, 256, 5)").values == (16, 32, 64, 128, 256)  # integer field


def test_to_dict_round_trips():
    data = {"lr": "loguniform(1e-4, 1e-1)", "optimizer": "choice(adam, sgd)"}
    space = parse_space(data)
    assert parse_space(space.to_dict()) == space


@pytest.mark.parametrize("key, spec, message", [
    ("lr", "loguniform(0, 0.1)", r"^lr: loguniform\(0, 0.1\): a log scale needs low > 0, got 0$"),
    ("lr", "loguniform(-1, 0.1)", r"^lr: loguniform\(-1, 0.1\): a log scale needs low > 0, got -1$"),
    ("lr", "uniform(0.1, 0.01)", r"^lr: uniform\(0.1, 0.01\): low must be < high, got low 0.1 >= high 0.01$"),
    ("lr", "loguniform(0.1, 0.1)", r"^lr: loguniform\(0.1, 0.1\): low must be < high"),
    ("width", "int(64, 32)", r"^width: int\(64, 32\): low must be < high, got low 64 >= high 32$"),
    ("width", "int(0, 64, log)", r"^width: int\(0, 64, log\): a log scale needs low > 0, got 0$"),
    ("width", "int(8, 64, lin)", r"^width: int\(8, 64, lin\): the third argument of int\(\) can only be log, got 'lin'$"),
    ("width", "int(8.5, 64)", r"^width: int\(8.5, 64\): expected int\(low, high\) or int\(low, high, log\)"),
    ("width", "uniform(8, 64)", r"^width: uniform\(8, 64\): width is an integer; use int\(low, high\)"),
    ("lr", "logspace(0, 1, 3)", r"^lr: logspace\(0, 1, 3\): a log scale needs low > 0, got 0$"),
    ("lr", "logspace(1e-4, 1e-1, 1)", r"^lr: logspace\(1e-4, 1e-1, 1\): n must be in \[2, 10000\], got 1$"),
    ("lr", "logspace(1e-4, 1e-1)", r"^lr: logspace\(1e-4, 1e-1\): expected logspace\(low, high, n\)"),
    ("lr", "loguniform(1e-4)", r"^lr: loguniform\(1e-4\): expected loguniform\(low, high\) with two finite numbers$"),
    ("lr", "loguniform(a, b)", r"^lr: loguniform\(a, b\): expected loguniform\(low, high\)"),
    ("lr", "logunifrom(1e-4, 1e-1)", r"^lr: unknown function 'logunifrom' in 'logunifrom\(1e-4, 1e-1\)'; use one of "
                                     r"loguniform, uniform, int, choice, grid, logspace \(did you mean 'loguniform'\?\)$"),
    ("lr", "normal(0, 1)", r"^lr: unknown function 'normal'"),
    ("lr", "0.1", r"^lr: cannot parse '0.1'; expected a function such as loguniform"),
    ("lr", 0.1, r"^lr: expected a function such as loguniform\(1e-4, 1e-1\) or choice\(a, b\), got 0.1$"),
    ("lr", "choice()", r"^lr: choice\(\): choice\(\) needs at least one value$"),
    ("lr", "grid(0.1, 0.1)", r"^lr: grid\(0.1, 0.1\): the value 0.1 is listed twice$"),
    ("lrr", "loguniform(1e-4, 1e-1)", r"^lrr: not a hyperparameter of Config \(did you mean 'lr'\?\)$"),
    ("zzz", "uniform(0, 1)", r"^zzz: not a hyperparameter of Config$"),
    # bounds and values must be values the field accepts
    ("dropout", "uniform(0.0, 1.0)", r"^dropout: uniform\(0.0, 1.0\): input should be less than 1, got 1.0$"),
    ("lr", "uniform(0, 0.1)", r"^lr: uniform\(0, 0.1\): input should be greater than 0, got 0"),
    ("optimizer", "choice(adam, sgdd)", r"^optimizer: choice\(adam, sgdd\): input should be 'sgd', .*got 'sgdd'$"),
    ("batch_size", "grid(32, 0)", r"^batch_size: grid\(32, 0\): input should be greater than or equal to 1, got 0$"),
    # an integer too large for a float is not a finite number (it raised OverflowError: found by the fuzz test)
    ("lr", f"loguniform(1, {10**400})", r"^lr: loguniform\(1, 1000.*: expected loguniform\(low, high\) with two finite"),
    ("lr", f"uniform(0, {10**400})", r"^lr: uniform\(0, 1000.*: expected uniform\(low, high\) with two finite"),
    ("lr", f"logspace(1, {10**400}, 3)", r"^lr: logspace\(1, 1000.*: expected logspace\(low, high, n\)"),
])
def test_bad_param_is_one_line_naming_key_and_value(key, spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_param(key, spec)
    assert "\n" not in str(info.value)


def test_values_are_checked_against_the_base_config():
    # warmup_steps is fine alone, but the base config already sets warmup_epochs: the pair is rejected.
    base = Config(warmup_epochs=1.0)
    with pytest.raises(ConfigError, match=r"^warmup_steps: grid\(0, 10\): set warmup_steps or warmup_epochs, not both \(with warmup_steps=10\)$"):
        parse_param("warmup_steps", "grid(0, 10)", base)


def test_grid_strategy_needs_discrete_parameters():
    space = parse_space({"lr": "loguniform(1e-4, 1e-1)", "width": "grid(16, 32)"})
    with pytest.raises(ConfigError, match=r"^lr: loguniform\(1e-4, 1e-1\) cannot be gridded; with --strategy grid use "
                                          r"grid\(\.\.\.\), logspace\(a, b, n\) or choice\(\.\.\.\)$"):
        space.grid()


def test_space_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"^space: no such file '.*nope.yaml'$"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"^space: '.*bad.yaml' is not valid YAML at line \d+$"):
        load_space(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- lr\n")
    with pytest.raises(ConfigError, match=r"^space: '.*list.yaml' must hold a mapping of hyperparameter: function, "
                                          r"got list$"):
        load_space(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"^space: no hyperparameters to search"):
        load_space(empty)
    good = tmp_path / "space.yaml"
    good.write_text("lr: loguniform(1e-4, 1e-1)\nwidth: int(32, 256, log)\n")
    assert load_space(good).names == ["lr", "width"]


@pytest.mark.parametrize("spec, message", [
    ("lr: loguniform(0, 1)\n", "lr: loguniform(0, 1): a log scale needs low > 0, got 0"),
    ("lr: uniform(1, 0.5)\n", "lr: uniform(1, 0.5): low must be < high, got low 1 >= high 0.5"),
    ("lr: gaussian(1, 2)\n", "lr: unknown function 'gaussian'"),
    ("learning_rate: loguniform(1e-4, 1e-1)\n", "learning_rate: not a hyperparameter of Config"),
])
def test_cli_bad_space_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, spec, message):
    space = tmp_path / "space.yaml"
    space.write_text(spec)
    db = tmp_path / "s.db"
    code = main(["search", "--space", str(space), "--db", str(db), "--trials", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainlab: error: " + message)
    assert not db.exists()


def test_cli_grid_with_continuous_parameter_exits_2(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: loguniform(1e-4, 1e-1)\n")
    code = main(["search", "--space", str(space), "--strategy", "grid", "--db", str(tmp_path / "s.db")])
    assert code == 2
    assert "lr: loguniform(1e-4, 1e-1) cannot be gridded" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


def test_math_of_logspace_matches_numpy():
    import numpy as np

    values = parse_param("lr", "logspace(3e-5, 0.2, 7)").values
    assert np.allclose(values, np.logspace(math.log10(3e-5), math.log10(0.2), 7), rtol=1e-5)
