"""Hyperparameter search end to end: real fits (tiny mlp on mnist1d), real SQLite files, real worker
processes, a real SIGKILL and a real PostgreSQL server."""

import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import helpers
from helpers import as_set
from search_hammer import hammer

from trainlab.cli import main
from trainlab.config import Config, ConfigError
from trainlab.search import PruningCallback, run_search
from trainlab.search.leaderboard import budget_used
from trainlab.search.optuna_glue import OnStaleTrial, make_sampler
from trainlab.search.storage import load_study, open_storage
from trainlab.search.space import parse_space
from trainlab.store import Store

TrialState = optuna.trial.TrialState
TRAINLAB = str(Path(sys.executable).with_name("trainlab"))
TINY = as_set(dict(helpers.TINY, width=16))


def tiny(**kw) -> Config:
    """An mlp that trains an epoch of mnist1d in a fraction of a second."""
    return helpers.tiny(**{"width": 16, "epochs": 2, **kw})


GRID4 = {"lr": "grid(1e-2, 3e-2)", "weight_decay": "grid(0, 1e-4)"}
GRID6 = {"lr": "grid(3e-3, 1e-2, 3e-2)", "weight_decay": "grid(0, 1e-4)"}


def _points(rows):
    return [tuple(sorted(r["params"].items())) for r in rows]


# ------------------------------------------------------------------------- grid and resume


def test_grid_covers_every_point_once_and_rerunning_resumes(tmp_path):
    db = str(tmp_path / "s.db")
    kw = dict(strategy="grid", db=db, runs_dir=str(tmp_path / "runs"), quiet=True)
    first = run_search(tiny(), GRID4, trials=2, **kw)
    assert len(first.leaderboard) == 2 and first.complete
    assert len(set(_points(first.leaderboard))) == 2

    again = run_search(tiny(), GRID4, trials=4, **kw)  # the same search with a bigger budget: same study
    assert again.study == first.study
    assert again.trials == 4 and again.complete
    points = _points(again.leaderboard)
    assert len(points) == 4 and len(set(points)) == 4  # every point, none twice
    assert set(points) == {(("lr", lr), ("weight_decay", wd)) for lr in (1e-2, 3e-2) for wd in (0, 1e-4)}

    store = Store(db)
    runs = store.runs(study=first.study)
    assert sorted(r["name"] for r in runs) == [f"trial-{i}" for i in range(4)]
    assert all(r["status"] == "completed" and r["epochs"] == 2 for r in runs)
    for row in again.leaderboard:  # each run trained with its trial's hyperparameters
        hp = store.run(row["run"])["hparams"]
        assert hp["lr"] == row["params"]["lr"] and hp["weight_decay"] == row["params"]["weight_decay"]
        assert store.metrics(row["run"], ["val/acc"])["val/acc"]["epoch"] == [1, 2]  # full curves
    ranked = [r["value"] for r in again.leaderboard]
    assert ranked == sorted(ranked, reverse=True) and again.best == again.leaderboard[0]
    assert again.best_hparams["lr"] == again.best["params"]["lr"] and again.best_hparams["model"] == "mlp"

    third = run_search(tiny(), GRID4, trials=4, **kw)  # re-running the finished search adds nothing
    assert third.complete and len(store.runs(study=first.study)) == 4
    fourth = run_search(tiny(), GRID4, trials=50, **kw)  # a grid never repeats a point: capped at 4
    assert fourth.trials == 4 and len(store.runs(study=first.study)) == 4
    assert len(load_study(first.study, db).get_trials()) == 4

    with pytest.raises(ConfigError, match=rf"^study: '{first.study}' was created with another strategy "
                                          r"\('grid' then, 'random' now\)"):
        run_search(tiny(), GRID4, strategy="random", study=first.study, db=db, quiet=True)


# ------------------------------------------------------------------- samplers (no training)


SPACE = {"lr": "loguniform(1e-5, 1e-1)", "dropout": "uniform(0.1, 0.3)", "width": "int(8, 512, log)",
         "batch_size": "int(16, 64)", "optimizer": "choice(adam, sgd, momentum)"}


