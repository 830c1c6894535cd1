"""Export to TensorBoard, MLflow and CSV, read back with each library's own reader; streaming while training."""

import csv
import math
import sys

import pytest

from trainlab.cli import main
from trainlab.store import Store

tb_reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
mlflow_tracking = pytest.importorskip("mlflow.tracking")


@pytest.fixture
def store_db(tmp_path):
    """A study of three runs (completed, pruned, diverged with NaN) and a run without a study, via the Store API."""
    db = str(tmp_path / "s.db")
    store = Store(db)
    specs = [("a", "completed", None, "st"), ("b", "pruned", "trial pruned at epoch 2", "st"),
             ("c", "diverged", "loss became NaN at step 7", "st"), ("d", "completed", None, None)]
    for i, (name, status, reason, study) in enumerate(specs):
        run = store.create_run(name=name, hparams={"lr": 0.01 * (i + 1), "model": "mlp", "width": 8 * (i + 1),
                                                   "milestones_epochs": [1, 2], "grad_clip": None}, study=study)
        rows = [(s, 1 + s // 5, "train/loss", 2.0 - s / 10 + i) for s in range(15)]
        rows += [(4 + 5 * e, 1 + e, "val/acc", 0.3 + 0.1 * e + 0.01 * i) for e in range(3)]
        rows += [(s, 1 + s // 5, "ratio/layer.0.weight", 1e-3 * (s + 1)) for s in range(0, 15, 5)]
        if status == "diverged":
            rows.append((15, 4, "train/loss", math.nan))
        store.log_metrics(run, rows, epochs=3)
        store.finish_run(run, status, reason=reason, best_metric=0.5 + 0.01 * i, best_epoch=3, epochs=3,
                         summary={"test/acc": 0.4 + i / 100, "ratio_warnings": []})
    store.close()
    return db


def _stored(db, run_id):
    return Store(db).metrics(run_id)


def _accumulator(folder):
    acc = tb_reader.EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_export_of_a_study_reads_back(store_db, tmp_path, capsys):
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    out = tmp_path / "tb"
    assert main(["export", "tensorboard", "--study", "st", "--db", store_db, "-o", str(out)]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().out
    folders = sorted((out / "st").iterdir())
    assert [f.name for f in folders] == ["run-1-a", "run-2-b", "run-3-c"]  # the run without a study is not in it
    for run_id, folder in enumerate(folders, 1):
        acc = _accumulator(folder)
        for key, series in _stored(store_db, run_id).items():
            events = acc.Scalars(key)
            assert [e.step for e in events] == series["step"]
            assert [e.value for e in events] == pytest.approx(series["value"], nan_ok=True, rel=1e-6)
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hps = start.session_start_info.hparams
        assert hps["lr"].number_value == pytest.approx(0.01 * run_id) and hps["model"].string_value == "mlp"
        assert hps["milestones_epochs"].string_value == "[1, 2]"
        end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
        assert api_pb2.Status.Name(end.status) == ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_FAILURE"][run_id - 1]
        assert acc.Scalars("summary/test/acc")[0].value == pytest.approx(0.4 + (run_id - 1) / 100)
    status = _accumulator(folders[2]).Tensors("status")[0].tensor_proto.string_val[0].decode()
    assert status == "diverged: loss became NaN at step 7"
    # exporting again replaces, it does not double
    assert main(["export", "tensorboard", "3", "--db", store_db, "-o", str(out)]) == 0
    assert len(_accumulator(folders[2]).Scalars("val/acc")) == 3


def test_tensorboard_hparams_columns_follow_the_runs_metric(tmp_path):
    """A regression run's HParams table is judged by val/loss and shows its test mse, not accuracy columns."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    db = str(tmp_path / "r.db")
    store = Store(db)
    run = store.create_run(name="sine", hparams={"lr": 0.01, "early_stop_metric": "val/loss", "early_stop_mode": "min"})
    store.log_metrics(run, [(0, 1, "train/loss", 1.0), (0, 1, "val/loss", 0.9), (0, 1, "val/mse", 0.9)], epochs=1)
    store.finish_run(run, "completed", best_metric=0.9, best_epoch=1, epochs=1, summary={"test/mse": 0.8, "test/mae": 0.7})
    store.close()
    assert main(["export", "tensorboard", str(run), "--db", db, "-o", str(tmp_path / "tb")]) == 0
    (folder,) = [p for p in (tmp_path / "tb").rglob("run-1-sine") if p.is_dir()]
    content = _accumulator(folder).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    tags = [m.name.tag for m in experiment.metric_infos]
    assert tags == ["val/loss", "train/loss", "summary/best_metric", "summary/test/mse", "summary/test/mae"]


@pytest.mark.slow  # MLflow migrates its SQLite store on first open: several seconds
def test_mlflow_export_reads_back_with_mlflow_client(store_db, tmp_path, capsys):
    out = tmp_path / "ml"
    assert main(["export", "mlflow", "--study", "st", "--db", store_db, "-o", str(out), "--json"]) == 0
    result = capsys.readouterr()
    assert len(__import__("json").loads(result.out)["runs"]) == 3
    client = mlflow_tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("st")
    runs = {r.data.tags["trainlab.run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["1", "2", "3"]
    statuses = {k: (r.info.status, r.data.tags["trainlab.status"], r.data.tags["trainlab.reason"]) for k, r in runs.items()}
    assert statuses == {"1": ("FINISHED", "completed", ""), "2": ("KILLED", "pruned", "trial pruned at epoch 2"),
                        "3": ("FAILED", "diverged", "loss became NaN at step 7")}
    run = runs["2"]
    assert run.data.params["lr"] == "0.02" and run.data.params["milestones_epochs"] == "[1, 2]"
    assert run.data.params["grad_clip"] == "null" and run.info.run_name == "b"
    for key, series in _stored(store_db, 2).items():
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == series["step"]
        assert [m.value for m in history] == pytest.approx(series["value"])
    assert run.data.metrics["summary/test/acc"] == pytest.approx(0.41)
    nan = client.get_metric_history(runs["3"].info.run_id, "train/loss")
    assert math.isnan(max(nan, key=lambda m: m.step).value)
    # again: replaced, not doubled
    assert main(["export", "mlflow", "2", "--db", store_db, "-o", str(out)]) == 0
    assert len(client.search_runs([experiment.experiment_id], "tags.`trainlab.run_id` = '2'")) == 1


def test_csv_export(store_db, tmp_path):
    out = tmp_path / "c"
    assert main(["export", "csv", "1,3", "4", "--db", store_db, "-o", str(out)]) == 0
    with open(out / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert [(r["id"], r["status"], r["reason"]) for r in runs] == [
        ("1", "completed", ""), ("3", "diverged", "loss became NaN at step 7"), ("4", "completed", "")]
    assert runs[1]["hp.width"] == "24" and float(runs[1]["summary.test/acc"]) == pytest.approx(0.42) and runs[2]["study"] == ""
    with open(out / "metrics" / "run-3-c.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    stored = _stored(store_db, 3)
    assert len(rows) == sum(len(s["step"]) for s in stored.values())
    loss = [(int(r["step"]), float(r["value"])) for r in rows if r["key"] == "train/loss"]
    assert [s for s, _ in loss] == stored["train/loss"]["step"] and math.isnan(loss[-1][1])


def test_bad_input_is_one_line_and_writes_nothing(store_db, tmp_path, capsys, monkeypatch):
    out = tmp_path / "never"
    assert main(["export", "csv", "9", "--db", store_db, "-o", str(out)]) == 2
    assert "no run with id 9" in capsys.readouterr().err and not out.exists()
    assert main(["export", "csv", "--study", "nope", "--db", store_db, "-o", str(out)]) == 2
    assert "--study: no runs in study 'nope'; studies: st" in capsys.readouterr().err
    assert main(["export", "csv", "--db", store_db]) == 2
    assert "give run ids" in capsys.readouterr().err
    assert main(["train", "--log-to", "tensorboard", "--db", store_db]) == 2
    assert "--log-to: expected KIND:DEST" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    assert main(["export", "tensorboard", "1", "--db", store_db, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("trainlab: error: tensorboard: needs the tensorboard package, which is not installed; "
                   "pip install 'trainlab[export]'") and not out.exists()


class Counting:
    """A logger that records what it is fed and how often."""

    def __init__(self):
        self.calls, self.rows, self.started, self.finished = 0, [], None, None

    def start(self, run):
        self.started = run

    def log(self, rows):
        self.calls += 1
        self.rows.extend(rows)

    def finish(self, run):
        self.finished = run


@pytest.mark.slow
def test_fit_streams_to_loggers_at_its_read_points_only(tmp_path):
    from trainlab.config import Config
    from trainlab.export import CsvLogger, MlflowLogger, TensorBoardLogger
    from trainlab.train import fit

    store = Store(str(tmp_path / "f.db"))
    counting = Counting()
    hp = Config(model="mlp", width=8, epochs=2)
    result = fit(None, hp, store=store, quiet=True, runs_dir=tmp_path / "runs", study="live",
                 loggers=[counting, TensorBoardLogger(tmp_path / "tb"), MlflowLogger(str(tmp_path / "ml")),
                          CsvLogger(tmp_path / "csv")])
    assert result.status == "completed" and counting.finished["status"] == "completed"
    assert counting.started["hparams"]["width"] == 8 and counting.started["study"] == "live"
    # fed every 50 steps and per epoch, never per step
    assert counting.calls <= result.steps // 50 + 2 * hp.epochs + 2 < result.steps
    stored = store.metrics(result.run_id)
    fed = {}
    for step, _epoch, key, value in counting.rows:
        fed.setdefault(key, []).append((step, float(value)))
    assert {k: [s for s, _ in v] for k, v in fed.items()} == {k: s["step"] for k, s in stored.items()}
    acc = _accumulator(tmp_path / "tb" / "live" / f"run-{result.run_id}-mnist1d-mlp")
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(stored["train/loss"]["value"], rel=1e-6)
    assert [e.step for e in acc.Scalars("val/acc")] == stored["val/acc"]["step"]
    client = mlflow_tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("live").experiment_id])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "lr")) == result.steps


def test_fit_streams_without_a_store(tmp_path):
    from trainlab.config import Config
    from trainlab.train import fit

    counting = Counting()
    result = fit(None, Config(model="mlp", width=8, epochs=1), quiet=True, loggers=[counting])
    assert counting.started["id"] is None and counting.finished["status"] == result.status
    assert sum(1 for r in counting.rows if r[2] == "train/loss") == result.steps


def test_train_log_to_tensorboard_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--set", "model=mlp", "--set", "width=8", "--set", "epochs=1", "--quiet", "--json",
                 "--db", "t.db", "--log-to", "tensorboard:tb", "--log-to", "csv:c"]) == 0
    run = __import__("json").loads(capsys.readouterr().out)["run"]
    acc = _accumulator(tmp_path / "tb" / "no-study" / f"run-{run}-mnist1d-mlp")
    assert len(acc.Scalars("train/loss")) == Store("t.db").run(run)["summary"]["steps"]
    assert (tmp_path / "c" / "runs.csv").read_text().count("\n") == 2


def _tb_rows(folder, key):
    return [(e.step, e.value) for e in _accumulator(folder).Scalars(key)]


def test_a_resumed_stream_shows_each_step_once_after_a_crash(tmp_path):
    """The killed process wrote steps 0..29 (its last checkpoint at 20) and never finished; the resumed one
    writes 20..39. TensorBoard's reader and the CSV file show each step once, the resumed values from 20."""
    from trainlab.export import CsvLogger, TensorBoardLogger

    run = {"id": 7, "name": "r", "study": None, "kind": "train", "hparams": {"lr": 0.1}, "status": "running"}
    first = [TensorBoardLogger(tmp_path / "tb"), CsvLogger(tmp_path / "c")]
    for logger in first:
        logger.start(run)
        logger.log([(s, 1, "train/loss", 1.0) for s in range(30)] + [(9, 1, "val/acc", 0.1), (19, 2, "val/acc", 0.2),
                                                                      (29, 3, "val/acc", 0.3)])
    first[0].close()  # the process died: its file ends where it was
    for logger in (TensorBoardLogger(tmp_path / "tb"), CsvLogger(tmp_path / "c")):
        logger.start({**run, "resume_step": 20})
        logger.log([(s, 3, "train/loss", 2.0) for s in range(20, 40)] + [(29, 3, "val/acc", 0.5), (39, 4, "val/acc", 0.6)])
        logger.finish({**run, "status": "completed", "summary": {"seconds": 3.0}})
    folder = tmp_path / "tb" / "no-study" / "run-7-r"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # the same folder, a second file
    loss = _tb_rows(folder, "train/loss")
    assert loss == [(s, 1.0) for s in range(20)] + [(s, 2.0) for s in range(20, 40)]
    acc = _tb_rows(folder, "val/acc")
    assert [s for s, _ in acc] == [9, 19, 29, 39] and [v for _, v in acc] == pytest.approx([0.1, 0.2, 0.5, 0.6])
    assert _accumulator(folder).Tensors("status")[-1].tensor_proto.string_val[0] == b"completed"
    with open(tmp_path / "c" / "metrics" / "run-7-r.csv", newline="") as f:
        rows = [(int(r["step"]), r["key"], float(r["value"])) for r in csv.DictReader(f)]
    assert [s for s, k, _ in rows if k == "train/loss"] == list(range(40))
    assert [(s, v) for s, k, v in rows if k == "val/acc"] == [(9, 0.1), (19, 0.2), (29, 0.5), (39, 0.6)]


@pytest.fixture
def live_and_lost(store_db, tmp_path):
    """`store_db` plus, in study "st", a run whose process is gone (lost), a failed one, and one running here."""
    import subprocess

    code = ("from trainlab.store import Store; s = Store(%r); r = s.create_run(name='gone', hparams={'lr': 0.5}, "
            "study='st'); s.log_metrics(r, [(i, 1, 'train/loss', 1.0) for i in range(5)])" % store_db)
    subprocess.run([sys.executable, "-c", code], check=True)  # exits without finishing its run
    store = Store(store_db)
    failed = store.create_run(name="err", hparams={"lr": 0.6}, study="st")
    store.log_metrics(failed, [(0, 1, "train/loss", 3.0)])
    store.finish_run(failed, "failed", reason="RuntimeError: boom")
    live = store.create_run(name="live", hparams={"lr": 0.7}, study="st")
    store.log_metrics(live, [(0, 1, "train/loss", 2.0), (1, 1, "train/loss", 1.5)])
    assert [r["status"] for r in store.runs(study="st")][3:] == ["lost", "failed", "running"]
    return store_db


def test_export_of_running_lost_failed_and_pruned_runs(live_and_lost, tmp_path, capsys):
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    db = live_and_lost
    assert main(["export", "tensorboard", "--study", "st", "--db", db, "-o", str(tmp_path / "tb")]) == 0
    err = capsys.readouterr().err
    assert err.strip() == "run 7 still running: exported its rows so far; export again when it ends"
    want = {"2": "pruned: trial pruned at epoch 2", "5": "lost: no heartbeat since", "6": "failed: RuntimeError: boom",
            "7": "running"}
    for run_id, status in want.items():
        folder = next((tmp_path / "tb" / "st").glob(f"run-{run_id}-*"))
        acc = _accumulator(folder)
        assert acc.Tensors("status")[-1].tensor_proto.string_val[0].decode().startswith(status)
        assert [e.step for e in acc.Scalars("train/loss")] == _stored(db, int(run_id))["train/loss"]["step"]
        ended = acc.PluginTagToContent("hparams").get("_hparams_/session_end_info")
        if run_id == "7":
            assert ended is None  # a snapshot: the session has not ended
        else:
            end = plugin_data_pb2.HParamsPluginData.FromString(ended).session_end_info
            assert api_pb2.Status.Name(end.status) == {"2": "STATUS_UNKNOWN", "5": "STATUS_UNKNOWN",
                                                       "6": "STATUS_FAILURE"}[run_id]
    assert main(["export", "csv", "--study", "st", "--db", db, "-o", str(tmp_path / "c"), "--json"]) == 0
    result = capsys.readouterr()
    got = {r["id"]: (r["status"], r["rows"]) for r in __import__("json").loads(result.out)["runs"]}
    assert got == {1: ("completed", 21), 2: ("pruned", 21), 3: ("diverged", 22), 5: ("lost", 5), 6: ("failed", 1),
                   7: ("running", 2)}
    assert "run 7 still running" in result.err


@pytest.mark.slow  # MLflow migrates its SQLite store on first open: several seconds
def test_mlflow_export_of_running_lost_and_failed_runs(live_and_lost, tmp_path):
    db = live_and_lost
    assert main(["export", "mlflow", "5", "6", "7", "--db", db, "-o", str(tmp_path / "ml")]) == 0
    client = mlflow_tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}")
    runs = {r.data.tags["trainlab.run_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name("st").experiment_id])}
    got = {k: (r.info.status, r.data.tags["trainlab.status"], r.info.end_time is not None) for k, r in runs.items()}
    assert got == {"5": ("FAILED", "lost", True), "6": ("FAILED", "failed", True), "7": ("RUNNING", "running", False)}
    assert runs["5"].data.tags["trainlab.reason"].startswith("no heartbeat since")
    assert len(client.get_metric_history(runs["7"].info.run_id, "train/loss")) == 2
