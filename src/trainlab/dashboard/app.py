"""The command center's web app: a JSON API over the run store and one static page. It only reads.

`create_app(store_or_url, allowed_hosts)` builds the ASGI app (Starlette) around a store handed in,
as optuna-dashboard's `create_app(storage)` does; `server.py` binds and serves it.

API (GET only; every error is JSON {"error": "..."}):

    GET /api/info                                  store, poll interval, ratio band
    GET /api/studies                               every study, plus "(no study)" when runs lack one
    GET /api/studies/{key}?points=N&status=S       one study (key: its id, or "none"): runs with their
                                                   downsampled loss and val/acc, badges, the varying
                                                   hyperparameters and how to draw each
    GET /api/runs/{id}                             one run: hyperparameters, result, checkpoint, findings
    GET /api/runs/{id}/metrics?points=N            every metric of the run, downsampled

Safety, in one middleware: the `Host` header must name an allowed host, else 400 (a page on another
site that rebinds its DNS name to 127.0.0.1 gets nothing, the attack on MLflow's server in
CVE-2025-14279); any method but GET/HEAD gets 405; responses say `nosniff`, forbid framing and
restrict scripts to this origin. No endpoint takes a file path: the page's files are read once from
the package into a dict, and only names in it are served. A SQLite store is opened read-only
(`mode=ro`), so the app cannot write the file even by mistake, and WAL lets it read while trainings
write. Unknown ids give 404, malformed parameters 400.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trainlab.dashboard.downsample import MAX_POINTS, json_safe, plot_series
from trainlab.dashboard.findings import Doctor, status_findings
from trainlab.doctor.rules import RATIO_BAND
from trainlab.store import RUN_STATUSES, RunNotFound, Store, normalize_url

__all__ = ["create_app", "open_read_only", "LOOPBACK_HOSTS", "RATIO_BAND", "POLL_S", "STUDY_POINTS",
           "NO_STUDY", "NO_STUDY_NAME"]

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
POLL_S = 3.0           # seconds between the page's refreshes while runs are in progress
STUDY_POINTS = 150     # buckets per series on the study page's small charts
STUDY_DIGITS = 5       # significant digits of the study page's values (run pages get them all)
NO_STUDY = "none"      # the key of the pseudo-study holding runs filed under no study
NO_STUDY_NAME = "(no study)"
LOSS_KEY, VAL_KEY = "train/loss", "val/acc"
LOG_SPAN = 10.0        # a positive hyperparameter whose max/min reaches this is drawn on a log axis
_READ_THREADS = min(4, os.cpu_count() or 1)  # threads reading a cold study's series
_RUNS_PER_THREAD = 25  # fewer runs than this per thread are read in one

_STATIC = {  # name -> media type; the only files ever served
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
]
_ID = re.compile(r"[0-9]{1,18}")


def open_read_only(db: str | os.PathLike | None) -> Store:
    """A Store that cannot write: SQLite files opened with ``mode=ro``, PostgreSQL in read-only transactions.

    Raises ValueError when the SQLite file does not exist (a dashboard never creates a store) or
    the store cannot be opened.
    """
    url = normalize_url(db)
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return Store(url)
        path = os.path.abspath(database)
        if not os.path.isfile(path):
            raise ValueError(f"db: no store at {path} (train something first, or pass --db)")
        return Store(f"sqlite:///file:{quote(path)}?mode=ro&uri=true")
    if parsed.get_backend_name() == "postgresql" and "options" not in parsed.query:
        url = parsed.update_query_dict({"options": "-c default_transaction_read_only=on"}) \
            .render_as_string(hide_password=False)
    return Store(url)


# ------------------------------------------------------------------------------------- helpers


class _BadRequest(HTTPException):
    def __init__(self, detail: str):
        super().__init__(400, detail)


def _params(request: Request, known: dict[str, Any]) -> dict[str, Any]:
    """The query parameters, each parsed by ``known[name](text)``; unknown or repeated ones are 400."""
    out: dict[str, Any] = {}
    for name, value in request.query_params.multi_items():
        if name not in known:
            raise _BadRequest(f"unknown parameter {name!r}; known: {', '.join(known) or 'none'}")
        if name in out:
            raise _BadRequest(f"parameter {name!r} given twice")
        out[name] = known[name](value)
    return out


def _points(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text) or not 2 <= int(text) <= MAX_POINTS:
        raise _BadRequest(f"points must be an integer from 2 to {MAX_POINTS}, got {text!r}")
    return int(text)


def _status(text: str) -> str:
    if text not in RUN_STATUSES:
        raise _BadRequest(f"status must be one of {', '.join(RUN_STATUSES)}; got {text!r}")
    return text


def _run_id(text: str) -> int:
    if not _ID.fullmatch(text):
        raise _BadRequest(f"run id must be a non-negative integer, got {text!r}")
    return int(text)


def _axis(values: list[Any]) -> dict[str, Any]:
    """How to draw a hyperparameter on an x axis: log when positive numbers span LOG_SPAN or more."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in present):
        lo, hi = min(present), max(present)
        return {"axis": "log" if lo > 0 and hi / lo >= LOG_SPAN else "linear"}
    labels = sorted({json.dumps(v, sort_keys=True) if not isinstance(v, str) else v for v in present})
    return {"axis": "category", "categories": labels}