def _draw(strategy: str, n: int, seed: int = 0):
    """n trials through ask/tell with the search's own sampler and space; the value peaks at lr = 1e-2."""
    space = parse_space(SPACE)
    study = optuna.create_study(direction="maximize")
    drawn = []
    for i in range(n):
        study.sampler = make_sampler(strategy, space, seed, i, n)
        trial = study.ask()
        params = space.suggest(trial)
        study.tell(trial, -abs(math.log10(params["lr"]) + 2))
        drawn.append(params)
    return drawn


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_random_and_tpe_draw_within_bounds(strategy):
    drawn = _draw(strategy, 120 if strategy == "random" else 40)
    for p in drawn:
        assert 1e-5 <= p["lr"] <= 1e-1
        assert 0.1 <= p["dropout"] <= 0.3
        assert isinstance(p["width"], int) and 8 <= p["width"] <= 512
        assert isinstance(p["batch_size"], int) and 16 <= p["batch_size"] <= 64
        assert p["optimizer"] in ("adam", "sgd", "momentum")
        Config(**p)  # every draw is a valid config


def test_random_is_log_uniform_where_asked_and_uniform_elsewhere():
    drawn = _draw("random", 300)
    below = lambda key, x: sum(p[key] < x for p in drawn) / len(drawn)  # noqa: E731
    # Log-uniform: half the draws below the geometric midpoint (a uniform draw would put 1% there).
    assert 0.4 < below("lr", 1e-3) < 0.6
    assert 0.4 < below("width", 64) < 0.6
    assert 0.4 < below("dropout", 0.2) < 0.6  # uniform: half below the arithmetic midpoint
    assert below("lr", 1e-4) > 0.15  # every decade gets its share


def test_random_seeding_is_per_trial_reproducible_and_never_repeats():
    a, b, c = _draw("random", 20, seed=3), _draw("random", 20, seed=3), _draw("random", 20, seed=4)
    assert a == b  # the same seed: the same search
    assert a != c
    assert len({p["lr"] for p in a}) == 20  # trial n and trial n+1 are seeded differently


def test_tpe_concentrates_where_the_value_is_high():
    drawn = _draw("tpe", 40)
    distance = [abs(math.log10(p["lr"]) + 2) for p in drawn]
    startup, late = distance[:10], distance[-15:]
    assert sorted(late)[len(late) // 2] < sorted(startup)[len(startup) // 2]


# ------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("pruner", [optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
                                    optuna.pruners.MedianPruner(n_startup_trials=3)], ids=["sha", "median"])
def test_pruning_callback_stops_a_bad_run_as_pruned(tmp_path, pruner):
    from trainlab.tasks import load_task
    from trainlab.train import fit

    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(3):  # three earlier trials that reached 0.9 at every epoch: hand-picked numbers
        t = study.ask()
        for epoch in (1, 2, 3):
            t.report(0.9, epoch)
            assert not t.should_prune()  # as PruningCallback does: SHA records its rungs here
        study.tell(t, 0.9)
    trial = study.ask()
    hp = tiny(epochs=3, lr=1e-7)  # learns nothing: chance accuracy after one epoch
    store = Store(tmp_path / "s.db")
    result = fit(load_task(hp), hp, store=store, callbacks=[PruningCallback(trial, "val/acc")], quiet=True,
                 evaluate_test=False, checkpoints=False)
    assert result.status == "pruned" and result.epochs == 1
    assert result.reason.startswith("pruned at epoch 1: val/acc 0.")
    run = store.run(result.run_id)
    assert run["status"] == "pruned" and run["epochs"] == 1
    assert list(study.trials[-1].intermediate_values) == [1]


def test_search_with_successive_halving_records_pruned_runs(tmp_path):
    db = str(tmp_path / "s.db")
    result = run_search(tiny(epochs=3), {"lr": "loguniform(1e-6, 1e-1)"}, strategy="random", prune="sha",
                        trials=6, seed=1, db=db, checkpoints=False, quiet=True)
    assert result.complete and len(result.leaderboard) == 6
    pruned = [r for r in result.leaderboard if r["status"] == "pruned"]
    completed = [r for r in result.leaderboard if r["status"] == "completed"]
    assert pruned and completed
    study = load_study(result.study, db)
    states = {t.number: t.state for t in study.trials}
    store = Store(db)
    for r in pruned:
        assert states[r["trial"]] == TrialState.PRUNED
        assert r["epochs"] < 3 and store.run(r["run"])["reason"].startswith("pruned at epoch")
    for r in completed:
        assert states[r["trial"]] == TrialState.COMPLETE and r["epochs"] == 3


