"""The command center over real trainings: the JSON API through the app factory (404/400/405, Host
header, path traversal, downsampling), the real `trainlab dashboard` process, a training writing the
SQLite file while the dashboard is polled, and the page in a real headless Chromium."""

import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from trainlab.cli import main
from trainlab.config import Config
from trainlab.dashboard import create_app
from trainlab.dashboard.app import open_read_only
from trainlab.dashboard.server import allowed_hosts, is_loopback
from trainlab.doctor.ratio import RATIO_BAND
from trainlab.store import METRIC_BLOCK, Store
from trainlab.tasks import load_task
from trainlab.train import fit

import helpers

TINY = dict(helpers.TINY, width=16, batch_size=64, monitor_every=50)  # 57 steps per epoch on mnist1d
HOST = "testserver"  # what TestClient sends as Host


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with real short trainings: two healthy runs and a diverged one in a study, one run in none."""
    folder = tmp_path_factory.mktemp("dash")
    path = folder / "runs.db"
    store = Store(path)
    task = load_task(Config(**TINY))
    runs = {}
    for name, extra in [("adam-1e-2", dict(lr=1e-2, epochs=2)), ("adam-1e-3", dict(lr=1e-3, epochs=2)),
                        ("sgd-huge-lr", dict(lr=50.0, optimizer="sgd", epochs=2))]:
        result = fit(task, Config(**TINY, **extra), store=store, study="sweep", name=name, quiet=True,
                     runs_dir=folder / "ckpt")
        runs[name] = result.run_id
    loose = fit(task, Config(**TINY, lr=3e-3, epochs=1), store=store, name="loose", quiet=True, runs_dir=folder / "ckpt")
    runs["loose"] = loose.run_id
    assert store.run(runs["sgd-huge-lr"])["status"] == "diverged"
    assert [store.run(runs[n])["status"] for n in ("adam-1e-2", "adam-1e-3", "loose")] == ["completed"] * 3
    store.close()
    return {"path": path, "runs": runs, "folder": folder}


@pytest.fixture(scope="module")
def client(trained):
    with TestClient(create_app(trained["path"], [HOST])) as c:
        yield c


def _ok(client, url):
    r = client.get(url)
    assert r.status_code == 200, r.text
    return r.json()


def _study_key(client, name):
    return next(s["key"] for s in _ok(client, "/api/studies")["studies"] if s["name"] == name)


# ----------------------------------------------------------------------------------- the API


def test_studies_list_has_each_study_and_the_runs_without_one(client, trained):
    studies = {s["name"]: s for s in _ok(client, "/api/studies")["studies"]}
    assert set(studies) == {"sweep", "(no study)"}
    sweep = studies["sweep"]
    assert sweep["runs"] == 3 and sweep["status"] == {"completed": 2, "diverged": 1}
    store = Store(trained["path"])
    best = [store.run(trained["runs"][n])["best_metric"] for n in ("adam-1e-2", "adam-1e-3")]
    assert sweep["best_metric"] == max(best)
    assert sweep["last_activity"] == max(r["updated"] for r in store.runs(study="sweep"))
    loose = studies["(no study)"]
    assert loose["key"] == "none" and loose["runs"] == 1 and loose["status"] == {"completed": 1}
    assert loose["best_metric"] == store.run(trained["runs"]["loose"])["best_metric"]


def test_study_page_api(client, trained):
    key = _study_key(client, "sweep")
    data = _ok(client, f"/api/studies/{key}")
    assert data["study"] == {"key": key, "name": "sweep"}
    assert data["metric"] == "val/acc" and data["running"] is False
    runs = {r["name"]: r for r in data["runs"]}
    assert list(runs) == ["adam-1e-2", "adam-1e-3", "sgd-huge-lr"]
    store = Store(trained["path"])
    for name, run in runs.items():
        raw = store.metrics(run["id"], ["train/loss", "val/acc"])
        loss = run["loss"]
        assert len(loss["x"]) <= 150 and loss["n"] == len(raw["train/loss"]["value"])
        # the small charts carry 5 significant digits
        assert max(v for v in loss["hi"] if v is not None) == pytest.approx(max(raw["train/loss"]["value"]), rel=1e-4)
        assert min(v for v in loss["lo"] if v is not None) == pytest.approx(min(raw["train/loss"]["value"]), rel=1e-4)
        assert len(loss["avg"]) == len(loss["x"]) and set(loss) == {"x", "lo", "hi", "avg", "n", "nan", "width"}
        if name != "sgd-huge-lr":  # one val/acc point per epoch, at the epoch's last step
            assert run["val"]["x"] == raw["val/acc"]["step"]
            assert run["val"]["mean"] == pytest.approx(raw["val/acc"]["value"], rel=1e-4)
    diverged = runs["sgd-huge-lr"]
    assert diverged["badges"][0]["name"] == "diverged" and diverged["badges"][0]["source"] == "status"
    assert diverged["badges"][0]["severity"] == "error" and "learning rate too high" in diverged["badges"][0]["message"]
    assert all(b["source"] == "doctor" for b in runs["adam-1e-2"]["badges"])  # completed: no status badge
    assert runs["adam-1e-2"]["hparams"]["lr"] == 1e-2
    axes = {h["name"]: h for h in data["hparams"]}
    assert set(axes) == {"lr", "optimizer"}  # only what varies
    assert axes["lr"]["axis"] == "log"  # 1e-3 .. 50 spans decades
    assert axes["optimizer"] == {"name": "optimizer", "axis": "category", "categories": ["adam", "sgd"]}
    only = _ok(client, f"/api/studies/{key}?status=diverged&points=20")
    assert [r["name"] for r in only["runs"]] == ["sgd-huge-lr"]
    assert only["status_counts"] == {"completed": 2, "diverged": 1}  # counts of the whole study
    assert all(len(r["loss"]["x"]) <= 20 for r in _ok(client, f"/api/studies/{key}?points=20")["runs"])


def test_runs_without_a_study_are_reachable(client, trained):
    data = _ok(client, "/api/studies/none")
    assert data["study"]["name"] == "(no study)"
    assert [r["id"] for r in data["runs"]] == [trained["runs"]["loose"]]
    assert _ok(client, f"/api/runs/{trained['runs']['loose']}")["study_key"] == "none"


def _doctor_names(store, run):
    """What trainlab's own doctor (`trainlab diagnose`) says about a run."""
    from trainlab.doctor.diagnose import diagnose_run

    found = [f.name for f in diagnose_run(store, run["id"]).findings]
    status = ["diverged"] if run["status"] == "diverged" else []
    return status + [n for n in found if n not in status]