def _varying(runs: list[dict]) -> list[dict[str, Any]]:
    """The hyperparameters whose values differ between runs, in first-seen order, with their axis."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run["hparams"]))
    out = []
    for name in names:
        values = [run["hparams"].get(name) for run in runs]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            out.append({"name": name, **_axis(values)})
    return out


_RUN_FIELDS = ("id", "name", "kind", "study", "status", "reason", "created", "updated", "finished", "best_metric",
               "best_epoch", "epochs", "seed", "host", "summary", "hparams", "checkpoint")


def _run_json(run: dict) -> dict[str, Any]:
    return {k: run.get(k) for k in _RUN_FIELDS}


class _SeriesCache:
    """Rendered series per (run, keys, points, render), valid while the run's `updated` time is unchanged.

    Every write to a run's metrics or row moves its `updated` time, so a finished run is read from
    the database, downsampled and turned into JSON once; a running one again only when it has
    written since. A study page of 200 runs is then mostly string joining.
    """

    def __init__(self, store: Store, max_entries: int = 20_000):
        self.store = store
        self.max_entries = max_entries
        self.threads = 1 if store.in_memory else _READ_THREADS
        self._entries: OrderedDict[tuple, tuple[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, runs: list[dict], keys: tuple[str, ...], points: int,
            render: Callable[[dict[str, dict]], Any]) -> dict[int, Any]:
        """run id -> render({key: Store.metric_buckets series}) for each run, from cache or the store."""
        out: dict[int, Any] = {}
        stale = []
        with self._lock:
            for run in runs:
                slot = (run["id"], keys, points, render)
                entry = self._entries.get(slot)
                if entry is not None and entry[0] == run["updated"]:
                    self._entries.move_to_end(slot)
                    out[run["id"]] = entry[1]
                else:
                    stale.append(run)
        if stale:
            # read after the runs' rows: data at least as new as `updated`, never cached as older
            fresh = self._read([r["id"] for r in stale], keys, points)
            rendered = {r["id"]: render(fresh.get(r["id"], {})) for r in stale}
            with self._lock:
                for run in stale:
                    out[run["id"]] = rendered[run["id"]]
                    self._entries[(run["id"], keys, points, render)] = (run["updated"], rendered[run["id"]])
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return out


    def _read(self, run_ids: list[int], keys: tuple[str, ...], points: int) -> dict[int, dict]:
        """Store.metric_buckets, split over threads when there are many runs: SQLite and PostgreSQL
        work without the GIL, so a cold study page uses every core (each part is its own snapshot,
        consistent per run, which is all a run's chart needs)."""
        parts = min(self.threads, len(run_ids) // _RUNS_PER_THREAD)
        if parts < 2:
            return self.store.metric_buckets(run_ids, keys, points)
        out: dict[int, dict] = {}
        with ThreadPoolExecutor(parts, thread_name_prefix="trainlab-read") as pool:
            for part in pool.map(lambda ids: self.store.metric_buckets(ids, keys, points),
                                 [run_ids[i::parts] for i in range(parts)]):
                out.update(part)
        return out


def _dumps(obj: Any, *, safe: bool = False) -> str:
    """Compact JSON; ``safe``: `obj` is known to hold no NaN/Inf (plot_series output), so skip json_safe."""
    return json.dumps(obj if safe else json_safe(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _study_series(got: dict[str, dict]) -> str:
    """A run's series for the study page's small chart, as the JSON text of '"loss":...,"val":...'.

    5 significant digits (a 260-pixel chart shows 3), and only what the chart draws.
    """
    loss = val = None
    if LOSS_KEY in got:
        loss = plot_series(got[LOSS_KEY], smooth=True, digits=STUDY_DIGITS)
        del loss["mean"]
    if VAL_KEY in got:
        val = plot_series(got[VAL_KEY], digits=STUDY_DIGITS)
        del val["lo"], val["hi"]
    return _dumps({"loss": loss, "val": val}, safe=True)[1:-1]


def _run_series(got: dict[str, dict]) -> str:
    """Every series of a run at full precision, as the JSON text of an object key -> plot arrays."""
    return _dumps({k: plot_series(v, smooth=k == LOSS_KEY) for k, v in got.items()}, safe=True)


# ------------------------------------------------------------------------------------ the app


def create_app(store_or_url: Store | str | os.PathLike, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS, *,
               poll_s: float = POLL_S) -> Starlette:
    """The dashboard's ASGI app over a store (a Store, or a URL/path opened with `open_read_only`).

    ``allowed_hosts``: the values the `Host` header may take, as "name" (any port) or "name:port";
    IPv6 addresses in brackets ("[::1]"). Anything else is answered 400.

    >>> app = create_app("trainlab.db")              # then: uvicorn.run(app, host="127.0.0.1")
    """
    store = store_or_url if isinstance(store_or_url, Store) else open_read_only(store_or_url)
    allowed = _AllowedHosts(allowed_hosts)
    if not isinstance(poll_s, (int, float)) or not poll_s > 0:
        raise ValueError(f"poll_s must be a positive number of seconds, got {poll_s!r}")
    cache = _SeriesCache(store)
    doctor = Doctor(store)
    static = {}
    folder = resources.files(__package__) / "static"
    for name in _STATIC:
        static[name] = folder.joinpath(name).read_bytes()

    def page(request: Request) -> Response:
        return _file("index.html")

    def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            raise HTTPException(404, f"no file {name!r}")
        return _file(name)

    def _file(name: str) -> Response:
        return Response(static[name], media_type=_STATIC[name], headers={"cache-control": "no-cache"})

    def info(request: Request) -> Response:
        _params(request, {})
        return _json({"store": repr(store), "poll_s": poll_s, "ratio_band": list(RATIO_BAND),
                      "statuses": list(RUN_STATUSES), "no_study": NO_STUDY})

    def studies(request: Request) -> Response:
        _params(request, {})
        best = {s["id"]: s["best_metric"] for s in store.studies()}  # training runs' results only
        rows = []
        for s in store.studies(kind=None):
            rows.append({"key": str(s["id"]), "name": s["name"], "runs": s["runs"], "status": s["status"],
                         "best_metric": best.get(s["id"]), "last_activity": s["last_activity"],
                         "created": s["created"]})
        loose = [r for r in store.runs(kind=None) if r["study_id"] is None]
        if loose:
            status: dict[str, int] = {}
            for r in loose:
                status[r["status"]] = status.get(r["status"], 0) + 1
            results = [r["best_metric"] for r in loose if r["kind"] == "train" and r["best_metric"] is not None]
            rows.append({"key": NO_STUDY, "name": NO_STUDY_NAME, "runs": len(loose), "status": status,
                         "best_metric": max(results) if results else None,
                         "last_activity": max(r["updated"] for r in loose), "created": min(r["created"] for r in loose)})
        return _json({"studies": rows})

    def study(request: Request) -> Response:
        key = request.path_params["key"]
        params = _params(request, {"points": _points, "status": _status})
        if key == NO_STUDY:
            name = NO_STUDY_NAME
            runs = [r for r in store.runs(kind=None) if r["study_id"] is None]
        else:
            if not _ID.fullmatch(key):
                raise _BadRequest(f"study key must be a study id or {NO_STUDY!r}, got {key!r}")
            found = [s for s in store.studies(kind=None) if s["id"] == int(key)]
            if not found:
                raise HTTPException(404, f"no study with id {key}")
            name = found[0]["name"]
            runs = store.runs(study=name, kind=None)
        counts: dict[str, int] = {}
        for r in runs:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        varying = _varying(runs)
        if "status" in params:
            runs = [r for r in runs if r["status"] == params["status"]]
        series = cache.get(runs, (LOSS_KEY, VAL_KEY), params.get("points", STUDY_POINTS), _study_series)
        metrics = {r["hparams"].get("early_stop_metric") for r in runs}
        out_runs, pending = [], []
        for r in runs:
            item = _run_json(r)
            badges = doctor.findings(r, queue=False)
            item["doctor_pending"] = badges is None
            if badges is None:  # diagnosed in the background once this answer is sent; the page asks again
                badges = status_findings(r)
                pending.append(r)
            item["badges"] = badges
            out_runs.append(_dumps(item)[:-1] + "," + series[r["id"]] + "}")  # + the cached JSON of its series
        head = _dumps({
            "study": {"key": key, "name": name},
            "status_counts": counts,
            "hparams": varying,
            "metric": metrics.pop() if len(metrics) == 1 and None not in metrics else "best metric",
            "running": any(r["status"] == "running" for r in runs),
            "doctor": {"available": doctor.available, "pending": len(pending)},
        })
        response = _json_text(head[:-1] + ',"runs":[' + ",".join(out_runs) + "]}")
        response.background = BackgroundTask(doctor.queue, pending)  # not competing with this answer
        return response

    def run(request: Request) -> Response:
        run_id = _run_id(request.path_params["run_id"])
        _params(request, {})
        r = store.run(run_id)
        item = _run_json(r)
        item["findings"] = doctor.findings(r, wait=True)
        item["doctor"] = doctor.available
        item["study_key"] = NO_STUDY if r["study_id"] is None else str(r["study_id"])
        item["ratio_band"] = list(RATIO_BAND)
        return _json(item)

    def run_metrics(request: Request) -> Response:
        run_id = _run_id(request.path_params["run_id"])
        params = _params(request, {"points": _points})
        r = store.run(run_id)
        keys = tuple(store.metric_keys(run_id))
        series = cache.get([r], keys, params.get("points", MAX_POINTS), _run_series)[run_id] if keys else "{}"
        head = _dumps({"run": run_id, "status": r["status"], "updated": r["updated"]})
        return _json_text(head[:-1] + ',"series":' + series + "}")

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static_file, methods=["GET"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/studies", studies, methods=["GET"]),
        Route("/api/studies/{key}", study, methods=["GET"]),
        Route("/api/runs/{run_id}", run, methods=["GET"]),
        Route("/api/runs/{run_id}/metrics", run_metrics, methods=["GET"]),
    ]
    handlers = {HTTPException: _http_error, RunNotFound: _not_found, sa.exc.OperationalError: _store_error,
                Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.store = store
    return _Guard(app, allowed)


def _json(content: Any, status_code: int = 200) -> Response:
    return _json_text(_dumps(content), status_code)


def _json_text(text: str, status_code: int = 200) -> Response:
    return Response(text.encode(), status_code=status_code, media_type="application/json",
                    headers={"cache-control": "no-store"})


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return _json({"error": exc.detail}, exc.status_code)


async def _not_found(request: Request, exc: RunNotFound) -> Response:
    return _json({"error": f"no run with id {exc.run_id}"}, 404)


async def _store_error(request: Request, exc: Exception) -> Response:
    detail = str(getattr(exc, "orig", exc)).splitlines()[0]
    log.warning("store read failed: %s", detail)
    return _json({"error": f"the store could not be read, try again: {detail}"}, 503)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("dashboard: %s %s failed", request.method, request.url.path)
    return _json({"error": f"internal error: {type(exc).__name__}"}, 500)


# ---------------------------------------------------------------------------- the guard


class _AllowedHosts:
    def __init__(self, hosts: Iterable[str]):
        if isinstance(hosts, str):
            hosts = [hosts]
        self.any_port: set[str] = set()
        self.exact: set[str] = set()
        for host in hosts:
            host = host.strip().lower()
            if not host:
                raise ValueError("allowed_hosts: empty host name")
            if re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]]+):[0-9]+", host):
                self.exact.add(host)
            else:
                self.any_port.add(host)
        if not self.any_port and not self.exact:
            raise ValueError("allowed_hosts: give at least one host, e.g. 127.0.0.1")

    def __contains__(self, header: str) -> bool:
        header = header.strip().lower()
        if header in self.exact:
            return True
        match = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(:[0-9]+)?", header)
        return match is not None and match.group(1) in self.any_port


class _Guard:
    """ASGI middleware: Host header check (400), GET/HEAD only (405), security headers on every response."""

    def __init__(self, app: Starlette, allowed: _AllowedHosts):
        self.app = app
        self.allowed = allowed
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = ""
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1")
                break
        if host not in self.allowed:
            if scope["type"] != "http":
                return await send({"type": "websocket.close", "code": 1008})
            return await _reply(send, 400, f"host {host!r} is not allowed (DNS rebinding protection); "
                                           "open the address the dashboard printed")
        if scope["type"] != "http":
            return await send({"type": "websocket.close", "code": 1008})  # no websockets here
        if scope["method"] not in ("GET", "HEAD"):
            return await _reply(send, 405, f"method {scope['method']} not allowed: the dashboard only reads",
                                [(b"allow", b"GET, HEAD")])

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _reply(send, status: int, error: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers, *_SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})
