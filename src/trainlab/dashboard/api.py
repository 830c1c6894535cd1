"""What the dashboard's API answers, assembled from the store: studies, a study's runs with their series
and badges, a run, its metrics. No HTTP here: `app` parses requests and wraps these in responses.

A study page is built as JSON text, not as one dict: each run's series come from the `SeriesCache` as
ready JSON, so a page of 200 runs is mostly string joining.
"""

from __future__ import annotations

import json
import math
from typing import Any

from trainlab.dashboard.cache import SeriesCache
from trainlab.dashboard.downsample import MAX_POINTS, json_safe, plot_series
from trainlab.dashboard.findings import Doctor, status_findings
from trainlab.doctor.ratio import RATIO_BAND
from trainlab.store import RUN_STATUSES, Store

__all__ = ["STUDY_POINTS", "COMPARE_POINTS", "COMPARE_MAX_RUNS", "NO_STUDY", "NO_STUDY_NAME", "CHECKS", "CHECKS_NAME",
           "LOSS_KEY", "VAL_KEY", "LOG_SPAN", "info", "studies", "study", "run", "run_metrics", "compare", "axis",
           "varying", "task_metric", "run_fields", "dumps", "study_series", "run_series", "pseudo_study"]

STUDY_POINTS = 150     # buckets per series on the study page's small charts
STUDY_DIGITS = 5       # significant digits of the study page's values (run pages get them all)
NO_STUDY = "none"      # the key of the pseudo-study holding runs filed under no study
NO_STUDY_NAME = "(no study)"
CHECKS = "checks"      # the key of the pseudo-study holding the check runs filed under no study
CHECKS_NAME = "(checks)"
COMPARE_POINTS = 500   # buckets per series on the comparison chart
COMPARE_MAX_RUNS = 24  # runs one comparison may overlay
LOSS_KEY, VAL_KEY = "train/loss", "val/acc"
LOG_SPAN = 10.0        # a positive hyperparameter whose max/min reaches this is drawn on a log axis

_RUN_FIELDS = ("id", "name", "kind", "study", "status", "reason", "created", "updated", "finished", "best_metric",
               "best_epoch", "epochs", "seed", "host", "summary", "hparams", "checkpoint")


# ------------------------------------------------------------------------------- the answers


def info(store: Store, poll_s: float) -> dict[str, Any]:
    """GET /api/info: the store, the poll interval, the update/weight ratio band, the statuses."""
    return {"store": repr(store), "poll_s": poll_s, "ratio_band": list(RATIO_BAND),
            "statuses": list(RUN_STATUSES), "no_study": NO_STUDY, "checks": CHECKS,
            "compare_max_runs": COMPARE_MAX_RUNS}


def pseudo_study(run: dict) -> str | None:
    """The pseudo-study a run filed under no study belongs to (CHECKS for checks, else NO_STUDY); None
    when the run has a study."""
    if run["study_id"] is not None:
        return None
    return CHECKS if run["kind"] == "check" else NO_STUDY


def _loose(store: Store, key: str) -> list[dict]:
    return [r for r in store.runs(kind=None) if pseudo_study(r) == key]


def studies(store: Store) -> dict[str, Any]:
    """GET /api/studies: every study, plus the pseudo-study NO_STUDY when some runs have none."""
    best = {s["id"]: s["best_metric"] for s in store.studies()}  # training runs' results only
    rows = []
    for s in store.studies(kind=None):
        rows.append({"key": str(s["id"]), "name": s["name"], "runs": s["runs"], "status": s["status"],
                     "best_metric": best.get(s["id"]), "last_activity": s["last_activity"],
                     "created": s["created"]})
    every = store.runs(kind=None)
    for key, name in ((NO_STUDY, NO_STUDY_NAME), (CHECKS, CHECKS_NAME)):
        loose = [r for r in every if pseudo_study(r) == key]
        if not loose:
            continue
        status: dict[str, int] = {}
        for r in loose:
            status[r["status"]] = status.get(r["status"], 0) + 1
        results = [r["best_metric"] for r in loose if r["kind"] == "train" and r["best_metric"] is not None]
        rows.append({"key": key, "name": name, "runs": len(loose), "status": status,
                     "best_metric": max(results) if results else None,
                     "last_activity": max(r["updated"] for r in loose), "created": min(r["created"] for r in loose)})
    return {"studies": rows}


