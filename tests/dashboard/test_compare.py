"""The dashboard as a place to compare runs: check runs filed apart, the comparison API, Optuna's
importance on a study `trainlab search` would leave, and in Chromium the overlay chart (log/linear,
smoothing, values on hover), the parallel coordinates (pruned, failed and completed drawn apart), the
importance panel, CSV downloads and tick labels. The store is written through the Store API and Optuna
(tests/dashboard/synth.py): no training, no torch."""

import csv
import io
import os
import shutil
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import synth
from trainlab.dashboard import Server, bind, create_app
from trainlab.dashboard.importance import optuna_dashboard_command
from trainlab.dashboard.server import allowed_hosts

HOST = "testserver"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return synth.build(tmp_path_factory.mktemp("compare") / "runs.db")


@pytest.fixture(scope="module")
def client(built):
    with TestClient(create_app(built["path"], [HOST])) as c:
        yield c


def _ok(client, url):
    r = client.get(url)
    assert r.status_code == 200, r.text
    return r.json()


def test_check_runs_are_filed_apart_from_no_study(client, built):
    studies = {s["name"]: s for s in _ok(client, "/api/studies")["studies"]}
    assert set(studies) == {"sweep", "(no study)", "(checks)"}
    assert studies["(checks)"]["key"] == "checks" and studies["(checks)"]["runs"] == 3
    assert studies["(no study)"]["runs"] == 1
    checks = _ok(client, "/api/studies/checks")
    assert checks["study"]["name"] == "(checks)"
    assert sorted(r["id"] for r in checks["runs"]) == built["checks"]
    assert [r["id"] for r in _ok(client, "/api/studies/none")["runs"]] == [built["loose"]]
    assert _ok(client, f"/api/runs/{built['checks'][0]}")["study_key"] == "checks"
    assert _ok(client, f"/api/runs/{built['loose']}")["study_key"] == "none"


def test_compare_api(client, built):
    ids = built["trials"][:3]
    data = _ok(client, f"/api/compare?runs={','.join(map(str, ids))}&key=val/acc")
    assert data["key"] == "val/acc"
    assert {"train/loss", "val/acc", "val/loss", "lr", "ratio/head.weight"} <= set(data["keys"])
    assert [r["id"] for r in data["runs"]] == ids
    first = data["runs"][0]["series"]
    assert first["x"] == [49, 99, 149, 199, 249, 299, 349, 399]
    assert first["mean"][-1] == pytest.approx(synth.accuracy(3e-3, 8, "adam"))
    loss = _ok(client, f"/api/compare?runs={ids[0]}&points=20")  # train/loss by default, downsampled
    assert loss["key"] == "train/loss" and len(loss["runs"][0]["series"]["x"]) <= 20
    missing = _ok(client, f"/api/compare?runs={ids[0]}&key=no/such")
    assert missing["runs"][0]["series"] is None


def test_importance_from_optuna(client, built):
    imp = _ok(client, "/api/studies/1/importance")
    assert imp["available"] and imp["study"] == "sweep"
    assert [i["name"] for i in imp["importances"]][0] == "lr"  # the accuracy depends on lr alone
    assert sum(i["importance"] for i in imp["importances"]) == pytest.approx(1.0)
    assert imp["trials"] == {"complete": 5, "pruned": 4, "fail": 1} and imp["completed"] == 5
    assert imp["few"] and "rests on only 5 completed trials" in imp["note"]
    assert imp["optuna_dashboard"] == f"optuna-dashboard sqlite:///{built['path']}"
    assert _ok(client, "/api/studies/1/importance") == imp  # cached: the same answer
    assert not _ok(client, "/api/studies/checks/importance")["available"]


def test_importance_without_an_optuna_study(tmp_path):
    path = synth.build(tmp_path / "plain.db", optuna_study=False)["path"]
    with TestClient(create_app(path, [HOST])) as c:
        imp = _ok(c, "/api/studies/1/importance")
    assert not imp["available"] and imp["importances"] == []
    assert "no Optuna study" in imp["note"]


def test_optuna_dashboard_command():
    assert optuna_dashboard_command("sqlite:///file:/tmp/a%20b.db?mode=ro&uri=true") == \
        "optuna-dashboard sqlite:////tmp/a b.db"
    assert optuna_dashboard_command("postgresql://u:secret@h/db?options=-c%20default_transaction_read_only%3Don") == \
        "optuna-dashboard postgresql://u:***@h/db"


