"""Bring your own job: metrics that follow the task (classification, regression, a user metric), through the loop,
the store, `trainlab runs`, the init check and the doctor; the examples through the CLI; exact resume and DDP
sharding on a dataset read by DataLoader workers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainlab.checks import check_init
from trainlab.cli import main
from trainlab.config import Config, ConfigError
from trainlab.doctor.rules import diagnose
from trainlab.metrics import Metric, TaskMetrics, for_task, mae, mse, resolve_metrics, top_k
from trainlab.store import Store
from trainlab.tasks import Task, load_task
from trainlab.train import fit, load_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str) -> str:
    return f"{EXAMPLES / name}.py:build"


# --- metrics, pure ------------------------------------------------------------------------------

def test_builtin_metrics_against_hand_computed_values():
    out = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    y = torch.tensor([1, 1, 0, 2])
    acc, top2 = resolve_metrics("classification", ["acc", "top2"])
    assert acc.fn(out, y).item() == 0.25 and top2.name == "top2"
    assert top2.fn(out, y).item() == 0.75  # 1 in top2 of rows 0, 1; 0 not in row 2's; 2 in row 3's
    assert top_k(5)(out, y).item() == 1.0, "k beyond the classes: every target is in"
    pred, target = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.0, 3.0, 1.0])
    assert mse(pred, target).item() == pytest.approx((0 + 1 + 9) / 3), "(N, 1) against (N,): no broadcasting"
    assert mae(pred, target).item() == pytest.approx((0 + 1 + 3) / 3)
    assert [m.name for m in resolve_metrics("regression", None)] == ["mse", "mae"]


def test_user_metrics_and_their_direction():
    def median_error(o, t):
        return (o.flatten() - t).abs().median()

    (m,) = resolve_metrics("regression", [median_error])
    assert m.name == "median_error" and m.mode == "min"
    (m,) = resolve_metrics("classification", [Metric("recall", lambda o, t: torch.tensor(1.0), "max")])
    assert m.mode == "max"
    with pytest.raises(ConfigError, match=r"^metrics: a metric function needs a name"):
        resolve_metrics("classification", [lambda o, t: 0.0])
    with pytest.raises(ConfigError, match=r"^metrics: unknown metric 'f1'; use acc, topK"):
        resolve_metrics("classification", ["f1"])
    with pytest.raises(ConfigError, match=r"^task: kind must be one of classification, regression, got 'ranking'$"):
        resolve_metrics("ranking", None)
    tm = TaskMetrics("classification", resolve_metrics("classification", ["top5"]))
    hp, why = for_task(Config(), tm)
    assert (hp.early_stop_metric, hp.mode) == ("val/top5", "max") and "does not measure acc" in why
    hp, why = for_task(Config(early_stop_metric="val/loss"), TaskMetrics("regression", ()))
    assert why is None and hp.early_stop_metric == "val/loss", "an explicit metric is kept"
    assert Config(early_stop_metric="val/mae").mode == "min"


# --- regression through the loop, the store and the CLI -----------------------------------------

@pytest.fixture(scope="module")
def sine():
    return load_task(Config(task=_example("regression")))


def test_a_regression_task_measures_its_own_metrics_and_stops_on_val_loss(sine, tmp_path, capsys):
    db = tmp_path / "t.db"
    store = Store(db)
    result = fit(sine, Config(task=_example("regression"), epochs=3, patience=2), store=store,
                 runs_dir=tmp_path / "runs")
    printed = capsys.readouterr().out
    assert "val/acc" not in printed and "test/acc" not in printed
    assert "early stopping and the best checkpoint on val/loss (min): a regression task" in printed
    assert "epoch 1/3  val/mse" in printed and "test/mse" in printed
    assert {"val/mse", "val/mae", "train/mse", "val/loss"} <= set(result.history) and "val/acc" not in result.history
    run = store.run(result.run_id)
    assert run["name"] == "sine-mlp-regressor"
    assert run["hparams"]["early_stop_metric"] == "val/loss" and run["hparams"]["early_stop_mode"] == "min"
    assert run["best_metric"] == min(result.history["val/loss"])
    assert run["summary"]["metrics"]["kind"] == "regression" and "test/mse" in run["summary"]
    assert result.history["val/loss"] == pytest.approx(result.history["val/mse"], rel=1e-5), "the default loss is mse"
    assert result.history["val/mse"][-1] < result.history["val/mse"][0]

    assert main(["runs", "--db", str(db)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "name", "study", "status", "metric", "best", "test_metric", "test", "epochs",
                                "duration_s"]
    assert "val/loss" in table[1] and "test/mse" in table[1]


def test_init_check_compares_a_regression_loss_with_the_target_variance(sine):
    hp = Config(task=_example("regression"))
    r = check_init(sine, hp)
    assert r.verdict == "pass" and "(regression)" in r.message and "target variance" in r.message
    assert r.evidence["target_variance"] == pytest.approx(1.44, abs=0.2)
    shifted = Task(**{**sine.__dict__, "train": torch.utils.data.TensorDataset(sine.train.tensors[0],
                                                                                sine.train.tensors[1] + 10.0)})
    r = check_init(shifted, hp)
    assert r.verdict == "pass" and "standardize them" in r.message, "a mean far from 0 is said"
    big = Task(**{**sine.__dict__, "build_model": lambda: _scaled(sine.build_model(), 30.0)})
    r = check_init(big, hp)
    assert r.verdict == "fail" and "outputs start too large" in r.message


def _scaled(model, factor):
    with torch.no_grad():
        model[-1].weight.mul_(factor)
    return model


def test_the_doctor_judges_a_regression_by_its_loss_curves():
    epochs = list(range(1, 13))
    val = [1.0, 0.6, 0.4, 0.3, 0.28, 0.3, 0.34, 0.38, 0.43, 0.47, 0.52, 0.58]
    train = [1.0, 0.6, 0.4, 0.3, 0.25, 0.2, 0.16, 0.12, 0.1, 0.08, 0.06, 0.05]
    curves = {"val/loss": {"epoch": epochs, "step": epochs, "value": val},
              "train/loss_eval": {"epoch": epochs, "step": epochs, "value": train},
              "val/mse": {"epoch": epochs, "step": epochs, "value": val}}
    names = [f.name for f in diagnose(curves, num_classes=0)]
    assert names == ["overfitting"], "no accuracy rule fires without accuracy; the val/loss rule does"


# --- the examples, through the command line -----------------------------------------------------

def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=400)


EXAMPLES_RUN = [("dict_batches", []), ("regression", []), ("image_folder", ["--set", "num_workers=2"])]


class _Recipes:
    """`trainlab recipe --set task=examples/NAME.py:build EXTRA --budget 0.5` processes, started side by side."""

    def __init__(self, root: Path, examples: dict[str, list[str]]):
        names = sorted(examples)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.cwd = {name: root / name for name in names}
        self.procs = {}
        for name in names:
            self.cwd[name].mkdir()  # the image example writes its pictures where trainlab runs
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "trainlab", "recipe", "--set", f"task={_example(name)}", *examples[name],
                 "--budget", "0.5"], cwd=self.cwd[name], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, start_new_session=True)
        self.outputs: dict[str, tuple[int, str, str]] = {}

    def result(self, name: str) -> tuple[Path, int, str, str]:
        """(its folder, exit status, stdout, stderr), once it has ended."""
        if name not in self.outputs:
            out, err = self.procs[name].communicate(timeout=400)
            self.outputs[name] = (self.procs[name].returncode, out, err)
        return (self.cwd[name], *self.outputs[name])

    def wait_all(self) -> None:
        for name in self.procs:
            self.result(name)

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


@pytest.fixture(scope="module")
def example_recipes(request, tmp_path_factory):
    """The recipe on each example that this session's selected tests ask for, but regression (the session's one
    run of it, tests/conftest.py), all started at once. A recipe fills its budget, but keeps only about one of the
    two cores busy on average (dict_batches alone: 29 s of CPU in 30 s). Side by side, dict_batches and image_folder
    took 34 s and 31 s of wall time (64 s of CPU) instead of 30 + 31 one after the other, and each still ran every
    step, its coarse grid and refine round included. With another job on both cores (load 3) image_folder's refine
    round is skipped for time, side by side or alone; the test asserts what holds either way."""
    wanted = {item.callspec.params["name"]: item.callspec.params["extra"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_examples_train_and_run_the_recipe"}
    wanted.pop("regression", None)
    recipes = _Recipes(tmp_path_factory.mktemp("example-recipes"), wanted)
    yield recipes
    recipes.kill()


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", EXAMPLES_RUN)
def test_examples_train_and_run_the_recipe(tmp_path, name, extra, capsys, monkeypatch, request):
    task = _example(name)
    monkeypatch.chdir(tmp_path)  # the image example writes its pictures where trainlab runs
    assert main(["train", "--set", f"task={task}", "--set", "epochs=2", *extra, "--json"]) == 0
    out = capsys.readouterr()
    trained = json.loads(out.out)
    assert trained["status"] == "completed" and trained["epochs"] == 2 and trained["test"], trained
    assert "val/acc 0.0000" not in out.out + out.err
    recipes = request.getfixturevalue("example_recipes")  # started after this training, not beside it
    if name == "regression":  # the session's one run of this command (tests/conftest.py)
        recipes.wait_all()  # alone: tests/recipe/test_budget.py measures its wall time
        r = request.getfixturevalue("regression_recipe")
        cwd, stdout, stderr = r["cwd"], r["stdout"], r["stderr"]
    else:
        cwd, code, stdout, stderr = recipes.result(name)
        assert code == 0, stdout + stderr
    assert (cwd / "recipe-report" / "index.html").is_file()
    assert "final model: " in stdout + stderr
    assert "val/acc 0.0000" not in stdout + stderr and "test/acc 0.0000" not in stdout + stderr


def test_bad_data_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "bad.py").write_text(
        "import torch\nfrom torch.utils.data import Dataset\nfrom trainlab import Task\n"
        "class D(Dataset):\n    def __len__(self): return 20\n"
        "    def __getitem__(self, i): return {'pixels': torch.zeros(4), 'label': 0}\n"
        "def build(hp):\n    return Task(name='bad', build_model=lambda: torch.nn.Linear(4, 2), num_classes=2,"
        " train=D(), test=D())\n")
    r = _cli("train", "--set", f"task={tmp_path / 'bad.py'}:build", "--db", str(tmp_path / "t.db"), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainlab: error: task 'bad' ("), lines
    assert lines[0].endswith(": the train split's items have no input key among ['input', 'inputs', 'x', "
                             "'pixel_values', 'input_ids', 'image', 'features']; keys present: ['pixels', 'label']; "
                             "set Task(input_key=...)"), lines
    assert Store(tmp_path / "t.db").runs() == []


# --- exact resume on a dataset read by 2 DataLoader workers, with augmentation -------------------

def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _popen(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "trainlab", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact_with_loader_workers_and_augmentation(tmp_path):
    # killed in epoch 3, the resume trains the rest of it and epoch 4: loader workers restarted mid-epoch, then an
    # epoch boundary with new ones. That is the margin too: to end before the SIGSTOP the victim would have to
    # train more than an epoch (0.6 s here) in the poll's 10 ms plus 0.15 s; had it, the check after the SIGSTOP
    # fails, it does not pass.
    epochs = 4
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: {_example('image_folder')}\nepochs: {epochs}\nnum_workers: 2\ndropout: 0.2\nseed: 3\n"
                   "checkpoint_every_minutes: 0.001\nbatch_size: 16\n")
    db, runs = tmp_path / "kill.db", tmp_path / "kill"
    victim = _popen("train", str(cfg), "--db", str(db), "--runs-dir", str(runs), "--quiet", cwd=tmp_path)
    deadline, store = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        if db.exists():
            store = store or Store(db)
            now = store.runs()
            if now and now[0]["epochs"] >= 2:
                break
        time.sleep(0.01)
    time.sleep(0.15)  # into the next epoch, past a mid-epoch checkpoint
    victim.send_signal(signal.SIGSTOP)
    assert store.run(1)["status"] == "running" and store.run(1)["epochs"] < epochs
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    resumed = _popen("train", "--resume", "1", "--db", str(db), "--runs-dir", str(runs), "--quiet", cwd=tmp_path)
    # the uninterrupted reference, alongside the resume (it needs nothing of the kill)
    ref = _popen("train", str(cfg), "--db", str(tmp_path / "ref.db"), "--runs-dir", str(tmp_path / "ref"), "--quiet",
                 cwd=tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out
    ref_store = Store(tmp_path / "ref.db")
    assert store.run(1)["status"] == "completed"
    a, b = load_checkpoint(tmp_path / "ref" / "run-1" / "last.pt"), load_checkpoint(runs / "run-1" / "last.pt")
    assert _states_equal(a["model"], b["model"]), "the resumed run's weights equal the uninterrupted run's"
    got, want = store.metrics(1, ["train/loss"]), ref_store.metrics(1, ["train/loss"])
    assert got["train/loss"]["value"] == want["train/loss"]["value"]
    assert not math.isnan(store.run(1)["best_metric"])


def test_the_dashboard_shows_a_regression_study_by_its_metric(sine, tmp_path):
    from starlette.testclient import TestClient

    from trainlab.dashboard.app import create_app

    store = Store(tmp_path / "d.db")
    for lr in (1e-3, 3e-3):
        fit(sine, Config(task=_example("regression"), epochs=2, lr=lr), store=store, study="reg", quiet=True,
            checkpoints=False)
    with TestClient(create_app(tmp_path / "d.db", ["testserver"])) as client:
        key = next(s["key"] for s in client.get("/api/studies").json()["studies"] if s["name"] == "reg")
        data = client.get(f"/api/studies/{key}").json()
    assert data["metric"] == "val/loss" and data["val_key"] == "val/mse" and data["test_key"] == "test/mse"
    for run in data["runs"]:
        assert run["val"] is not None and len(run["val"]["x"]) == 2, "the small chart draws val/mse per epoch"


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.x, self.y = ds.tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": self.y[i]}


def _dict_task(hp):
    mem = load_task(hp)
    return Task(name="dicts", build_model=mem.build_model, num_classes=10, train=_Dicts(mem.train),
                val=_Dicts(mem.val), test=_Dicts(mem.test))


def _fit_dicts_rank(dist, hp):
    r = fit(_dict_task(hp), hp, quiet=True, dist=dist, checkpoints=False)
    return {"model": r.model.state_dict(), "history": r.history}


@pytest.mark.slow
def test_ddp_shards_a_dataset_read_by_a_dataloader_exactly(tmp_path):
    from parallel.test_ddp import EXACT, STEPS, _max_diff, run_ranks

    hp2 = Config(**EXACT, batch_size=16, steps=STEPS)
    ranks = run_ranks(_fit_dicts_rank, hp2, tmp_path=tmp_path)
    one = fit(load_task(Config(**EXACT)), Config(**EXACT, batch_size=32, steps=STEPS), quiet=True, checkpoints=False)
    assert _max_diff(ranks[0]["model"], ranks[1]["model"]) == 0
    assert _max_diff(ranks[0]["model"], one.model.state_dict()) < 1e-5, "2 x 16 from the DataLoader = 32 in memory"
    assert ranks[0]["history"]["val/acc"] == pytest.approx(one.history["val/acc"], abs=1e-6)


def test_a_search_over_a_regression_task_minimizes_its_loss():
    from trainlab.search.runner import _task_metric

    hp = _task_metric(Config(task=_example("regression")))
    assert (hp.early_stop_metric, hp.mode) == ("val/loss", "min")
    assert _task_metric(Config()).early_stop_metric == "val/acc", "built-in tasks are classifiers"


def test_the_ema_is_validated_on_the_tasks_metrics(sine):
    r = fit(sine, Config(task=_example("regression"), epochs=2, ema=0.9, ema_warmup=True), quiet=True,
            checkpoints=False)
    assert {"val/mse_ema", "val/mae_ema", "val/loss_ema"} <= set(r.history) and "val/acc_ema" not in r.history
