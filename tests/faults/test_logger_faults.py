"""Streaming loggers (`--log-to`, `fit(..., loggers=)`) on runs that are not one plain process: a run stopped
by SIGTERM and resumed goes on in the same TensorBoard folder and the same MLflow run, each step once; under
`--nproc 2` only rank 0 writes; a logger whose target fails (unwritable, disk full, its folder removed) is
dropped with one warning line and never changes the run's outcome. Read back with TensorBoard's
EventAccumulator and MLflow's MlflowClient and compared with the store's rows."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import TINY_YAML, run_row, trainlab, wait_for
from trainlab.config import Config
from trainlab.store import Store
from trainlab.train import fit

tb_reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
mlflow_tracking = pytest.importorskip("mlflow.tracking")

TINY = dict(model="mlp", width=32, batch_size=32, monitor_every=0, seed=3)


def _log_to(root) -> list[str]:
    return ["--log-to", f"tensorboard:{root}/tb", "--log-to", f"mlflow:{root}/ml", "--log-to", f"csv:{root}/c"]


def _read_back(root, run_id: int, name: str = "mnist1d-mlp", study: str = "no-study"):
    """What each format holds for the run: {format: {key: [(step, value), ...]}}, and the MLflow runs."""
    folder = root / "tb" / study / f"run-{run_id}-{name}"
    acc = tb_reader.EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tb = {k: [(e.step, e.value) for e in acc.Scalars(k)] for k in acc.Tags()["scalars"] if not k.startswith("summary/")}
    client = mlflow_tracking.MlflowClient(tracking_uri=f"sqlite:///{root / 'ml' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    ml = {}
    if len(runs) == 1:
        for key in runs[0].data.metrics:
            if not key.startswith("summary/"):
                history = sorted(client.get_metric_history(runs[0].info.run_id, key), key=lambda m: m.step)
                ml[key] = [(m.step, m.value) for m in history]
    with open(root / "c" / "metrics" / f"run-{run_id}-{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table: dict = {}
    for r in rows:
        table.setdefault(r["key"], []).append((int(r["step"]), float(r["value"])))
    return {"tensorboard": tb, "mlflow": ml, "csv": table}, runs, folder


def _assert_equal_to_store(formats: dict, stored: dict) -> None:
    for fmt, series in formats.items():
        assert sorted(series) == sorted(stored), fmt
        for key, rows in series.items():
            assert [s for s, _ in rows] == stored[key]["step"], (fmt, key)
            assert [v for _, v in rows] == pytest.approx(stored[key]["value"], rel=1e-6), (fmt, key)


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_and_resumed_goes_on_in_the_same_logs(tmp_path):
    (tmp_path / "c.yaml").write_text(TINY_YAML + "epochs: 3\n")
    db = tmp_path / "t.db"
    # absolute paths, no cwd: the child finds this checkout through PYTHONPATH as the tests were started with
    proc = trainlab("train", str(tmp_path / "c.yaml"), "--db", str(db), "--runs-dir", str(tmp_path / "runs"),
                    "--quiet", *_log_to(tmp_path))
    wait_for(lambda: (run_row(db) or {}).get("epochs", 0) >= 1)
    time.sleep(0.2)  # into epoch 2
    proc.send_signal(signal.SIGSTOP)  # frozen: the store cannot run ahead of what we check
    assert run_row(db)["status"] == "running"
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped = Store(db).run(1)
    assert stopped["status"] == "stopped" and 113 <= stopped["summary"]["steps"] < 3 * 113
    formats, runs, folder = _read_back(tmp_path, 1)
    _assert_equal_to_store(formats, Store(db).metrics(1))
    (ml_run,) = runs
    assert ml_run.info.status == "KILLED"

    resumed = trainlab("train", "--resume", "1", "--db", str(db), "--runs-dir", str(tmp_path / "runs"), "--quiet",
                       *_log_to(tmp_path))
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    assert "warning" not in err
    store = Store(db)
    assert store.run(1)["status"] == "completed"
    stored = store.metrics(1)
    assert stored["train/loss"]["step"] == list(range(3 * 113))
    formats, runs, folder2 = _read_back(tmp_path, 1)
    assert folder2 == folder and len(list(folder.glob("events.out.tfevents.*"))) == 2  # same folder, one more file
    _assert_equal_to_store(formats, stored)
    # each step written once: the raw events of both files, not only what the reader shows
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    raw = [v.tag for f in sorted(folder.glob("events.out.tfevents.*")) for e in EventFileLoader(str(f)).Load()
           for v in e.summary.value if v.tag == "train/loss"]
    assert len(raw) == 3 * 113
    (ml_run2,) = runs  # the same MLflow run goes on, now finished
    assert ml_run2.info.run_id == ml_run.info.run_id and ml_run2.info.status == "FINISHED"
    assert ml_run2.data.tags["trainlab.status"] == "completed"


@pytest.mark.slow
def test_under_nproc_2_only_rank_0_writes_and_it_equals_the_store(tmp_path):
    (tmp_path / "c.yaml").write_text(TINY_YAML.replace("batch_size: 32", "batch_size: 16") + "epochs: 1\n")
    proc = trainlab("train", str(tmp_path / "c.yaml"), "--nproc", "2", "--db", str(tmp_path / "t.db"), "--runs-dir",
                    str(tmp_path / "runs"), "--quiet", *_log_to(tmp_path))
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    store = Store(tmp_path / "t.db")
    assert [r["id"] for r in store.runs()] == [1]
    formats, runs, folder = _read_back(tmp_path, 1)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one MLflow run, not one per rank
    (events,) = folder.glob("events.out.tfevents.*")  # one event file: one writer
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*")) == [events]
    assert len(list((tmp_path / "c" / "metrics").iterdir())) == 1
    _assert_equal_to_store(formats, store.metrics(1))
    assert store.metrics(1, ["train/loss"])["train/loss"]["step"] == list(range(113))


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


@pytest.mark.slow  # imports MLflow (seconds)
def test_loggers_that_cannot_start_leave_the_run_alone(tmp_path, small_fs, monkeypatch, capsys):
    from trainlab.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    small_fs.read_only(True)
    code = main(["train", "--set", "model=mlp", "--set", "width=8", "--set", "epochs=2", "--quiet", "--json",
                 "--db", "t.db", "--runs-dir", "runs", "--log-to", "tensorboard:file/tb", "--log-to", "mlflow:file/ml",
                 "--log-to", f"csv:{small_fs.path}/c", "--log-to", "tensorboard:tb"])
    out = capsys.readouterr()
    small_fs.read_only(False)
    assert code == 0, out.err
    result = json.loads(out.out)
    warned = _warnings(out.err)
    assert len(warned) == 3 and len(out.err.strip().splitlines()) == 3, out.err
    assert warned[0].startswith("warning: tensorboard logger (file/tb/no-study/run-1-mnist1d-mlp) failed at the "
                                "start: NotADirectoryError")
    assert warned[1].startswith("warning: mlflow logger (sqlite:///") and "NotADirectoryError" in warned[1]
    assert warned[2].startswith(f"warning: csv logger ({small_fs.path}/c) failed at the start: OSError: [Errno 30]")
    assert all(w.endswith(f"(write it out later: trainlab export {f} 1)") for w, f in
               zip(warned, ["tensorboard", "mlflow", "csv"]))
    store = Store(tmp_path / "t.db")
    run = store.run(1)
    assert run["status"] == "completed" == result["status"] and run["checkpoint"]
    assert [f.split(" failed")[0] for f in run["summary"]["logger_faults"]] == [w[9:].split(" failed")[0] for w in warned]
    assert store.metrics(1, ["train/loss"])["train/loss"]["step"] == list(range(run["summary"]["steps"]))
    acc = tb_reader.EventAccumulator(str(tmp_path / "tb" / "no-study" / "run-1-mnist1d-mlp"))
    acc.Reload()  # the logger that could write did, all of it
    assert len(acc.Scalars("train/loss")) == run["summary"]["steps"]


class _AtEpoch:
    """A callback doing `action()` at the end of epoch `epoch` (1-based): the fault lands mid-run."""

    def __init__(self, epoch: int, action):
        self.epoch, self.action = epoch, action

    def on_step_end(self, state):
        pass

    def on_epoch_end(self, state):
        if state.epoch + 1 == self.epoch:
            self.action()

    def on_fit_end(self, state):
        pass


def _read_only(path):
    def action():
        for folder, _, files in os.walk(path):
            os.chmod(folder, 0o555)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o444)
    return action


@pytest.mark.slow  # MLflow creates its store (seconds)
@pytest.mark.parametrize("fault", ["disk-full", "read-only", "mlflow-dir-removed"])
def test_a_logger_target_that_fails_mid_run_never_changes_the_outcome(tmp_path, small_fs, fault, capsys):
    from trainlab.export import CsvLogger, MlflowLogger, TensorBoardLogger

    if fault == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes through file permissions (the disk-full case makes the writes fail here)")
    root = tmp_path / "logs" if fault == "mlflow-dir-removed" else small_fs.path
    loggers = [TensorBoardLogger(root / "tb"), MlflowLogger(str(root / "ml")), CsvLogger(root / "c")]
    action = {"disk-full": small_fs.fill, "read-only": _read_only(root),
              "mlflow-dir-removed": lambda: shutil.rmtree(root / "ml")}[fault]
    store = Store(tmp_path / "t.db")
    try:
        result = fit(None, Config(**TINY, epochs=3), store=store, runs_dir=tmp_path / "runs", quiet=True,
                     loggers=loggers, callbacks=[_AtEpoch(1, action)])
    finally:
        if fault == "read-only":
            subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
    err = capsys.readouterr().err
    warned = _warnings(err)
    assert result.status == "completed" and store.run(result.run_id)["status"] == "completed"
    assert len(err.strip().splitlines()) == len(warned), err  # nothing but the warnings: no traceback
    failed = [w.split()[1] for w in warned]
    want = {"disk-full": ["tensorboard", "mlflow", "csv"], "read-only": ["mlflow", "csv"],
            "mlflow-dir-removed": ["mlflow"]}[fault]
    assert sorted(failed) == sorted(want), err
    assert len(set(failed)) == len(failed)  # one line per logger, however many writes it missed
    assert all(" failed writing rows up to step " in w or " failed at the end" in w for w in warned), err
    run = store.run(result.run_id)
    assert len(run["summary"]["logger_faults"]) == len([w for w in warned if " failed at the end" not in w])
    stored = store.metrics(result.run_id)
    assert stored["train/loss"]["step"] == list(range(result.steps)) and len(stored["val/acc"]["step"]) == 3
