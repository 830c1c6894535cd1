"""A regression task, and a task with a user metric, through every command that used to assume a classifier judged
by accuracy: the recipe's ranking, decay and report, `trainlab plot`, `trainlab runs`, search reports, transfer, and
the options only a classifier can honour (label smoothing, top-k)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainlab.cli import main
from trainlab.config import Config, ConfigError
from trainlab.doctor.judged import run_metric
from trainlab.metrics import Metric, resolve_metrics
from trainlab.recipe.final_plan import stall_epoch
from trainlab.recipe.plan import rank_candidates, rank_coarse
from trainlab.store import Store
from trainlab.tasks import Task, load_task
from trainlab.train import fit

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SINE = f"{EXAMPLES / 'regression.py'}:build"


@pytest.fixture(scope="module")
def sine():
    return load_task(Config(task=SINE))


def _figures(monkeypatch, module):
    """Capture the matplotlib figures `module` saves: [(figure, path)], checked before they are closed."""
    seen = []
    real = module._save

    def save(fig, path):
        seen.append({"axes": [{"xlabel": a.get_xlabel(), "ylabel": a.get_ylabel(), "title": a.get_title(),
                               "yscale": a.get_yscale(),
                               "lines": {ln.get_label(): list(ln.get_ydata()) for ln in a.get_lines()}}
                              for a in fig.axes], "path": Path(path)})
        return real(fig, path)

    monkeypatch.setattr(module, "_save", save)
    return seen


# --- the recipe's choices follow the metric's direction (pure) -----------------------------------

def test_the_recipe_ranks_by_the_metrics_direction():
    rows = [{"lr": 1, "value": 0.60, "epochs": 3}, {"lr": 2, "value": 0.46, "epochs": 3},
            {"lr": 3, "value": 0.30, "epochs": 1}]   # lr 3 was stopped early: ranked after the full ones
    assert [r["lr"] for r in rank_coarse(rows, 3, "min")] == [2, 1, 3], "a loss: lowest first"
    assert [r["lr"] for r in rank_coarse(rows, 3)] == [1, 2, 3], "accuracy: highest first (the default)"
    board = [{"params": {"lr": lr, "weight_decay": 0.0, "split_seed": f}, "value": v, "run": i, "status": "completed"}
             for i, (lr, f, v) in enumerate([(1, 0, 0.5), (1, 1, 0.6), (2, 0, 0.4), (2, 1, 0.45)])]
    ranked, n = rank_candidates(board, {"width": None}, "min")
    assert n == 2 and ranked[0]["point"]["lr"] == 2 and ranked[0]["mean"] == pytest.approx(0.425)
    assert rank_candidates(board, {"width": None})[0][0]["point"]["lr"] == 1
    falling = [1.0, 0.5, 0.4, 0.39, 0.39, 0.38, 0.39, 0.38]
    assert stall_epoch(falling, mode="min") == 4, "a loss stalls when it stops falling"
    assert stall_epoch(falling) is None, "read as an accuracy it never gained"
    with pytest.raises(ValueError, match="mode must be 'max' or 'min', but got mode='up'"):
        rank_coarse(rows, 3, "up")


# --- trainlab plot ------------------------------------------------------------------------------

def test_plot_draws_a_regressions_metric_and_a_classifiers_accuracy(sine, tmp_path, monkeypatch, capsys):
    import trainlab.figures as figures

    db = tmp_path / "p.db"
    store = Store(db)
    reg = fit(sine, Config(task=SINE, epochs=2), store=store, quiet=True, checkpoints=False)
    clf = fit(None, Config(task="digits", model="mlp", epochs=2), store=store, quiet=True, checkpoints=False)
    seen = _figures(monkeypatch, figures)
    for run_id in (reg.run_id, clf.run_id):
        out = tmp_path / f"run{run_id}.png"
        assert main(["plot", str(run_id), "--db", str(db), "--out", str(out)]) == 0
        assert out.stat().st_size > 5000
    capsys.readouterr()
    reg_ax, clf_ax = seen[0]["axes"][1], seen[1]["axes"][1]
    assert reg_ax["ylabel"] == "mse" and "lower is better" in reg_ax["title"]
    assert set(reg_ax["lines"]) == {"train/mse", "val/mse"} and len(reg_ax["lines"]["val/mse"]) == 2
    assert reg_ax["lines"]["val/mse"] == pytest.approx(reg.history["val/mse"])
    assert clf_ax["ylabel"] == "accuracy" and set(clf_ax["lines"]) == {"train/acc", "val/acc"}
    assert "higher is better" in clf_ax["title"]


def test_a_user_metric_is_what_the_run_is_judged_and_drawn_by(sine, tmp_path, monkeypatch):
    import trainlab.figures as figures

    def within(o, t):   # share of predictions within 0.5 of the target: higher is better
        return ((o.reshape(t.shape) - t).abs() < 0.5).float().mean()

    task = Task(**{**sine.__dict__, "metrics": [Metric("within", within, "max"), "mae"]})
    store = Store(tmp_path / "u.db")
    r = fit(task, Config(task=SINE, epochs=2), store=store, quiet=True, checkpoints=False)
    judged = run_metric(store.run(r.run_id))
    assert (judged.kind, judged.headline, judged.headline_mode) == ("regression", "within", "max")
    assert (judged.metric, judged.mode) == ("val/loss", "min"), "a regression stops on its loss unless told"
    seen = _figures(monkeypatch, figures)
    figures.plot_run(store, r.run_id, tmp_path / "u.png")
    ax = seen[0]["axes"][1]
    assert ax["ylabel"] == "within" and set(ax["lines"]) == {"train/within", "val/within"}
    assert "higher is better" in ax["title"]


# --- options only a classifier can honour: one line, exit 2, nothing stored ----------------------

@pytest.mark.parametrize("override,message", [
    ("label_smoothing=0.1", "label_smoothing: smooths the class targets of a classification loss; task 'sine' is a "
                            "regression task (set label_smoothing to 0), got 0.1"),
    ("early_stop_metric=val/top5", "early_stop_metric: task 'sine' (regression) does not measure top5; it measures "
                                   "loss, mae, mse, got 'val/top5'"),
    ("early_stop_metric=val/acc_ema", None),   # the EMA's accuracy becomes the task's val/loss_ema: fine
])
def test_classification_options_on_a_regression(tmp_path, capsys, override, message):
    db = tmp_path / "t.db"
    args = ["train", "--set", f"task={SINE}", "--set", "epochs=1", "--set", override, "--db", str(db), "--quiet",
            "--runs-dir", str(tmp_path / "runs")]
    if "ema" in override:
        args += ["--set", "ema=0.9"]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    if message is None:
        assert code == 0, err
        run = Store(db).runs()[0]
        assert run["hparams"]["early_stop_metric"] == "val/loss_ema" and run["status"] == "completed"
        return
    assert code == 2 and err == [f"trainlab: error: {message}"]
    assert not db.exists() or Store(db).runs() == []


def test_classification_metrics_and_smoothing_need_a_classifier(sine):
    with pytest.raises(ConfigError, match=r"^metrics: 'top5' measures a classifier \(predicted classes\); a "
                                          r"regression task measures mse, mae or a metric function, got 'top5'$"):
        resolve_metrics("regression", ["mse", "top5"])
    with pytest.raises(ConfigError, match=r"^metrics: 'acc' measures a classifier"):
        load_task_with(sine, metrics=["acc"])
    digits = load_task(Config(task="digits", model="mlp"))

    def plain_nll(out, y):   # a classification loss with no label_smoothing argument
        return torch.nn.functional.cross_entropy(out, y)

    with pytest.raises(ConfigError, match=r"^label_smoothing: task 'digits''s loss plain_nll takes no label_smoothing "
                                          r"argument \(set label_smoothing to 0, or give the loss one\), got 0.2$"):
        fit(Task(**{**digits.__dict__, "loss": plain_nll}), Config(task="digits", label_smoothing=0.2, epochs=1),
            quiet=True, checkpoints=False)
    with pytest.raises(ConfigError, match=r"^early_stop_metric: task 'digits' \(classification\) does not measure mse; "
                                          r"it measures loss, acc, got 'val/mse'$"):
        fit(digits, Config(task="digits", early_stop_metric="val/mse", epochs=1), quiet=True, checkpoints=False)


def load_task_with(task: Task, **changes) -> Task:
    t = Task(**{**task.__dict__, **changes})
    return t.task_metrics and t


# --- the recipe on a regression, through the command line ----------------------------------------

@pytest.fixture
def recipe(regression_recipe):
    """`trainlab recipe --budget 0.5` on the sine regression: the session's one run (tests/conftest.py), which
    tests/test_own_job.py reads too."""
    return regression_recipe


@pytest.mark.slow
def test_a_regression_recipe_chooses_and_reports_by_its_loss(recipe, monkeypatch):
    import trainlab.recipe.report as report
    import trainlab.recipe.report_figures as report_figures

    cwd, result = recipe["cwd"], recipe["result"]
    assert result["study"] == "recipe-regression-mlp-regressor", "named after the task's own model, not hp.model"
    steps = {s["key"]: s for s in result["steps"]}
    coarse = steps["coarse"]["evidence"]
    assert (coarse["metric"], coarse["mode"]) == ("val/loss", "min")
    done = [r["value"] for r in coarse["rows"] if r["value"] is not None and r["epochs"] == coarse["epochs"]]
    assert coarse["best"]["value"] == min(done), "the coarse grid keeps the lowest val/loss, not the highest"
    refine = steps["refine-1"]["evidence"]
    means = [c["mean"] for c in refine["candidates"] if c["complete"]]
    assert refine["best"]["mean"] == min(means)
    final = result["final"]
    assert final["metric"] == "val/loss" and final["test_metric"] == "test/mse"
    assert final["config"]["early_stop_metric"] == "val/loss" and final["config"]["early_stop_mode"] == "min"

    page = (cwd / "recipe-report" / "index.html").read_text()
    assert f"test/mse {final['test_acc']:.4f} &middot; val/loss {final['val_acc']:.4f}" in page
    assert "accuracy" not in page.lower().replace("learning-rate", ""), "nothing on the page calls mse an accuracy"
    members = [f"final_fold{m['fold']}.png" for m in final["members"] if m.get("run") is not None]
    assert members, final["members"]
    for name in ("overfit.png", "coarse_grid.png", "cv_1.png", "refine_1.png", *members):
        assert (cwd / "recipe-report" / name).stat().st_size > 5000, name

    # the figures, redrawn from the recipe's store, name and draw the regression's metric
    seen = _figures(monkeypatch, report_figures)
    store = Store(cwd / "trainlab.db")
    report.write_report(store, result["study"], cwd / "again")
    by_name = {f["path"].name: f["axes"] for f in seen}
    assert "best val/loss (lower is better)" in by_name["coarse_grid.png"][0]["title"]
    assert by_name["cv_1.png"][0]["ylabel"] == "best val/loss"
    refine_axes = by_name["refine_1.png"]
    assert any(set(a["lines"]) == {"val/mse", "train/mse"} and a["ylabel"] == "mse" for a in refine_axes)
    overfit = by_name["overfit.png"][1]
    assert "val/loss" in overfit["ylabel"] and any(k.startswith("target") for k in overfit["lines"])
    assert all(len(v) for a in refine_axes for v in a["lines"].values())


@pytest.mark.slow
def test_runs_and_search_reports_of_a_regression_name_its_metric(recipe, capsys):
    cwd, study = recipe["cwd"], recipe["result"]["study"]
    db = str(cwd / "trainlab.db")
    # the final's members; on a loaded machine where none finished an epoch in the time left, the one
    # member the recipe then trains for an epoch past the deadline (its study "<study>/final-least")
    for final in (f"{study}/final", f"{study}/final-least"):
        assert main(["runs", "--db", db, "--study", final]) == 0
        lines = capsys.readouterr().out.splitlines()
        if lines:
            break
    assert lines[0].split()[4:8] == ["metric", "best", "test_metric", "test"]
    assert all("val/loss" in line and "test/mse" in line for line in lines[1:]) and len(lines) >= 2
    assert main(["search", "report", f"{study}/coarse", "--db", db, "--out", str(cwd / "sr")]) == 0
    capsys.readouterr()
    page = (cwd / "sr" / "index.html").read_text()
    assert "metric val/loss (lower is better)" in page


# --- transfer: a regression source and target, and a classifier's head onto a regression ---------

CLASSES_FROM_SINE = """
import torch
from torch.utils.data import TensorDataset
from trainlab import Task
import importlib.util
spec = importlib.util.spec_from_file_location("sine_example", {path!r})
sine = importlib.util.module_from_spec(spec); spec.loader.exec_module(sine)