def study(store: Store, cache: SeriesCache, doctor: Doctor, key: str, *, points: int = STUDY_POINTS,
          status: str | None = None) -> tuple[str, list[dict]] | None:
    """GET /api/studies/{key}: the JSON text of one study's page and the runs still to diagnose, or None
    when no study has this key (NO_STUDY, CHECKS, or a study id as digits). ``status`` keeps only those
    runs; the status counts and varying hyperparameters are the whole study's."""
    if key in (NO_STUDY, CHECKS):
        name = NO_STUDY_NAME if key == NO_STUDY else CHECKS_NAME
        runs = _loose(store, key)
    else:
        found = [s for s in store.studies(kind=None) if s["id"] == int(key)]
        if not found:
            return None
        name = found[0]["name"]
        runs = store.runs(study=name, kind=None)
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    hparams = varying(runs)
    if status is not None:
        runs = [r for r in runs if r["status"] == status]
    head_metric = task_metric(runs)
    series = cache.get(runs, (LOSS_KEY, f"val/{head_metric}"), points, study_series)
    metrics = {r["hparams"].get("early_stop_metric") for r in runs}
    items, pending = [], []
    for r in runs:
        item = run_fields(r)
        badges = doctor.findings(r, queue=False)
        item["doctor_pending"] = badges is None
        if badges is None:  # diagnosed in the background once this answer is sent; the page asks again
            badges = status_findings(r)
            pending.append(r)
        item["badges"] = badges
        items.append(item)
    shared = _shared_badges(items) if not pending else []
    out_runs = [dumps(item)[:-1] + "," + series[item["id"]] + "}" for item in items]  # + the cached JSON of its series
    head = dumps({
        "study": {"key": key, "name": name},
        "status_counts": counts,
        "hparams": hparams,
        "metric": metrics.pop() if len(metrics) == 1 and None not in metrics else "best metric",
        "val_key": f"val/{head_metric}", "test_key": f"test/{head_metric}",
        "running": any(r["status"] == "running" for r in runs),
        "doctor": {"available": doctor.available, "pending": len(pending)},
        "shared_findings": shared,
    })
    return head[:-1] + ',"runs":[' + ",".join(out_runs) + "]}", pending


def run(store: Store, doctor: Doctor, run_id: int) -> dict[str, Any]:
    """GET /api/runs/{id}: one run with its findings (waiting for the doctor); RunNotFound if absent."""
    r = store.run(run_id)
    item = run_fields(r)
    item["findings"] = doctor.findings(r, wait=True)
    item["doctor"] = doctor.available
    item["study_key"] = pseudo_study(r) or str(r["study_id"])
    item["ratio_band"] = list(RATIO_BAND)
    return item


def run_metrics(store: Store, cache: SeriesCache, run_id: int, points: int = MAX_POINTS) -> str:
    """GET /api/runs/{id}/metrics: the JSON text of every series of a run; RunNotFound if absent."""
    r = store.run(run_id)
    keys = tuple(store.metric_keys(run_id))
    series = cache.get([r], keys, points, run_series)[run_id] if keys else "{}"
    head = dumps({"run": run_id, "status": r["status"], "updated": r["updated"]})
    return head[:-1] + ',"series":' + series + "}"


def compare(store: Store, cache: SeriesCache, run_ids: list[int], key: str = LOSS_KEY,
            points: int = COMPARE_POINTS) -> str:
    """GET /api/compare?runs=1,2&key=K: the JSON text of one metric of several runs, for one chart with
    shared axes: {"key", "keys" (every metric any of the runs has, for the page's choice), "runs": [{id,
    name, status, study, best_metric, series: plot arrays of `key` or null}]}. RunNotFound if one is absent."""
    runs = [store.run(i) for i in dict.fromkeys(run_ids)]
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(store.metric_keys(r["id"])))
    series = cache.get(runs, (key,), points, compare_series)
    items = [dumps({k: r.get(k) for k in ("id", "name", "status", "study", "best_metric")})[:-1]
             + ',"series":' + series[r["id"]] + "}" for r in runs]
    head = dumps({"key": key, "keys": sorted(keys)})
    return head[:-1] + ',"runs":[' + ",".join(items) + "]}"