def test_diverged_trial_is_recorded_and_the_study_goes_on(tmp_path):
    db = str(tmp_path / "s.db")
    result = run_search(tiny(optimizer="sgd", momentum=0.0), {"lr": "grid(0.05, 1000.0)"}, strategy="grid",
                        db=db, checkpoints=False, quiet=True)
    by_lr = {r["params"]["lr"]: r for r in result.leaderboard}
    assert by_lr[1000.0]["status"] == "diverged" and "lr" in by_lr[1000.0]["reason"]
    assert by_lr[0.05]["status"] == "completed"
    assert result.complete and result.best["params"]["lr"] == 0.05
    trial = next(t for t in load_study(result.study, db).trials if t.params["lr"] == 1000.0)
    assert trial.state == TrialState.PRUNED and trial.user_attrs["status"] == "diverged"
    assert Store(db).run(by_lr[1000.0]["run"])["status"] == "diverged"


# -------------------------------------------------------------------- worker processes


@pytest.mark.slow
def test_sqlite_storage_takes_many_writing_processes_without_lock_errors(tmp_path):
    """Optuna advises against SQLite for parallel studies ("database is locked"); with WAL, a busy timeout
    and BEGIN IMMEDIATE (open_storage) three processes hammering one file lose nothing."""
    db = str(tmp_path / "s.db")
    optuna.create_study(study_name="hammer", storage=open_storage(db))
    Store(db).close()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=hammer, args=(db, "hammer", 12, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * 3
    trials = load_study("hammer", db).trials
    assert len(trials) == 36 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(36))
    assert len(Store(db).runs(study="hammer", status="completed")) == 36


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_stale_trial_is_retried_once_then_counts_against_the_budget(tmp_path):
    """Optuna's heartbeat with ask/tell: a trial silent for the grace period is failed and retried once;
    the retry takes its place in the budget; a retry that goes stale again is not retried."""
    db = str(tmp_path / "s.db")
    store = Store(db)
    storage = open_storage(db, heartbeat_s=1, grace_s=1, on_stale=OnStaleTrial(store, grace_s=1))
    study = optuna.create_study(study_name="stale", storage=storage)
    first = study.ask()
    first.suggest_float("x", 0, 1)
    storage.record_heartbeat(first._trial_id)
    store.create_run(name="trial-0", hparams={}, study="stale")
    _fail_once_stale(study)  # no heartbeat: the worker "died"
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["retry_history"] == [0]
    assert budget_used(trials) == 1  # the retry replaces the lost trial
    assert store.runs(study="stale")[0]["status"] == "failed"
    assert store.runs(study="stale")[0]["reason"].startswith("worker lost: no heartbeat for 1 s (trial 0); retried")

    retry = study.ask()  # pops the waiting retry
    assert retry.number == 1 and retry.params == first.params
    storage.record_heartbeat(retry._trial_id)
    _fail_once_stale(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]  # max_retry=1: no third try
    assert budget_used(trials) == 1


def _fail_once_stale(study) -> None:
    """Optuna's `fail_stale_trials`, as a worker calls it, until it has failed one more trial: one silent for
    the grace period (a fixed sleep would have to allow for the heartbeat's rounding and a loaded machine)."""
    def failed():
        return sum(t.state == TrialState.FAIL for t in study.get_trials())

    before = failed()
    _wait_for(lambda: optuna.storages.fail_stale_trials(study) or failed() > before, 30, "a stale trial failed")


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_two_worker_processes_one_sigkilled_mid_trial_finish_exactly_the_trials(tmp_path, capfd):
    """--workers 2 on one SQLite file: two real processes, no lock errors. One is SIGKILLed in the middle of
    a trial: the other finds the trial stale by its heartbeat, fails it (and its run), retries it once, and
    the study ends with every grid point completed exactly once."""
    db = str(tmp_path / "s.db")
    killed = {}

    def victim():
        try:
            store = Store(db)
            running = [r for r in store.runs(study="kill", status="running") if r["epochs"] >= 1]
            if not running:
                return None
            number = int(running[0]["name"].split("-")[1])
            trial = next(t for t in load_study("kill", db).get_trials() if t.number == number)
            return running[0]["name"], int(trial.user_attrs["worker"].rsplit(":", 1)[1])
        except Exception:  # the study or the store is not there yet
            return None

    def kill_one_worker():
        end = time.monotonic() + 300
        while time.monotonic() < end:
            name, pid = _wait_for(victim, 300, "a worker one epoch into a trial")
            assert pid != os.getpid()
            os.kill(pid, signal.SIGSTOP)  # frozen, then killed only if its trial is still under way
            if any(r["name"] == name for r in Store(db).runs(study="kill", status="running")):
                os.kill(pid, signal.SIGKILL)  # mid-trial: no chance to tell Optuna or the store
                killed.update(name=name, pid=pid)
                return
            os.kill(pid, signal.SIGCONT)  # the trial ended meanwhile: try the next one

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    result = run_search(tiny(epochs=3, batch_size=64), GRID6, strategy="grid", study="kill", workers=2, db=db,
                        heartbeat_s=2, runs_dir=str(tmp_path / "runs"))
    killer.join(timeout=10)
    err = capfd.readouterr().err
    assert killed, "the killer thread found no trial to kill"
    assert "database is locked" not in err
    assert sorted(result.worker_exitcodes) == [-signal.SIGKILL, 0]
    assert f"killed by signal {signal.SIGKILL}" in err

    trials = load_study("kill", db).get_trials()
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert [f"trial-{t.number}" for t in lost] == [killed["name"]]
    retry = next(t for t in trials if t.system_attrs.get("retry_history") == [lost[0].number])
    assert retry.state == TrialState.COMPLETE and retry.params == lost[0].params
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    points = [(t.params["lr"], t.params["weight_decay"]) for t in completed]
    assert len(points) == 6 and len(set(points)) == 6  # exactly the requested trials, each grid point once
    assert len(trials) == 7
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # two real processes

    runs = {r["name"]: r for r in Store(db).runs(study="kill")}
    assert runs[killed["name"]]["status"] == "failed"
    assert runs[killed["name"]]["reason"].startswith("worker lost: no heartbeat for 6 s")
    assert sum(r["status"] == "completed" for r in runs.values()) == 6
    rows = {r["trial"]: r for r in result.leaderboard}
    assert rows[lost[0].number]["status"] == "lost" and rows[retry.number]["retry_of"] == lost[0].number
    assert result.complete and result.counts == {"completed": 6, "lost": 1}

    again = run_search(tiny(epochs=3, batch_size=64), GRID6, strategy="grid", study="kill", db=db, quiet=True,
                       runs_dir=str(tmp_path / "runs"))  # re-running the same search: nothing left to do
    assert again.complete and len(load_study("kill", db).get_trials()) == 7


