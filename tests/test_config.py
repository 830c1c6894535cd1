import pytest

from trainlab.cli import main
from trainlab.config import Config, ConfigError, load_config, parse_override


def test_defaults_and_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nschedule: step\nmilestones_epochs: [5, 10]\n")
    hp = load_config(path, ["lr=0.05", "betas=[0.8, 0.99]", "grad_clip=none", "epochs=7"])
    assert hp.lr == 0.05 and hp.schedule == "step" and hp.milestones_epochs == [5, 10]
    assert hp.betas == (0.8, 0.99) and hp.grad_clip is None and hp.epochs == 7


def test_round_trip_through_yaml(tmp_path):
    hp = load_config(None, ["lr=0.02", "model=mlp", "patience=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(hp.to_yaml())
    assert load_config(path) == hp


@pytest.mark.parametrize("override, message", [
    (["lrr=0.1"], r"^lrr: unknown key \(did you mean 'lr'\?\)$"),
    (["lr=-0.1"], r"^lr: input should be greater than 0, got -0.1$"),
    (["lr=0"], r"^lr: input should be greater than 0, got 0$"),
    (["epochs=ten"], r"^epochs: input should be a valid integer.*got 'ten'$"),
    (["optimizer=adamx"], r"^optimizer: input should be 'sgd', .*got 'adamx'$"),
    (["schedule=cosin"], r"^schedule: input should be .*got 'cosin'$"),
    (["val_fraction=1.5"], r"^val_fraction: input should be less than 1, got 1.5$"),
    (["betas=[0.9, 1.2]"], r"^betas: each beta must be in \[0, 1\), got \[0.9, 1.2\]$"),
    (["device=tpu"], r"^device: must be auto, cpu, cuda or cuda:N, got 'tpu'$"),
    (["warmup_steps=5", "warmup_epochs=1"], r"set warmup_steps or warmup_epochs, not both"),
    (["nokey"], r"^--set: expected key=value, got 'nokey'$"),
])
def test_bad_values_name_the_field_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^config: no such file '.*missing.yaml'$"):
        load_config(tmp_path / "missing.yaml")
    # a name the file system refuses (ENAMETOOLONG) is one line too, the name shortened
    with pytest.raises(ConfigError, match=r"^config: cannot read '.*\(\d+ characters\): File name too long$"):
        load_config(tmp_path / ("y" * 300 + ".yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping of key: value, got list"):
        load_config(listy)


def test_parse_override_types():
    assert parse_override("lr=1e-3") == ("lr", 1e-3)
    assert parse_override("schedule=cosine") == ("schedule", "cosine")
    assert parse_override("grad_clip=None") == ("grad_clip", None)


def test_mode_follows_the_metric():
    assert Config().mode == "max"
    assert Config(early_stop_metric="val/loss").mode == "min"


@pytest.mark.parametrize("args, message", [
    (["--set", "lr=-1"], "lr: input should be greater than 0, got -1"),
    (["--set", "lrr=1"], "lrr: unknown key (did you mean 'lr'?)"),
    (["--set", "task=nope"], "task: unknown task 'nope'"),
    (["--set", "model=transformer"], "model: unknown model 'transformer'"),
    (["--set", "task=missing/file.py:build"], "task: no such file 'missing/file.py'"),
    (["nothere.yaml"], "config: no such file 'nothere.yaml'"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "runs.db"
    assert main(["train", *args, "--db", str(db), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not db.exists()


def test_cli_print_config(capsys):
    assert main(["train", "--print-config", "--set", "lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out and "schedule: cosine" in out