# ------------------------------------------------------------------------------------ helpers


def _shared_badges(items: list[dict]) -> list[dict[str, Any]]:
    """The doctor's badges every run of the study has (2+ runs), taken off each run and returned once, with
    the number of runs: a badge all runs share describes the study (`doctor.diagnose.shared_names`)."""
    per_run = {i["id"]: [b["name"] for b in i["badges"] if b.get("source") == "doctor"] for i in items}
    from trainlab.doctor.diagnose import shared_names

    common = shared_names(per_run)
    if not common:
        return []
    out = []
    for name in sorted(common):
        first = next(b for b in items[0]["badges"] if b["name"] == name)
        out.append({**first, "runs": len(items), "evidence": f"all {len(items)} runs; e.g. run {items[0]['id']}: "
                                                           f"{first.get('evidence') or ''}"})
    for i in items:
        i["badges"] = [b for b in i["badges"] if not (b.get("source") == "doctor" and b["name"] in common)]
    return out


def axis(values: list[Any]) -> dict[str, Any]:
    """How to draw a hyperparameter on an x axis: log when positive numbers span LOG_SPAN or more.

    >>> axis([1e-3, 0.1])
    {'axis': 'log'}
    """
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in present):
        lo, hi = min(present), max(present)
        return {"axis": "log" if lo > 0 and hi / lo >= LOG_SPAN else "linear"}
    labels = sorted({json.dumps(v, sort_keys=True) if not isinstance(v, str) else v for v in present})
    return {"axis": "category", "categories": labels}


def varying(runs: list[dict]) -> list[dict[str, Any]]:
    """The hyperparameters whose values differ between runs, in first-seen order, with their axis."""
    names: dict[str, None] = {}
    for r in runs:
        names.update(dict.fromkeys(r["hparams"]))
    out = []
    for name in names:
        values = [r["hparams"].get(name) for r in runs]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            out.append({"name": name, **axis(values)})
    return out


def run_fields(run: dict) -> dict[str, Any]:
    """The fields of a stored run that the page shows."""
    return {k: run.get(k) for k in _RUN_FIELDS}


def dumps(obj: Any, *, safe: bool = False) -> str:
    """Compact JSON; ``safe``: `obj` is known to hold no NaN/Inf (plot_series output), so skip json_safe."""
    return json.dumps(obj if safe else json_safe(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def task_metric(runs: list[dict]) -> str:
    """The headline metric of the runs' task (what fit() stores in the summary's "metrics": acc, mse, ...):
    the study's charts and columns show it; "acc" for runs from before it was stored or for mixed tasks."""
    heads = {((r.get("summary") or {}).get("metrics") or {}).get("headline", "acc") for r in runs}
    return heads.pop() if len(heads) == 1 else "acc"


def study_series(got: dict[str, dict]) -> str:
    """A run's series for the study page's small chart, as the JSON text of '"loss":...,"val":...'; "val" is
    the other key asked for (val/acc, or the task's headline metric, e.g. val/mse).

    5 significant digits (a 260-pixel chart shows 3), and only what the chart draws.
    """
    loss = val = None
    val_key = next((k for k in got if k != LOSS_KEY), VAL_KEY)
    if LOSS_KEY in got:
        loss = plot_series(got[LOSS_KEY], smooth=True, digits=STUDY_DIGITS)
        del loss["mean"]
    if val_key in got:
        val = plot_series(got[val_key], digits=STUDY_DIGITS)
        del val["lo"], val["hi"]
    return dumps({"loss": loss, "val": val}, safe=True)[1:-1]


def run_series(got: dict[str, dict]) -> str:
    """Every series of a run at full precision, as the JSON text of an object key -> plot arrays."""
    return dumps({k: plot_series(v, smooth=k == LOSS_KEY) for k, v in got.items()}, safe=True)


def compare_series(got: dict[str, dict]) -> str:
    """One series of a run for the comparison chart (its only key), as JSON text; "null" when absent."""
    if not got:
        return "null"
    (buckets,) = got.values()
    plot = plot_series(buckets, digits=6)
    del plot["lo"], plot["hi"]  # the chart draws each run's bucket means
    return dumps(plot, safe=True)