def test_study_badges_are_the_doctors_findings(client, trained):
    """The study page answers at once and diagnoses in the background; asked again, it has every finding."""
    import importlib.util

    if importlib.util.find_spec("trainlab.doctor") is None:
        pytest.skip("this tree has no learning-curve doctor yet (trainlab.doctor, issue 3)")
    key = _study_key(client, "sweep")
    deadline = time.monotonic() + 60
    while True:
        data = _ok(client, f"/api/studies/{key}")
        if data["doctor"]["pending"] == 0 or time.monotonic() > deadline:
            break
        assert sum(r["doctor_pending"] for r in data["runs"]) == data["doctor"]["pending"]
        time.sleep(0.2)
    assert data["doctor"] == {"available": True, "pending": 0}
    store = Store(trained["path"])
    for run in data["runs"]:
        assert not run["doctor_pending"]
        assert [b["name"] for b in run["badges"]] == _doctor_names(store, store.run(run["id"])), run["name"]
    detail = _ok(client, f"/api/runs/{trained['runs']['adam-1e-3']}")  # the run page waits for the doctor
    assert [f["name"] for f in detail["findings"]] == _doctor_names(store, store.run(trained["runs"]["adam-1e-3"]))
    assert all(f["evidence"] and f["action"] and f["source"] == "doctor" for f in detail["findings"])


def test_doctor_absent_or_broken(trained):
    from trainlab.dashboard.findings import Doctor

    store = open_read_only(trained["path"])
    diverged = store.run(trained["runs"]["sgd-huge-lr"])
    healthy = store.run(trained["runs"]["adam-1e-2"])
    none = Doctor(store, diagnose=None)
    assert not none.available
    assert none.findings(healthy) == [] and [f["name"] for f in none.findings(diverged)] == ["diverged"]

    def broken(store, run):
        raise RuntimeError("rule exploded")

    found = Doctor(store, diagnose=broken).findings(healthy, wait=True)
    assert found == [{"name": "doctor failed", "severity": "info", "message": "RuntimeError: rule exploded",
                      "evidence": "", "action": "", "source": "doctor"}]
    calls = []

    def counting(store, run):
        calls.append(run["id"])
        return []

    doctor = Doctor(store, diagnose=counting)
    assert doctor.findings(healthy, wait=True) == [] and doctor.findings(healthy) == []
    assert len(calls) == 1  # cached while the run's `updated` is unchanged
    assert doctor.findings({**healthy, "updated": "later"}) is None  # changed: queued, diagnosed again
    for _ in range(100):
        if len(calls) == 2:
            break
        time.sleep(0.05)
    assert len(calls) == 2 and doctor.findings({**healthy, "updated": "later"}) == []
    assert calls == [healthy["id"]] * 2


