"""optuna-dashboard on a trainlab store: Optuna keeps its tables in the store's database, so optuna-dashboard
opens a store that holds a search and shows its trials, intermediate values and importances (docs/cli-and-export.md)."""

import json
import sqlite3
import threading
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from trainlab.cli import main
from trainlab.store import Store

optuna_dashboard = pytest.importorskip("optuna_dashboard")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow  # a real search: 4 trials in a worker process
def test_optuna_dashboard_serves_a_trainlab_search(tmp_path, monkeypatch, capsys):
    import optuna

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text("lr: loguniform(1e-3, 1e-1)\nwidth: int(8, 32, log)\n")
    db = tmp_path / "search.db"
    assert main(["search", "--space", "space.yaml", "--trials", "4", "--epochs", "2", "--set", "model=mlp",
                 "--workers", "1", "--prune", "median", "--study", "dash", "--db", str(db), "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    copy = tmp_path / "copy.db"  # optuna-dashboard may write (notes, migrations): it gets a copy, taken with
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:  # SQLite's backup (the store is in WAL
        source.backup(target)                                               # mode: a file copy can miss rows)

    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(optuna.storages.RDBStorage(f"sqlite:///{copy}")),
                         handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        studies = json.load(urllib.request.urlopen(base + "/api/studies", timeout=30))["study_summaries"]
        (study,) = [s for s in studies if s["study_name"] == "dash"]
        assert study["directions"] == ["maximize"]
        detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{study['study_id']}?after=0", timeout=30))
        importances = json.load(urllib.request.urlopen(
            f"{base}/api/studies/{study['study_id']}/param_importances", timeout=60))["param_importances"][0]
    finally:
        server.shutdown()
        thread.join()

    trials = detail["trials"]
    assert len(trials) == 4 and {p["name"] for t in trials for p in t["params"]} == {"lr", "width"}
    assert detail["has_intermediate_values"]  # per-epoch val/acc, reported for pruning
    store = Store(str(db))
    for trial in trials:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        run = store.run(int(attrs["run_id"]))  # each trial names its trainlab run
        assert attrs["status"] == run["status"]
        if trial["state"] == "Complete":
            assert trial["values"][0] == pytest.approx(run["best_metric"])
    assert {i["name"] for i in importances} == {"lr", "width"}
    assert len(result["leaderboard"]) == 4