def _csv(download) -> list[list[str]]:
    return list(csv.reader(io.StringIO(Path(download.path()).read_text())))


def test_comparing_in_chromium(built, tmp_path, chromium_page):
    trials = built["trials"]
    server = Server(create_app(built["path"], allowed_hosts("127.0.0.1")), bind("127.0.0.1", 0)).start()
    base = f"http://127.0.0.1:{server.port}/"
    try:
        page, problems = chromium_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)

        # the studies list files the checks apart
        page.goto(base)
        page.wait_for_selector("body[data-ready=studies]")
        assert page.locator("#studies a").all_inner_texts() == ["sweep", "(no study)", "(checks)"]

        page.goto(base + "#/study/1")
        page.wait_for_selector("body[data-ready=study]", timeout=30_000)
        page.wait_for_selector("body[data-compare=ready]", timeout=30_000)
        # the five best runs are picked at first; their boxes are ticked on the cards and in the table
        legend = page.locator("#compare .u-legend .u-series")
        assert legend.count() == 1 + 5
        best = [trials[i] for i in (0, 1, 6, 2, 5)]  # by best val/acc: 0.919, 0.850, 0.850, 0.649, 0.617
        assert sorted(int(x) for x in page.locator("#cards input.pick:checked").evaluate_all(
            "bs => bs.map(b => b.dataset.pick)")) == sorted(best)
        assert page.locator("#runs-table input.pick:checked").count() == 5

        # picking a pruned run on its card adds it (dashed), and its table box follows
        page.check(f'#cards input.pick[data-pick="{trials[3]}"]')
        page.wait_for_selector("body[data-compare=ready]")
        assert legend.count() == 1 + 6
        assert page.locator(f'#runs-table input.pick[data-pick="{trials[3]}"]').is_checked()
        assert "[pruned]" in page.locator("#compare .u-legend").inner_text()

        # values on hover: the legend shows each run's value at the cursor
        box = page.locator("#compare-chart .u-over").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        values = page.locator("#compare .u-legend .u-series .u-value").all_inner_texts()
        assert values[0] not in ("", "--") and any(v not in ("–", "--", "") for v in values[1:]), values

        # metric, log axis and smoothing redraw the same runs
        page.select_option("#compare-key", "val/acc")
        page.wait_for_selector("body[data-compare=ready]")
        assert page.locator("#compare-chart").get_attribute("data-csv") == "sweep-val_acc"
        assert page.locator("#compare-key").input_value() == "val/acc"
        page.check("#compare-log")
        page.wait_for_selector("body[data-compare=ready]")
        page.locator("#compare-smooth").fill("0")
        page.wait_for_selector("body[data-compare=ready]")
        assert page.locator("#compare-smooth-value").inner_text() == "0.00"

        # the chart's data as CSV: a column per picked run, unsmoothed values at smoothing 0
        with page.expect_download() as dl:
            page.click("#compare > button.csv")
        rows = _csv(dl.value)
        assert rows[0][0] == "step" and len(rows[0]) == 1 + 6
        assert "trial-0 (#%d)" % trials[0] in rows[0]
        col = rows[0].index("trial-0 (#%d)" % trials[0])
        assert float(rows[-1][col]) == pytest.approx(synth.accuracy(3e-3, 8, "adam"))
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=False)

        # parallel coordinates: a line per run, pruned dashed grey, failed and diverged dotted red
        lines = page.locator("#parcoords path.pc-line")
        assert lines.count() == len(trials)
        styles = {int(r): (s, d) for r, s, d in lines.evaluate_all(
            "ps => ps.map(p => [p.dataset.run, p.getAttribute('stroke'), p.getAttribute('stroke-dasharray')])")}
        status = {t: s for t, s in zip(trials, [row[4] for row in synth.TRIALS])}
        for run, (stroke, dash) in styles.items():
            if status[run] == "completed":
                assert dash is None and stroke.startswith("rgb(")
            elif status[run] == "pruned":
                assert dash == "6 4" and stroke == "#8a94a6"
            else:
                assert dash == "2 3" and stroke == "#c62828"
        texts = "ns => ns.map(n => n.textContent)"  # SVG text has no innerText
        assert page.locator("#parcoords .pc-axis .pc-name").evaluate_all(texts) == [
            "lr (log)", "weight_decay", "width", "optimizer", "val/acc"]
        lr_ticks = page.locator('#parcoords .pc-axis[data-axis="lr"] .pc-tick').evaluate_all(texts)
        assert {"1e-4", "1e-3", "1e-2", "0.1"} <= set(lr_ticks)
        wd_ticks = page.locator('#parcoords .pc-axis[data-axis="weight_decay"] .pc-tick').evaluate_all(texts)
        labels = [t for t in wd_ticks if t != "none"]
        assert len(set(labels)) == len(labels) and "0" in labels, wd_ticks  # not "0 0 0 0"
        # clicking a line picks that run for the comparison
        page.locator(f'#parcoords path[data-run="{trials[8]}"]').dispatch_event("click")
        page.wait_for_selector("body[data-compare=ready]")
        assert page.locator(f'#cards input.pick[data-pick="{trials[8]}"]').is_checked()
        assert legend.count() == 1 + 7
        with page.expect_download() as dl:
            page.click("#parcoords-panel > button.csv")
        rows = _csv(dl.value)
        assert rows[0] == ["id", "name", "status", "lr", "weight_decay", "width", "optimizer", "val/acc"]
        assert len(rows) == 1 + len(trials)

        # Optuna's importance, flagged as resting on few trials
        page.wait_for_selector("body[data-importance=ready]", timeout=60_000)
        assert page.locator("#importance-table tr").first.get_attribute("data-param") == "lr"
        note = page.locator("#importance-note")
        assert "only 5 completed trials" in note.inner_text() and "few" in note.get_attribute("class")
        assert "optuna-dashboard sqlite:///" in page.locator("#importance").inner_text()

        # every chart has its CSV button; a small multiple's CSV holds its loss and val/acc
        assert page.locator("#cards .card > button.csv").count() == len(trials)
        assert page.locator("#scatters .panel > button.csv").count() == 4
        with page.expect_download() as dl:
            page.click(f'.card[data-run="{trials[0]}"] > button.csv')
        assert _csv(dl.value)[0] == ["step", "loss min", "loss max", "loss (moving average)", "val/acc"]

        # pruned runs' cards are drawn apart from completed ones
        assert "dashed" in page.locator(f'.card[data-run="{trials[3]}"]').evaluate("c => getComputedStyle(c).borderStyle")
        assert "solid" in page.locator(f'.card[data-run="{trials[0]}"]').evaluate("c => getComputedStyle(c).borderStyle")
        page.screenshot(path=str(tmp_path / "study.png"), full_page=True)

        # tick labels for their range (the functions every chart's axes use)
        ticks = page.evaluate("window.tlTicks.tickLabels([0, 0.0002, 0.0004, 0.0006, 0.0008, 0.001])")
        assert ticks == ["0", "0.0002", "0.0004", "0.0006", "0.0008", "0.0010"]
        assert page.evaluate("window.tlTicks.tickLabels([0, 2e-5, 4e-5])") == ["0", "2e-5", "4e-5"]
        assert page.evaluate("window.tlTicks.tickLabels([0, 250000, 500000])") == ["0", "2.5e5", "5e5"]
        assert page.evaluate("window.tlTicks.tickLabels([2.5, 2.75, 3])") == ["2.50", "2.75", "3.00"]
        assert page.evaluate("window.tlTicks.logTicks([1e-4, 2e-4, 5e-4, 1e-3, 1e-2, 0.1, 1])") == \
            ["1e-4", "", "", "1e-3", "1e-2", "0.1", "1"]
        assert page.evaluate("window.tlTicks.logTicks([5e-5, 1e-4, 2e-4, 5e-4])") == ["5e-5", "1e-4", "2e-4", "5e-4"]

        # a check run's page names its pseudo-study
        page.goto(base + f"#/run/{built['checks'][0]}")
        page.wait_for_selector("body[data-ready=run]")
        assert "(checks)" in page.locator("#crumbs").inner_text()
        page.locator('#run-charts .panel[data-chart="loss"] > button.csv').wait_for()
        assert problems == []  # checked while the server is up: the page polls it
    finally:
        server.stop()
    shots = os.environ.get("TRAINLAB_SCREENSHOTS")
    if shots:  # keep them to look at
        for name in ("compare.png", "study.png"):
            shutil.copy(tmp_path / name, Path(shots) / name)
