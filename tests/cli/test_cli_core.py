"""The core commands end to end, in-process: train, runs, runs show, plot, schedule."""

import json
import math

import pytest

from trainlab.cli import main


@pytest.fixture
def trained(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    db = str(tmp_path / "t.db")
    assert main(["train", "--set", "model=mlp", "--set", "width=16", "--set", "epochs=2", "--db", db,
                 "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    return db, result


def test_train_json_and_runs_listing(trained, capsys):
    db, result = trained
    assert result["status"] == "completed" and result["epochs"] == 2 and 0 < result["test"]["acc"] <= 1
    assert result["checkpoint"].endswith("run-1/best.pt")
    assert main(["runs", "--db", db, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [1] and rows[0]["status"] == "completed" and rows[0]["epochs"] == 2
    assert main(["runs", "--db", db]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["id", "name", "study", "status"] and "mnist1d-mlp" in out


def test_runs_kind_filter(trained, capsys):
    db, _ = trained
    assert main(["check", "init", "--set", "model=mlp", "--db", db]) == 0
    capsys.readouterr()
    assert main(["runs", "--db", db, "--kind", "check", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["check-init"]
    assert main(["runs", "--db", db, "--kind", "all", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_runs_show(trained, capsys):
    db, _ = trained
    assert main(["runs", "show", "1", "--db", db, "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["hparams"]["width"] == 16 and run["status"] == "completed"
    assert main(["runs", "show", "1", "--db", db]) == 0
    assert "  width: 16" in capsys.readouterr().out
    assert main(["runs", "show", "9", "--db", db]) == 2
    assert "no run with id 9" in capsys.readouterr().err


def test_plot_writes_a_png(trained, tmp_path, capsys):
    db, _ = trained
    out = tmp_path / "curves.png"
    assert main(["plot", "1", "-o", str(out), "--db", db]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_diverged_run_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--set", "model=mlp", "--set", "optimizer=sgd", "--set", "lr=80", "--set", "epochs=2",
                 "--db", str(tmp_path / "t.db"), "--quiet"])
    assert code == 1
    assert "diverged: loss became" in capsys.readouterr().err


def test_schedule_command(tmp_path, capsys):
    assert main(["schedule", "cosine", "--lr", "0.1", "--steps", "100", "--set", "warmup_steps=10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    lrs = data["lrs"]
    assert len(lrs) == 100 and lrs[9] == pytest.approx(0.1) and lrs[0] == pytest.approx(0.01)
    assert lrs[55] == pytest.approx(0.1 * (1 + math.cos(math.pi * 45 / 90)) / 2)
    assert data["warmup_steps"] == 10 and data["min_lr_factor"] == 0.0  # the config's names
    png = tmp_path / "lr.png"
    assert main(["schedule", "step", "--lr", "0.1", "--steps", "50", "--steps-per-epoch", "10",
                 "--set", "step_size_epochs=1", "--set", "gamma=0.5", "-o", str(png)]) == 0
    assert png.exists() and "0.0125" in capsys.readouterr().out
    # the old spellings (in updates) still read, converted to the config's epochs, with a note
    assert main(["schedule", "step", "--lr", "0.1", "--steps", "50", "--set", "step_size=10", "--set", "gamma=0.5",
                 "--warmup", "0", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["lrs"][30] == pytest.approx(0.0125)
    assert "step_size is spelled step_size_epochs" in captured.err
    # milestones in epochs, as a run reads them: 113 updates per epoch, drops at epochs 1 and 2
    assert main(["schedule", "multistep", "--lr", "1", "--set", "epochs=3", "--steps-per-epoch", "113",
                 "--set", "milestones_epochs=[1,2]", "--set", "gamma=0.1", "--json"]) == 0
    lrs = json.loads(capsys.readouterr().out)["lrs"]
    assert len(lrs) == 339 and lrs[112] == 1 and lrs[113] == pytest.approx(0.1) and lrs[226] == pytest.approx(0.01)
    assert main(["schedule", "step", "--set", "gama=0.5"]) == 2
    assert "unknown schedule parameter 'gama'" in capsys.readouterr().err
    assert main(["schedule", "cosine", "--lr", "-1"]) == 2
    assert "--lr: must be in (0, 1e6], got -1.0" in capsys.readouterr().err
    assert main(["schedule", "cosine", "--set", "min_lr_factor=2"]) == 2
    assert "min_lr_factor" in capsys.readouterr().err


def test_bad_db_url_is_one_line(tmp_path, capsys):
    assert main(["runs", "--db", "foo://nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainlab: error: db: cannot open") and "\n" not in err


def test_threads_option(capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["--threads", "0", "runs"]) == 2
    assert "--threads: must be >= 1, got 0" in capsys.readouterr().err
    import torch

    assert main(["--threads", "1", "schedule", "constant", "--steps", "3", "--json"]) == 0
    assert torch.get_num_threads() == 1 and __import__("os").environ["OMP_NUM_THREADS"] == "1"