@pytest.mark.slow
def test_postgresql_two_workers_share_one_study(tmp_path, pg_url, capsys):  # noqa: F811
    space = tmp_path / "space.yaml"
    space.write_text("lr: grid(3e-3, 1e-2, 3e-2)\nweight_decay: grid(0, 1e-4)\n")
    cmd = [TRAINLAB, "search", "--space", str(space), "--strategy", "grid", "--study", "shared", "--storage", pg_url,
           "--epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--quiet", *TINY, "--set", "batch_size=64"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    trials = load_study("shared", pg_url).trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    points = [(t.params["lr"], t.params["weight_decay"]) for t in trials]
    assert len(set(points)) == 6  # exactly the requested trials, none twice
    runs = Store(pg_url).runs(study="shared")
    assert len(runs) == 6 and len({r["name"] for r in runs}) == 6
    assert all(r["status"] == "completed" for r in runs)
    # A third joins by name alone (in this process), with the study's own settings: nothing is left to do.
    capsys.readouterr()
    assert main(["search", "--study", "shared", "--storage", pg_url, "--json", "--quiet"]) == 0
    assert len(json.loads(capsys.readouterr().out)["leaderboard"]) == 6
    assert len(load_study("shared", pg_url).trials) == 6


# ------------------------------------------------------------------------- CLI and report


@pytest.mark.slow
def test_cli_search_json_then_report(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: loguniform(1e-3, 1e-1)\nwidth: int(8, 32, log)\noptimizer: choice(adam, sgd)\n")
    db = str(tmp_path / "s.db")
    code = main(["search", "--space", str(space), "--strategy", "tpe", "--prune", "hyperband", "--trials", "4",
                 "--db", db, "--runs-dir", str(tmp_path / "runs"), "--json", "--quiet", "--epochs", "2", *TINY])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert result["strategy"] == "tpe" and result["prune"] == "hyperband" and len(result["leaderboard"]) == 4
    assert [r["rank"] for r in result["leaderboard"]] == [1, 2, 3, 4]
    assert set(result["leaderboard"][0]["params"]) == {"lr", "width", "optimizer"}

    code = main(["search", "report", result["study"], "-o", str(tmp_path / "report"), "--db", db])
    assert code == 0
    page = (tmp_path / "report" / "index.html").read_text()
    for text in ("distinct values tried", "leaderboard", "parameter importance", "loguniform(1e-3, 1e-1)",
                 "metric_vs_params.png", "layout.png"):
        assert text in page
    assert (tmp_path / "report" / "metric_vs_params.png").stat().st_size > 1000
    assert (tmp_path / "report" / "layout.png").stat().st_size > 1000

    code = main(["search", "report", "nope", "-o", str(tmp_path / "r2"), "--db", db])
    assert code == 2
    assert f"study: no study named 'nope' in sqlite:///{db}; studies there: {result['study']}" in \
        capsys.readouterr().err


def test_cli_human_output_prints_a_leaderboard(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: grid(1e-2, 3e-2)\n")
    code = main(["search", "--space", str(space), "--strategy", "grid", "--db", str(tmp_path / "s.db"),
                 "--runs-dir", str(tmp_path / "runs"), "--quiet", "--epochs", "1", *TINY])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("study search-grid-") and "2 trials (2 completed)" in lines[0]
    assert lines[1].split() == ["rank", "trial", "run", "status", "lr", "val/acc", "epochs"]
    assert lines[2].split()[0] == "1" and lines[-1].startswith("best: trial ")


def test_ctrl_c_while_the_storage_is_created_is_held_until_it_is_done(tmp_path):
    """An interrupt inside RDBStorage's schema transaction left SQLite's write lock held; it now lands after."""
    from trainlab.search.storage import _ctrl_c_deferred

    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append("handler"))
    try:
        with _ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            seen.append("block done")
        assert seen == ["block done", "handler"]
        storage = open_storage(tmp_path / "s.db")  # and opening works with the deferral in place
        assert storage.get_all_studies() == []
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_trial_fitted_to_its_minutes_in_a_search_with_a_deadline_ends_by_the_deadline(tmp_path):
    # the trial's own minutes (10) are longer than the search's time (10 s): it is fitted to the deadline,
    # so its schedule decays before the deadline instead of being cut by it
    hp = helpers.tiny(epochs=2000, minutes=10.0)
    deadline = time.time() + 10.0
    res = run_search(hp, {"lr": "choice(0.003)"}, strategy="grid", workers=1, study="fit", db=tmp_path / "s.db",
                     prune="none", runs_dir=tmp_path / "runs", quiet=True, deadline=deadline)
    (row,) = res.leaderboard
    run = Store(tmp_path / "s.db").run(row["run"])
    assert 0 < run["hparams"]["minutes"] <= 10.0 / 60, run["hparams"]["minutes"]
    assert "fitted" in run["summary"], (run["status"], run["reason"], run["epochs"], run["hparams"]["minutes"])
    fitted = run["summary"]["fitted"]
    assert fitted["updates"] < fitted["planned_updates"]
    lrs = Store(tmp_path / "s.db").metrics(row["run"], ["lr"])["lr"]["value"]
    assert lrs[-1] < 0.1 * 0.003   # decayed: the deadline did not cut it at a high rate


def test_a_study_created_and_stopped_before_its_meta_was_written_is_adopted(tmp_path):
    """Ctrl-C between Optuna's create_study and the meta write left a study that resume refused."""
    db = tmp_path / "s.db"
    run_search(tiny(), GRID4, strategy="grid", trials=1, study="warm-up", db=db, quiet=True)  # tables exist
    optuna.create_study(study_name="half", storage=open_storage(db), direction="maximize")
    res = run_search(tiny(), GRID4, strategy="grid", trials=2, study="half", db=db, quiet=True)
    assert res.complete and len(res.leaderboard) == 2
    assert load_study("half", db).user_attrs  # its meta is written now: a resume checks against it
    with pytest.raises(ConfigError, match=r"^study: 'half' was created with another strategy"):
        run_search(tiny(), GRID4, strategy="random", study="half", db=db, quiet=True)


@pytest.mark.parametrize("other", ["a trial", "another direction", "its own attrs"])
def test_a_study_not_made_by_a_search_is_refused_and_left_as_it_was(tmp_path, other):
    db = tmp_path / "s.db"
    run_search(tiny(), GRID4, strategy="grid", trials=1, study="warm-up", db=db, quiet=True)
    study = optuna.create_study(study_name="theirs", storage=open_storage(db),
                                direction="minimize" if other == "another direction" else "maximize")
    if other == "a trial":
        study.enqueue_trial({"x": 1.0})
        study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)
    elif other == "its own attrs":
        study.set_user_attr("owner", "someone")
    with pytest.raises(ConfigError, match=r"^study: 'theirs' exists but was not made by trainlab search"):
        run_search(tiny(), GRID4, strategy="grid", trials=1, study="theirs", db=db, quiet=True)
    again = load_study("theirs", db)
    assert "trainlab" not in json.dumps(again.user_attrs) and len(again.get_trials()) == (other == "a trial")