def test_the_dashboard_never_imports_torch(trained):
    """Not to start, not to diagnose: importing torch would cost a cold page about 2 CPU s."""
    code = ("import sys; from starlette.testclient import TestClient; from trainlab.dashboard import create_app; "
            f"c = TestClient(create_app({str(trained['path'])!r}, ['testserver'])); "
            f"r = c.get('/api/runs/{trained['runs']['sgd-huge-lr']}').json(); "
            "print(r['doctor'], r['findings'][0]['name'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True diverged False", out.stderr


def test_run_page_api(client, trained):
    store = Store(trained["path"])
    run_id = trained["runs"]["sgd-huge-lr"]
    run = _ok(client, f"/api/runs/{run_id}")
    stored = store.run(run_id)
    assert run["hparams"] == stored["hparams"] and run["checkpoint"] == stored["checkpoint"]
    assert run["status"] == "diverged" and run["reason"] == stored["reason"]
    assert run["findings"][0]["name"] == "diverged" and run["findings"][0]["evidence"] == stored["reason"]
    assert run["doctor"] is True
    assert run["study_key"] == _study_key(client, "sweep")
    assert tuple(run["ratio_band"]) == RATIO_BAND == (1e-4, 1e-2)

    healthy = trained["runs"]["adam-1e-2"]
    m = _ok(client, f"/api/runs/{healthy}/metrics")
    raw = store.metrics(healthy)
    assert set(m["series"]) == set(raw) and any(k.startswith("ratio/") for k in m["series"])
    loss = m["series"]["train/loss"]  # 114 steps < 2000 points: every step, unchanged
    assert loss["x"] == raw["train/loss"]["step"] == list(range(114))
    assert loss["lo"] == loss["hi"] == loss["mean"] == raw["train/loss"]["value"]
    assert m["series"]["val/acc"]["mean"] == raw["val/acc"]["value"]
    few = _ok(client, f"/api/runs/{healthy}/metrics?points=10")["series"]["train/loss"]
    assert len(few["x"]) <= 10 and few["n"] == 114


def test_downsampling_keeps_each_buckets_min_and_max(tmp_path):
    """10,000 noisy steps with single-step spikes, NaNs and an Inf, drawn with 100 points."""
    store = Store(tmp_path / "s.db")
    rng = np.random.default_rng(0)
    n = 10_000
    values = 2.0 * np.exp(-np.arange(n) / 3000) + 0.05 * rng.standard_normal(n)
    spikes = rng.choice(n, 7, replace=False)
    values[spikes] += 50.0 + np.arange(7)  # one-step spikes, each a different height
    values[4321] = -9.0                     # and a dip
    values[[100, 5000, 5001]] = np.nan
    values[7777] = np.inf
    run = store.create_run(name="spiky", hparams={})
    store.log_metrics(run, [(s, 1, "train/loss", float(v)) for s, v in enumerate(values)])
    store.finish_run(run, "completed")
    with TestClient(create_app(tmp_path / "s.db", [HOST])) as client:
        got = _ok(client, f"/api/runs/{run}/metrics?points=100")["series"]["train/loss"]
    width = math.ceil(math.ceil(n / 100) / METRIC_BLOCK) * METRIC_BLOCK  # read from whole summary blocks
    assert got["width"] == width and len(got["x"]) == math.ceil(n / width) and got["n"] == n and got["nan"] == 3
    for b, first in enumerate(got["x"]):
        assert first == b * width
        chunk = values[b * width:(b + 1) * width]
        finite = chunk[np.isfinite(chunk)]
        if np.isinf(chunk).any():  # Inf is drawn as a gap (JSON has no Inf), its bucket's max too
            assert got["hi"][b] is None and got["lo"][b] == pytest.approx(finite.min())
            continue
        assert got["lo"][b] == pytest.approx(finite.min(), abs=1e-12)
        assert got["hi"][b] == pytest.approx(finite.max(), abs=1e-12)
    for s in spikes:  # every spike is some bucket's max, at full height
        assert got["hi"][s // width] == pytest.approx(values[s])
    assert got["lo"][4321 // width] == -9.0
    # the moving average is of the bucket means, skipping the NaN rows
    assert got["mean"][0] == pytest.approx(np.nanmean(values[:width]))


def test_store_metric_buckets(tmp_path):
    store = Store(tmp_path / "s.db")
    a = store.create_run(name="a", hparams={})
    b = store.create_run(name="b", hparams={})
    store.log_metrics(a, [(0, 1, "loss", 4.0), (1, 1, "loss", 1.0), (2, 1, "loss", 9.0), (3, 1, "loss", 2.0),
                          (3, 1, "val", 0.5)])
    store.log_metrics(b, [(0, 1, "loss", float("nan")), (1, 1, "loss", float("nan")), (2, 1, "loss", 3.0)])
    got = store.metric_buckets([a, b, 999], ["loss", "val", "never"], 2)
    assert set(got) == {a, b}  # unknown runs and keys without rows are left out
    assert got[a]["loss"] == {"width": 2, "first": [0, 2], "last": [1, 3], "min": [1.0, 2.0], "max": [4.0, 9.0],
                              "mean": [2.5, 5.5], "count": [2, 2], "nan": [0, 0]}
    assert got[a]["val"] == {"width": 2, "first": [3], "last": [3], "min": [0.5], "max": [0.5], "mean": [0.5],
                             "count": [1], "nan": [0]}
    assert got[b]["loss"]["min"] == [None, 3.0] and got[b]["loss"]["nan"] == [2, 0]  # all-NaN bucket: None
    assert set(got[b]) == {"loss"}
    assert store.metric_buckets([a], "loss", 100)[a]["loss"]["max"] == [4.0, 1.0, 9.0, 2.0]  # few points: all kept
    assert store.metric_buckets([], ["loss"], 5) == {}
    with pytest.raises(ValueError, match=r"^buckets must be at least 1, got 0$"):
        store.metric_buckets([a], ["loss"], 0)
    with pytest.raises(ValueError, match=r"^run_ids: expected an integer, got 'x'$"):
        store.metric_buckets(["x"], ["loss"], 2)


def test_many_runs_are_read_in_parallel_parts_alike(tmp_path):
    """A cold study of many runs is read in parts on threads; the answer is the one-query answer."""
    from trainlab.dashboard.api import study_series
    from trainlab.dashboard.cache import SeriesCache

    store = Store(tmp_path / "many.db")
    rng = np.random.default_rng(1)
    for r in range(60):
        run = store.create_run(name=f"r{r}", hparams={"lr": float(r)}, study="many")
        steps = int(rng.integers(20, 400))
        store.log_metrics(run, [(s, 1, "train/loss", float(v)) for s, v in enumerate(rng.random(steps))]
                          + [(steps - 1, 1, "val/acc", 0.5)])
    runs = store.runs(study="many")
    cache = SeriesCache(open_read_only(tmp_path / "many.db"))
    assert cache.threads >= 1
    cache.threads = 2  # as on any machine with 2 cores or more
    parallel = cache.get(runs, ("train/loss", "val/acc"), 40, study_series)
    serial = store.metric_buckets([r["id"] for r in runs], ("train/loss", "val/acc"), 40)
    assert parallel == {r["id"]: study_series(serial[r["id"]]) for r in runs}
    assert SeriesCache(Store("sqlite://")).threads == 1  # one in-memory connection is never shared


@pytest.mark.parametrize("url, status, message", [
    ("/api/runs/999", 404, "no run with id 999"),
    ("/api/runs/999/metrics", 404, "no run with id 999"),
    ("/api/studies/999", 404, "no study with id 999"),
    ("/api/nothing", 404, "Not Found"),
    ("/nothing", 404, "Not Found"),
    ("/api/runs/abc", 400, "run id must be a non-negative integer, got 'abc'"),
    ("/api/runs/-1", 400, "run id must be a non-negative integer, got '-1'"),
    ("/api/runs/1.5/metrics", 400, "run id must be a non-negative integer, got '1.5'"),
    ("/api/runs/99999999999999999999", 400, "run id must be a non-negative integer"),
    ("/api/studies/abc", 400, "study key must be a study id, 'none' or 'checks', got 'abc'"),
    ("/api/studies/abc/importance", 400, "study key must be a study id, 'none' or 'checks', got 'abc'"),
    ("/api/studies/999/importance", 404, "no study with id 999"),
    ("/api/compare", 400, "runs is required"),
    ("/api/compare?runs=1,x", 400, "runs must be 1 to 24 run ids separated by commas, got '1,x'"),
    ("/api/compare?runs=" + ",".join(["1"] * 25), 400, "runs must be 1 to 24 run ids"),
    ("/api/compare?runs=999999", 404, "no run with id 999999"),
    ("/api/compare?runs=1&key=", 400, "key must be a metric name"),
    ("/api/studies/none?points=1", 400, "points must be an integer from 2 to 2000, got '1'"),
    ("/api/studies/none?points=abc", 400, "points must be an integer from 2 to 2000, got 'abc'"),
    ("/api/studies/none?points=100000", 400, "points must be an integer from 2 to 2000"),
    ("/api/studies/none?points=", 400, "points must be an integer"),
    ("/api/studies/none?status=done", 400, "status must be one of running, completed, stopped, diverged, failed, "
                                           "pruned, lost; got 'done'"),
    ("/api/studies/none?points=5&points=6", 400, "parameter 'points' given twice"),
    ("/api/studies?x=1", 400, "unknown parameter 'x'; known: none"),
    ("/api/runs/1/metrics?path=/etc/passwd", 400, "unknown parameter 'path'; known: points"),
])
def test_errors_are_json(client, url, status, message):
    r = client.get(url)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert message in r.json()["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("url", ["/", "/api/studies", "/api/runs/1", "/static/app.js", "/api/nothing"])
def test_only_get_and_head(client, method, url, trained):
    before = hashlib.sha256(Path(trained["path"]).read_bytes()).hexdigest()
    r = client.request(method, url, content=b'{"status": "failed"}')
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert r.json()["error"] == f"method {method} not allowed: the dashboard only reads"
    assert hashlib.sha256(Path(trained["path"]).read_bytes()).hexdigest() == before
    assert client.head(url if url != "/api/nothing" else "/").status_code == 200


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8000", True), ("localhost:8000", True), ("LOCALHOST:9", True), ("[::1]:8000", True),
    ("127.0.0.1", True), ("evil.example:8000", False), ("127.0.0.1.evil.example", False),
    ("localhost.evil.example:8000", False), ("evil.example", False), ("", False), ("127.0.0.1:8000@evil", False),
    ("[::2]:8000", False), ("0.0.0.0:8000", False),
])
def test_host_header_is_checked(trained, host, ok):
    app = create_app(trained["path"], ["127.0.0.1", "localhost", "[::1]"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        r = c.get("/api/studies", headers={"host": host})
    assert r.status_code == (200 if ok else 400), host
    if not ok:
        assert r.json()["error"].startswith(f"host {host!r} is not allowed (DNS rebinding protection)")


def test_host_with_port_allows_that_port_only(trained):
    with TestClient(create_app(trained["path"], ["127.0.0.1:8123"]), base_url="http://127.0.0.1:8123") as c:
        assert c.get("/api/info").status_code == 200
        assert c.get("/api/info", headers={"host": "127.0.0.1:8124"}).status_code == 400
        assert c.get("/api/info", headers={"host": "localhost:8123"}).status_code == 400


def test_allowed_hosts_for_a_bind_address():
    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("::1") == ["[::1]", "127.0.0.1", "localhost"]
    wide = allowed_hosts("0.0.0.0", ["tunnel.example"])
    assert {"127.0.0.1", "localhost", socket.gethostname().lower(), "tunnel.example"} <= set(wide)
    assert "evil.example" not in wide
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    with pytest.raises(ValueError, match="allowed_hosts: give at least one host"):
        create_app(Store("sqlite://"), [])


@pytest.mark.parametrize("url", [
    "/static/../store.py", "/static/..%2fstore.py", "/static/..%2f..%2fpyproject.toml", "/static/%2e%2e%2fapp.py",
    "/static/%2e%2e/%2e%2e/store.py", "/static/app.py", "/static/__init__.py", "/static/..%5capp.py",
    "/static/%2fetc%2fpasswd", "/static//etc/passwd", "/../../../etc/passwd", "/static/index.html%00.py",
    "/static/", "/static", "/app.py", "/api/runs/1/../../../store.py", "/static/uPlot.iife.min.js/..%2f..%2fapp.py",
])
def test_no_path_reaches_a_file_outside_the_page(client, url):
    r = client.get(url)
    assert r.status_code in (400, 404), url
    assert r.headers["content-type"].startswith("application/json")
    assert "import" not in r.text and "root:" not in r.text


def test_page_files_and_security_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
    for name, kind in [("app.js", "javascript"), ("app.css", "css"), ("uPlot.iife.min.js", "javascript"),
                       ("uPlot.min.css", "css"), ("uPlot.LICENSE", "text/plain")]:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 100
    assert "MIT" in client.get("/static/uPlot.LICENSE").text
    for r in (page, client.get("/api/studies"), client.get("/api/runs/999")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/api/studies").headers["cache-control"] == "no-store"


def test_static_files_are_package_data():
    """The page ships inside the package: pyproject's package-data glob covers dashboard/static."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["trainlab"]
    static = Path(__file__).parents[2] / "src/trainlab/dashboard/static"
    package = static.parents[1]
    names = {p.name for p in static.iterdir()}
    assert {"index.html", "app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"} <= names
    for p in static.iterdir():
        rel = p.relative_to(package).as_posix()
        assert any(Path(rel).match(g) for g in globs), rel


def test_the_store_is_opened_read_only(trained, tmp_path):
    copy = tmp_path / "copy.db"
    shutil.copy(trained["path"], copy)
    store = open_read_only(copy)
    assert "mode=ro" in store.url
    with pytest.raises(Exception, match="readonly database"):
        store.create_run(name="x", hparams={})
    assert len(store.runs(kind=None)) == 4
    missing = tmp_path / "nope.db"
    with pytest.raises(ValueError, match=r"^db: no store at .*nope\.db"):
        create_app(missing)
    assert not missing.exists()  # a dashboard never creates a store


def test_postgresql_store_reads_alike(trained, pg_url):  # noqa: F811
    """The same real runs copied into PostgreSQL: the same answers, and the dashboard's connection cannot write."""
    sqlite = Store(trained["path"])
    pg = Store(pg_url)
    ids = {}
    for run in sqlite.runs(kind=None):
        new = pg.create_run(name=run["name"], hparams=run["hparams"], seed=run["seed"], study=run["study"])
        m = sqlite.metrics(run["id"])
        pg.log_metrics(new, [(s, e, k, v) for k, series in m.items()
                             for s, e, v in zip(series["step"], series["epoch"], series["value"])])
        pg.finish_run(new, run["status"], run["reason"], best_metric=run["best_metric"], best_epoch=run["best_epoch"],
                      epochs=run["epochs"], summary=run["summary"], checkpoint=run["checkpoint"])
        ids[run["id"]] = new
    pg.close()
    answers = []
    for db in (trained["path"], pg_url):
        with TestClient(create_app(db, [HOST])) as client:
            key = _study_key(client, "sweep")
            study = _ok(client, f"/api/studies/{key}?points=40")
            metrics = _ok(client, f"/api/runs/{study['runs'][0]['id']}/metrics?points=30")
            assert client.get("/api/runs/987654").status_code == 404
            assert [s["name"] for s in _ok(client, "/api/studies")["studies"]] == ["sweep", "(no study)"]
            answers.append((study, metrics))
    (s_study, s_metrics), (p_study, p_metrics) = answers
    assert [ids[r["id"]] for r in s_study["runs"]] == [r["id"] for r in p_study["runs"]]
    for a, b in zip(s_study["runs"], p_study["runs"]):
        assert (a["name"], a["status"], a["hparams"], [x["name"] for x in a["badges"]][:1]) == \
               (b["name"], b["status"], b["hparams"], [x["name"] for x in b["badges"]][:1])
        for series in ("loss", "val"):
            if a[series] is None:
                assert b[series] is None
                continue
            assert a[series]["x"] == b[series]["x"] and a[series]["n"] == b[series]["n"]
            for field in set(a[series]) - {"x", "n", "nan", "width"}:
                assert b[series][field] == pytest.approx(a[series][field], rel=1e-4), (series, field)
    assert set(s_metrics["series"]) == set(p_metrics["series"])
    for key, series in s_metrics["series"].items():
        assert p_metrics["series"][key]["x"] == series["x"]
        assert p_metrics["series"][key]["hi"] == pytest.approx(series["hi"], rel=1e-9)
    reader = open_read_only(pg_url)
    with pytest.raises(Exception, match="read-only transaction"):
        reader.create_run(name="x", hparams={})
    assert len(reader.runs(kind=None)) == 4


# --------------------------------------------------------------------------------- the process


def _start_cli(args, env=None):
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "dashboard", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"http://\S+/", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"no address printed: {line!r} {proc.stderr.read()}")
    return proc, match.group(0)


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_cli_warns_when_listening_beyond_loopback(trained):
    import httpx

    proc, url = _start_cli(["--db", str(trained["path"]), "--host", "0.0.0.0", "--port", "0"])
    try:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "api/studies", timeout=30).status_code == 200
        assert httpx.get(url + "api/studies", headers={"host": "evil.example"}, timeout=30).status_code == 400
    finally:
        _stop(proc)
    err = proc.stderr.read()
    assert "warning: listening on 0.0.0.0, beyond this machine, with no authentication" in err


def test_cli_errors(trained, tmp_path, capsys):
    assert main(["dashboard", "--db", str(tmp_path / "nope.db")]) == 2
    assert re.search(r"^trainlab: error: db: no store at .*nope\.db", capsys.readouterr().err)
    assert main(["dashboard", "--db", str(trained["path"]), "--port", "70000"]) == 2
    assert "port must be an integer from 0 to 65535, got 70000" in capsys.readouterr().err
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        assert main(["dashboard", "--db", str(trained["path"]), "--port", str(taken.getsockname()[1])]) == 2
        assert "--host/--port: cannot listen on 127.0.0.1 port" in capsys.readouterr().err
    finally:
        taken.close()
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.slow
def test_a_training_writing_the_store_while_the_dashboard_polls(tmp_path):
    """A real `trainlab train` process writes the SQLite file; the dashboard polls every endpoint meanwhile."""
    path = tmp_path / "live.db"
    Store(path).close()  # the file exists, as when the dashboard is opened before a search starts
    epochs = 8  # long enough that a poll lands while it runs, on a fast machine too
    train = subprocess.Popen(
        [sys.executable, "-m", "trainlab", "train", "--db", str(path), "--study", "live", "--name", "live-run",
         "--runs-dir", str(tmp_path / "ckpt"), "--quiet", "--json", "--set", "model=mlp", "--set", "width=16",
         "--set", "batch_size=64", "--set", f"epochs={epochs}", "--set", "monitor_every=10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_status, partial, requests = set(), [], 0
    with TestClient(create_app(path, [HOST])) as client:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = train.poll() is not None
            studies = _ok(client, "/api/studies")["studies"]
            requests += 1
            for s in studies:
                data = _ok(client, f"/api/studies/{s['key']}?points=50")
                for run in data["runs"]:
                    seen_status.add(run["status"])
                    detail = _ok(client, f"/api/runs/{run['id']}")
                    series = _ok(client, f"/api/runs/{run['id']}/metrics")["series"]
                    requests += 3
                    if detail["status"] == "running" and "train/loss" in series:
                        partial.append(series["train/loss"]["n"])
            if done:
                break
            time.sleep(0.1)
        out, err = train.communicate(timeout=60)
        assert train.returncode == 0, err
        result = json.loads(out)
        final = _ok(client, f"/api/runs/{result['run']}/metrics")["series"]
    assert "database is locked" not in err
    assert "running" in seen_status and partial, "the dashboard saw the run in progress"
    assert partial == sorted(partial)  # the polled series only ever grew
    store = Store(path)
    run = store.run(result["run"])
    assert run["status"] == "completed" and run["epochs"] == epochs
    m = store.metrics(result["run"])
    assert m["train/loss"]["step"] == list(range(result["steps"])) == m["lr"]["step"]  # every row is there
    assert m["val/acc"]["epoch"] == list(range(1, epochs + 1))
    assert final["train/loss"]["n"] == result["steps"] and final["val/acc"]["n"] == epochs
    print(f"\n{requests} dashboard requests during the training, {len(partial)} saw it in progress")


# --------------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def server(trained):
    proc, url = _start_cli(["--db", str(trained["path"]), "--port", "0"])
    yield url
    _stop(proc)


@pytest.mark.slow
def test_the_page_in_chromium(trained, server, tmp_path, chromium_page):
    from playwright.sync_api import expect

    runs = trained["runs"]
    page, problems = chromium_page(viewport={"width": 1280, "height": 900})

    page.goto(server)
    page.wait_for_selector("body[data-ready=studies]", timeout=30_000)
    assert page.locator("#studies tbody tr").count() == 2
    page.click("#studies a:text-is('sweep')")
    page.wait_for_selector("body[data-ready=study]", timeout=30_000)

    # one chart (one canvas) per run, and the scatter of val/acc per varying hyperparameter
    assert page.locator("#cards .card").count() == 3
    assert page.locator("#cards canvas").count() == 3
    assert page.locator("#cards .card .chart canvas").count() == 3
    assert page.locator("#scatters canvas").count() == 2  # lr (log axis) and optimizer
    assert page.locator("#scatters h3").all_inner_texts() == ["optimizer", "lr (log axis)"]
    # badges: the diverged run's status (with its reason), then the doctor's findings, filled in by polling
    card = page.locator(f'.card[data-run="{runs["sgd-huge-lr"]}"]')
    assert card.locator(".badge").first.inner_text() == "diverged"
    assert "learning rate too high" in card.locator(".badge").first.get_attribute("title")
    assert card.locator(".pill").count() == 0  # the badge stands for the status, not shown twice
    expect(page.locator("#live")).to_have_text("", timeout=60_000)  # the doctor is done
    key = re.search(r"#/study/(\w+)", page.url).group(1)
    with TestClient(create_app(trained["path"], [HOST])) as c:
        while _ok(c, f"/api/studies/{key}")["doctor"]["pending"]:
            time.sleep(0.2)
        api_runs = _ok(c, f"/api/studies/{key}")["runs"]
    for run in api_runs:
        shown = page.locator(f'.card[data-run="{run["id"]}"] .badge').all_inner_texts()
        assert shown == list(dict.fromkeys(b["name"] for b in run["badges"])), run["name"]
    assert "diverged" not in page.locator(f'.card[data-run="{runs["adam-1e-2"]}"]').inner_text()
    page.screenshot(path=str(tmp_path / "study.png"), full_page=True)

    # sorting the table reorders it: by best val/acc, descending, then ascending (missing last)
    def order():
        return [int(x) for x in page.locator("#runs-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.run)")]

    store = Store(trained["path"])
    best = {r: store.run(r)["best_metric"] for r in (runs["adam-1e-2"], runs["adam-1e-3"], runs["sgd-huge-lr"])}
    assert order() == sorted(best)  # by id at first
    page.click("#runs-table th[data-key=best_metric]")
    finished = sorted((r for r in best if best[r] is not None), key=lambda r: -best[r])
    assert order() == finished + [runs["sgd-huge-lr"]]
    page.click("#runs-table th[data-key=best_metric]")
    assert order() == finished[::-1] + [runs["sgd-huge-lr"]]
    page.click("#runs-table th[data-key='hp:lr']")
    assert order() == [runs["sgd-huge-lr"], runs["adam-1e-2"], runs["adam-1e-3"]]  # lr 50, 1e-2, 1e-3

    # the status filter hides the others
    page.select_option("#status-filter", "diverged")
    assert page.locator("#cards .card:visible").count() == 1
    assert page.locator("#runs-table tbody tr:visible").count() == 1
    assert "status=diverged" in page.url
    page.select_option("#status-filter", "")
    assert page.locator("#cards .card:visible").count() == 3

    # clicking a run opens its page with its charts
    page.click(f'.card[data-run="{runs["adam-1e-2"]}"] a.name')
    page.wait_for_selector("body[data-ready=run]", timeout=30_000)
    assert page.url.endswith(f"#/run/{runs['adam-1e-2']}")
    charts = page.locator("#run-charts .panel")
    titles = charts.locator("h3").all_inner_texts()
    for title in ("loss", "accuracy", "learning rate", "update/weight ratio per layer", "gradient norm"):
        assert title in titles
        assert page.locator(f'#run-charts .panel[data-chart="{title}"] canvas').count() == 1, title
    hparams = dict(zip(page.locator("#hparams dt").all_inner_texts(), page.locator("#hparams dd").all_inner_texts()))
    assert hparams["lr"] == "0.01" and hparams["model"] == "mlp" and hparams["width"] == "16"
    assert store.run(runs["adam-1e-2"])["checkpoint"] in page.locator("#result").inner_text()
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

    # the diverged run's page shows its finding with the evidence
    page.goto(f"{server}#/run/{runs['sgd-huge-lr']}")
    page.wait_for_selector("body[data-ready=run]", timeout=30_000)
    assert "learning rate too high" in page.locator(".findings").inner_text()
    assert problems == []  # no console errors or warnings, no failed request, on every page so far

    # an unknown run is an error message, not a broken page
    page.goto(f"{server}#/run/999999")
    page.wait_for_selector("body[data-ready=error]", timeout=30_000)
    assert "no run with id 999999" in page.locator(".error-box").inner_text()
    assert page.locator("a:text-is('back to the studies')").count() == 1
    # only the two 404s asked for (run and metrics), as the browser reports them
    assert sorted(problems) == sorted(
        [f"HTTP 404: {server}api/runs/999999", f"HTTP 404: {server}api/runs/999999/metrics"]
        + ["console error: Failed to load resource: the server responded with a status of 404 (Not Found)"] * 2)
    shots = os.environ.get("TRAINLAB_SCREENSHOTS")
    if shots:  # keep them to look at
        for name in ("study.png", "run.png"):
            shutil.copy(tmp_path / name, Path(shots) / name)
    assert (tmp_path / "study.png").stat().st_size > 10_000


@pytest.mark.slow
def test_runs_in_progress_update_without_a_reload(trained, tmp_path, chromium_page):
    """A run written while its study page and its run page are open shows its new state by polling alone."""
    from playwright.sync_api import expect

    from trainlab.dashboard import Server, bind

    path = tmp_path / "live.db"
    shutil.copy(trained["path"], path)
    writer = Store(path)  # a writer beside the dashboard, as a training is
    run = writer.create_run(name="in-progress", hparams={"lr": 0.1}, study="live")
    writer.log_metrics(run, [(s, 1, "train/loss", 2.3 - s / 100) for s in range(50)])
    server = Server(create_app(path, allowed_hosts("127.0.0.1"), poll_s=0.5), bind("127.0.0.1", 0)).start()
    base = f"http://127.0.0.1:{server.port}/"
    try:
        page, errors = chromium_page()
        page.goto(base + "#/")
        page.wait_for_selector("body[data-ready=studies]")
        page.click("#studies a:text-is('live')")
        page.wait_for_selector("body[data-ready=study]")
        card = page.locator(f'.card[data-run="{run}"]')
        expect(card.locator(".pill")).to_have_text("running")
        expect(page.locator("#live")).to_contain_text("live: runs in progress")
        page.evaluate("() => { window.stillHere = true; }")  # gone if the page reloaded

        writer.log_metrics(run, [(s, 2, "train/loss", 1.8 - s / 1000) for s in range(50, 100)]
                           + [(99, 2, "val/acc", 0.61)])
        writer.finish_run(run, "completed", best_metric=0.61, best_epoch=2, epochs=2)
        expect(card.locator(".pill")).to_have_text("completed", timeout=20_000)
        expect(card.locator(".card-sub")).to_contain_text("best 0.61")
        expect(page.locator(f'#runs-table tr[data-run="{run}"]')).to_contain_text("0.61")
        expect(page.locator("#live")).to_have_text("", timeout=20_000)  # polling stops when all are done
        assert page.evaluate("() => window.stillHere") is True

        # the run page of a running run follows it too
        second = writer.create_run(name="second", hparams={"lr": 0.2}, study="live")
        writer.log_metrics(second, [(s, 1, "train/loss", 2.0) for s in range(10)])
        page.goto(base + f"#/run/{second}")
        page.wait_for_selector("body[data-ready=run]")
        expect(page.locator("h1 .pill")).to_have_text("running")
        page.evaluate("() => { window.stillHere = true; }")
        writer.log_metrics(second, [(9, 1, "val/acc", 0.3)])
        writer.finish_run(second, "diverged", reason="loss became NaN at step 10 (lr 0.2)")
        expect(page.locator("h1 .badge")).to_have_text("diverged", timeout=20_000)
        expect(page.locator(".findings")).to_contain_text("loss became NaN at step 10")
        assert page.evaluate("() => window.stillHere") is True
        assert errors == []
    finally:
        server.stop()
        writer.close()


def test_a_badge_every_run_shares_is_shown_once_for_the_study(tmp_path):
    import json

    from trainlab.dashboard import api
    from trainlab.dashboard.cache import SeriesCache
    from trainlab.dashboard.findings import Doctor

    store = Store(tmp_path / "s.db")
    ids = [store.create_run(name=f"t{i}", hparams={"lr": 10.0 ** -i}, study="grid") for i in range(3)]
    for i in ids:
        store.log_metrics(i, [(s, 1, "train/loss", 2.0 - s / 10) for s in range(5)])
        store.finish_run(i, "completed")
    own = {ids[0]: [{"name": "overfitting", "diagnosis": "d", "evidence": "e", "action": "a", "confidence": "high"}]}

    def fake(store_, run):  # every run: train_longer; run 0 also overfitting
        return [{"name": "train_longer", "diagnosis": "still learning", "evidence": f"run {run['id']}",
                 "action": "more epochs", "confidence": "medium"}] + own.get(run["id"], [])

    doctor = Doctor(store, diagnose=fake)
    for i in ids:
        doctor.findings(store.run(i), wait=True)
    key = str(store.runs(study="grid")[0]["study_id"])
    page = json.loads(api.study(store, SeriesCache(store), doctor, key)[0])
    assert [(f["name"], f["runs"]) for f in page["shared_findings"]] == [("train_longer", 3)]
    badges = {r["id"]: [b["name"] for b in r["badges"]] for r in page["runs"]}
    assert badges == {ids[0]: ["overfitting"], ids[1]: [], ids[2]: []}
