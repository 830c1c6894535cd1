"""The command center's web app: a JSON API over the run store and one static page. It only reads.

`create_app(store_or_url, allowed_hosts)` builds the ASGI app (Starlette) around a store handed in,
as optuna-dashboard's `create_app(storage)` does; `server.py` binds and serves it. This module holds
the routes: each parses its request and hands it to `api` (what the answers hold), which reads
through `cache` (the series cache); `security` guards the whole app.

API (GET only; every error is JSON {"error": "..."}):

    GET /api/info                                  store, poll interval, ratio band
    GET /api/studies                               every study, plus "(no study)" when runs lack one
    GET /api/studies/{key}?points=N&status=S       one study (key: its id, "none" for runs filed under no
                                                   study, "checks" for check runs under none): runs with
                                                   their downsampled loss and val/acc, badges, the varying
                                                   hyperparameters and how to draw each
    GET /api/studies/{key}/importance              Optuna's hyperparameter importances for the study
                                                   (when trainlab search made it), with the trial counts
    GET /api/compare?runs=1,2,3&key=K&points=N     one metric of several runs, for a chart with shared axes
    GET /api/runs/{id}                             one run: hyperparameters, result, checkpoint, findings
    GET /api/runs/{id}/metrics?points=N            every metric of the run, downsampled

Safety: `security.Guard` checks the `Host` header (DNS rebinding), allows GET/HEAD only and adds the
security headers. No endpoint takes a file path: the page's files are read once from the package into
a dict, and only names in it are served. The store is opened read-only (`Store(db, read_only=True)`:
a SQLite file with `mode=ro`), so the app cannot write it even by mistake, and WAL lets it read while
trainings write. Unknown ids give 404, malformed parameters 400.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from importlib import resources
from typing import Any

from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trainlab.dashboard import api
from trainlab.dashboard.cache import SeriesCache
from trainlab.dashboard.downsample import MAX_POINTS
from trainlab.dashboard.findings import Doctor
from trainlab.dashboard.importance import Importance
from trainlab.dashboard.security import LOOPBACK_HOSTS, AllowedHosts, Guard
from trainlab.store import RUN_STATUSES, RunNotFound, Store

__all__ = ["create_app", "open_read_only", "LOOPBACK_HOSTS", "POLL_S"]

log = logging.getLogger(__name__)

POLL_S = 3.0           # seconds between the page's refreshes while runs are in progress

_STATIC = {  # name -> media type; the only files ever served
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
_ID = re.compile(r"[0-9]{1,18}")


def open_read_only(db: str | os.PathLike | None) -> Store:
    """A Store that cannot write, ``Store(db, read_only=True)``: SQLite files opened with ``mode=ro``,
    PostgreSQL in read-only transactions.

    Raises ValueError when the SQLite file does not exist (a dashboard never creates a store), holds
    no store, or cannot be opened.
    """
    return Store(db, read_only=True)


# ------------------------------------------------------------------------------ request parsing


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


def _run_ids(text: str) -> list[int]:
    parts = text.split(",")
    if not 1 <= len(parts) <= api.COMPARE_MAX_RUNS or not all(_ID.fullmatch(p) for p in parts):
        raise _BadRequest(f"runs must be 1 to {api.COMPARE_MAX_RUNS} run ids separated by commas, got {text[:80]!r}")
    return [int(p) for p in parts]


def _metric_key(text: str) -> str:
    if not 1 <= len(text) <= 200:
        raise _BadRequest(f"key must be a metric name of 1 to 200 characters, got {text[:80]!r}")
    return text


def _run_id(text: str) -> int:
    if not _ID.fullmatch(text):
        raise _BadRequest(f"run id must be a non-negative integer, got {text!r}")
    return int(text)


# ------------------------------------------------------------------------------------ the app


def create_app(store_or_url: Store | str | os.PathLike, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS, *,
               poll_s: float = POLL_S) -> Guard:
    """The dashboard's ASGI app over a store (a Store, or a URL/path opened with `open_read_only`).

    ``allowed_hosts``: the values the `Host` header may take, as "name" (any port) or "name:port";
    IPv6 addresses in brackets ("[::1]"). Anything else is answered 400.

    >>> app = create_app("trainlab.db")              # then: uvicorn.run(app, host="127.0.0.1")
    """
    store = store_or_url if isinstance(store_or_url, Store) else open_read_only(store_or_url)
    allowed = AllowedHosts(allowed_hosts)
    if not isinstance(poll_s, (int, float)) or not poll_s > 0:
        raise ValueError(f"poll_s must be a positive number of seconds, got {poll_s!r}")
    cache = SeriesCache(store)
    doctor = Doctor(store)
    importance = Importance(store)
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
        return _json(api.info(store, poll_s))

    def studies(request: Request) -> Response:
        _params(request, {})
        return _json(api.studies(store))

    def study(request: Request) -> Response:
        key = request.path_params["key"]
        params = _params(request, {"points": _points, "status": _status})
        _study_key(key)
        found = api.study(store, cache, doctor, key, **params)
        if found is None:
            raise HTTPException(404, f"no study with id {key}")
        text, pending = found
        response = _json_text(text)
        response.background = BackgroundTask(doctor.queue, pending)  # not competing with this answer
        return response

    def study_importance(request: Request) -> Response:
        key = request.path_params["key"]
        _params(request, {})
        _study_key(key)
        if key in (api.NO_STUDY, api.CHECKS):
            return _json({"available": False, "study": None, "importances": [], "trials": {}, "completed": 0,
                          "few": False, "note": "runs filed under no study have no Optuna study"})
        found = [s for s in store.studies(kind=None) if str(s["id"]) == key]
        if not found:
            raise HTTPException(404, f"no study with id {key}")
        return _json(importance.get(found[0]["name"]))

    def compare(request: Request) -> Response:
        params = _params(request, {"runs": _run_ids, "key": _metric_key, "points": _points})
        if "runs" not in params:
            raise _BadRequest("runs is required: run ids separated by commas")
        return _json_text(api.compare(store, cache, params.pop("runs"), **params))

    def run(request: Request) -> Response:
        run_id = _run_id(request.path_params["run_id"])
        _params(request, {})
        return _json(api.run(store, doctor, run_id))

    def run_metrics(request: Request) -> Response:
        run_id = _run_id(request.path_params["run_id"])
        params = _params(request, {"points": _points})
        return _json_text(api.run_metrics(store, cache, run_id, **params))

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static_file, methods=["GET"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/studies", studies, methods=["GET"]),
        Route("/api/studies/{key}", study, methods=["GET"]),
        Route("/api/studies/{key}/importance", study_importance, methods=["GET"]),
        Route("/api/compare", compare, methods=["GET"]),
        Route("/api/runs/{run_id}", run, methods=["GET"]),
        Route("/api/runs/{run_id}/metrics", run_metrics, methods=["GET"]),
    ]
    handlers = {HTTPException: _http_error, RunNotFound: _not_found, OperationalError: _store_error,
                Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.store = store
    return Guard(app, allowed)


def _study_key(key: str) -> None:
    if key not in (api.NO_STUDY, api.CHECKS) and not _ID.fullmatch(key):
        raise _BadRequest(f"study key must be a study id, {api.NO_STUDY!r} or {api.CHECKS!r}, got {key!r}")


def _json(content: Any, status_code: int = 200) -> Response:
    return _json_text(api.dumps(content), status_code)


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