def build(hp):   # the sine features, classified by the sign of y: a classifier target for a regression source
    reg = sine.build_small(hp)
    def classes(ds):
        x, y = ds.tensors
        return TensorDataset(x, (y > 0).long())
    return Task(name="sine-sign", build_model=reg.build_model, train=classes(reg.train), test=classes(reg.test),
                num_classes=2)
"""


def test_transfer_from_a_regression_run_compares_by_its_loss(tmp_path, capsys):
    db, runs = str(tmp_path / "t.db"), str(tmp_path / "runs")
    common = ["--db", db, "--runs-dir", runs]
    assert main(["train", "--set", f"task={SINE}", "--set", "epochs=2", "--quiet", *common]) == 0
    assert "best val/loss" in capsys.readouterr().out and True
    small = f"{EXAMPLES / 'regression.py'}:build_small"
    assert main(["transfer", "compare", "--source", "1", "--target", small, "--strategies", "linear,probe,finetune:1,scratch",
                 "--set", "epochs=2", "--quiet", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["strategy", "val/loss", "test/mse"]
    values = {ln.split()[0]: (float(ln.split()[1]), float(ln.split()[2])) for ln in lines[1:]}
    assert set(values) == {"linear", "probe", "finetune:1", "scratch"}
    assert all(0 < v < 10 and 0 < t < 10 for v, t in values.values()), values
    store = Store(db)
    for run in store.runs(study="transfer-run1-sine-small"):
        assert run["hparams"]["early_stop_metric"] == "val/loss" and run["summary"]["metrics"]["kind"] == "regression"
    probes = [r for r in store.runs(study="transfer-run1-sine-small") if r["name"].startswith("probe:")]
    best_probe = min(probes, key=lambda r: r["best_metric"])
    assert values["probe"][0] == pytest.approx(best_probe["best_metric"], abs=1e-4), "the lowest val/loss wins"

    # a regression backbone under a classifier's head: the head is replaced (1 output -> 2 classes)
    (tmp_path / "sign.py").write_text(CLASSES_FROM_SINE.format(path=str(EXAMPLES / "regression.py")))
    assert main(["transfer", "run", "--source", "1", "--target", f"{tmp_path / 'sign.py'}:build", "--strategy",
                 "finetune:1", "--set", "epochs=2", "--json", *common]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["metric"], row["test_metric"]) == ("val/acc", "test/acc") and 0.3 <= row["test_acc"] <= 1.0

    # the advisor's table is a classifier's: one line, exit 2, nothing trained
    before = len(store.runs())
    assert main(["transfer", "advise", "--source", "1", "--target", small, *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["trainlab: error: transfer advise: the advisor's table is measured on classifiers (examples per "
                   "class, linear-classifier probes); task 'sine-small' is a regression task: compare the strategies "
                   "instead (transfer compare)"]
    assert len(store.runs()) == before


def test_an_overfit_check_cut_short_on_a_regression_speaks_of_its_loss(sine):
    """Stopped before it memorized (the recipe's cap can do that), a regression's overfit check says how far
    its loss got against the memorized level: there is no accuracy to speak of."""
    from trainlab.checks import check_overfit

    r = check_overfit(sine, Config(task=SINE, lr=0.003), max_steps=10)
    assert r.verdict == "fail" and r.evidence["cause"] in ("too slow", "loss not going down")
    assert "accuracy" not in r.message, r.message
    assert f"{r.evidence['target_loss']:.3g}" in r.message
