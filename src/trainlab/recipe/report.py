"""The recipe's report: a static `index.html` with PNG figures beside it; it opens from the disk with no
server and no network (no script, no external file).

Every step's verdict, message and evidence; the initial-loss check; the overfit curve; the LR-test
curve with the pick; the coarse grid as a heatmap of learning rate x weight decay; the refined runs'
learning curves (every step as a point plus a moving average) with the doctor's findings; how much the
chosen config's validation score varies across folds; the final model's curves, config, validation and
test accuracy. Figures are drawn from the store (`report_figures`), so a resumed recipe's report shows
earlier steps too.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from trainlab.doctor.judged import CLASSIFIER, run_metric
from trainlab.recipe.final_plan import described
from trainlab.recipe.plan import PHASE_OF_STEP
from trainlab.recipe.report_figures import plot_cv_spread, plot_grid_heatmap, plot_overfit, plot_refine_curves
from trainlab.store import RunNotFound, Store

__all__ = ["write_report", "steps_from_store"]


def _lr_test_inputs(store: Store, run_id: int) -> tuple[list[dict], dict | None, float | None]:
    """The LR test's trials and sweep, rebuilt from its stored run (summary + per-step metrics)."""
    run = store.run(run_id)
    s = run.get("summary") or {}
    m = store.metrics(run_id)
    trials = []
    for row in s.get("table") or []:
        losses = m.get(f"lr_test/discrete/{row['lr']:g}/loss", {}).get("value", [])
        trials.append({**row, "losses": losses, "end": row.get("end") if row.get("end") is not None else math.nan})
    sweep = None
    if "lr_test/sweep/lr" in m:
        sweep = {**(s.get("sweep") or {}), "lrs": m["lr_test/sweep/lr"]["value"],
                 "raw": m["lr_test/sweep/loss"]["value"], "smoothed": m["lr_test/sweep/smoothed"]["value"]}
    return trials, sweep, s.get("suggested_lr")


# --- html ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.8em;font-weight:600;color:#fff;margin-left:6px}
.pass,.done,.healthy,.completed{background:#2e7d32}.fail,.failed{background:#c62828}.stop,.findings{background:#ef6c00}
.continue{background:#1565c0}.stopped,.interrupted,.notrun{background:#757575}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}.msg{font-size:.95em;margin:6px 0}.box{background:#f7f9fc;border:1px solid #d6e0ef;padding:10px 14px;border-radius:6px}
img{max-width:100%;border:1px solid #eee;margin:6px 0}pre{background:#f5f5f5;padding:8px;overflow-x:auto;font-size:.8em}
.big{font-size:1.25em;font-weight:600}.muted{color:#666;font-size:.85em}
"""


def _acc(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _kv_table(ev: dict, keys: Sequence[str] | None = None) -> str:
    """Scalars of the evidence as a two-column table; lists and dicts go to a collapsed JSON block."""
    keys = keys or [k for k, v in ev.items() if not isinstance(v, (list, dict))]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_num(ev[k]))}</td></tr>" for k in keys if k in ev)
    return f"<table>{rows}</table>" if rows else ""


def _details(ev: dict) -> str:
    text = json.dumps(ev, indent=1, default=str)
    if len(text) > 60000:
        text = text[:60000] + "\n... (cut)"
    return f"<details><summary class='muted'>all evidence (JSON)</summary><pre>{_e(text)}</pre></details>"


def _img(name: str, alt: str) -> str:
    return f"<img src='{_e(name)}' alt='{_e(alt)}'>"


def _table(rows: Sequence[dict], cols: Sequence[str]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(_num(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def steps_from_store(store: Store, study: str) -> list[dict]:
    """The study's step runs as dicts (key, number, title, verdict, message, evidence, seconds, run_id,
    status), the latest run of each key, in the order they ran."""
    latest: dict[str, dict] = {}
    for run in store.runs(study=study, kind="step"):
        s = run.get("summary") or {}
        if s.get("key"):
            latest[s["key"]] = {"key": s["key"], "number": s.get("step"), "title": s.get("title", s["key"]),
                                "verdict": s.get("verdict", run["status"]), "message": s.get("message", run.get("reason")),
                                "evidence": s.get("evidence", {}), "seconds": s.get("seconds", 0.0),
                                "run_id": run["id"], "status": run["status"]}
    return sorted(latest.values(), key=lambda d: d["run_id"])


FIGURES_DRAWN = "figures.json"   # in the report's folder: each figure's name -> the fingerprint of what it shows


def _figure(out: Path, name: str, stamp: str, drawn: dict[str, str], draw) -> str:
    """Draw figure `name` with `draw(path)` unless it was drawn from the same inputs (`stamp`, None for a
    step still under way) and is on disk: a rerun whose steps were all done before redraws nothing."""
    if stamp is None or drawn.get(name) != stamp or not (out / name).is_file():
        drawn.pop(name, None)
        draw(out / name)
        if stamp is not None:
            drawn[name] = stamp
    return name


def _stamp(store: Store, study: str, step: dict) -> str | None:
    """What a completed step's figures show, as a hash (the store, the study, the step's outcome and evidence)."""
    if step.get("status") != "completed":
        return None
    what = [store.url, study, step.get("key"), step.get("evidence")]
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _section_figures(store: Store, step: dict, out: Path, warnings: list[str], stamp: str | None,
                     drawn: dict[str, str]) -> str:
    """The figures (and their tables) of one step; failures to draw are noted, not fatal."""
    key, ev = step["key"], step.get("evidence") or {}
    parts = []

    def figure(name: str, draw) -> str:
        return _figure(out, name, stamp, drawn, draw)

    try:
        if key == "init" and "initial_loss" in ev:
            parts.append(_kv_table(ev, ["kind", "initial_loss", "expected", "deviation", "tolerance", "num_classes",
                                        "target_variance", "target_mean", "batches", "examples", "logit_std",
                                        "top_class_share", "weight_decay"]))
        elif key == "overfit" and ev.get("attempts"):
            target = next((_check_evidence(store, a["run"]).get("target_loss") for a in reversed(ev["attempts"])
                           if a.get("run") is not None), None)
            figure("overfit.png", lambda path: plot_overfit(store, ev["attempts"], path, target_loss=target))
            parts.append(_img("overfit.png", "overfit curve"))
            parts.append(_table(ev["attempts"], ["lr", "verdict", "steps", "max_steps", "cause", "message"]))
        elif key == "lr" and ev.get("check_run") is not None:
            from trainlab.figures import plot_lr_test

            def lr_figure(path: Path) -> None:
                trials, sweep, suggested = _lr_test_inputs(store, ev["check_run"])
                plot_lr_test(path, trials=trials, sweep=sweep, suggested=suggested,
                             title=f"LR range test ({ev.get('trial_steps')} steps per trial): pick {suggested}")

            figure("lr_test.png", lr_figure)
            parts.append(_img("lr_test.png", "learning-rate test"))
            parts.append(_table(ev.get("table") or [], ["lr", "status", "start", "end", "drop", "picked", "why"]))
        elif key == "coarse" and ev.get("rows"):
            metric, mode = _judged_by(store, ev, [r.get("run") for r in ev["rows"]])
            figure("coarse_grid.png", lambda path: plot_grid_heatmap(ev["rows"], path, metric, mode))
            parts.append(_img("coarse_grid.png", "coarse grid heatmap"))
            parts.append(_kv_table(ev, ["epochs", "prune", "center", "search_seconds", "epoch_s", "overhead_s"]))
        elif key.startswith("refine-") and ev.get("candidates"):
            k = key.split("-", 1)[1]
            runs = []
            for c in ev["candidates"]:
                for fold, run_id in c["runs"].items():
                    if run_id is not None:
                        v = c["folds"].get(fold)
                        runs.append({"run": run_id, "title": f"lr {c['point']['lr']:.3g} wd {c['point']['weight_decay']:g} "
                                     f"fold {fold}: {v:.4f}" if v is not None else f"fold {fold}"})
            if runs:
                figure(f"refine_{k}.png", lambda path: plot_refine_curves(store, runs[:16], path))
                parts.append(_img(f"refine_{k}.png", f"refined runs, round {k}"))
            metric, mode = _judged_by(store, ev, [r["run"] for r in runs])
            figure(f"cv_{k}.png", lambda path: plot_cv_spread(ev["candidates"], path, chosen=ev.get("best"),
                                                             metric=metric, mode=mode))
            parts.append(_img(f"cv_{k}.png", f"validation spread over folds, round {k}"))
            rows = [{"lr": c["point"]["lr"], "weight_decay": c["point"]["weight_decay"], "width": c["point"].get("width"),
                     "dropout": c["point"].get("dropout"), "epochs": c["point"].get("epochs"),
                     **{f"fold {f}": v for f, v in c["folds"].items()}, "mean": c["mean"], "std": c["std"]}
                    for c in ev["candidates"]]
            cols = ["lr", "weight_decay", "width", "dropout", "epochs"] + [f"fold {f}" for f in
                                                                          sorted({f for c in ev["candidates"] for f in c["folds"]})] + ["mean", "std"]
            parts.append(_table(rows, cols))
            parts.append(_refine_findings(store, runs))
        elif key.startswith("doctor-"):
            for r in ev.get("runs", []):
                items = "".join(f"<li><b>{_e(f['name'])}</b> ({_e(f['confidence'])}): {_e(f['diagnosis'])}. "
                                f"{_e(f['evidence'])}. <i>Try: {_e(f['action'])}</i></li>" for f in r["findings"])
                parts.append(f"<p>run {_e(r['run'])} (fold {_e(r['fold'])}): "
                             + (f"<ul>{items}</ul>" if items else "healthy: no finding") + "</p>")
            parts.append(f"<p class='box'><b>next move: {_e(ev.get('move'))}</b>. Reason: {_e(ev.get('reason'))}. "
                         f"Changes: {_e(ev.get('changes') or 'none')}</p>")
        elif key == "final" and ev.get("members"):
            for mem in ev["members"]:
                if mem.get("run") is not None:
                    from trainlab.figures import plot_run

                    name = figure(f"final_fold{mem['fold']}.png", lambda path, run=mem["run"]: plot_run(store, run, path))
                    parts.append(_img(name, f"final model, fold {mem['fold']}"))
            metric = _judged_by(store, ev, [m.get("run") for m in ev["members"]])[0]
            members = [{**m, metric: m.get("val_acc")} for m in ev["members"]]   # "val_acc": the judged metric's value
            parts.append(_table(members, ["run", "fold", "status", "epochs", "best_epoch", metric, "checkpoint"]))
    except (RunNotFound, KeyError, ValueError, TypeError) as err:  # a report with a gap beats no report
        warnings.append(f"{key}: could not draw ({type(err).__name__}: {err})")
        parts.append(f"<p class='muted'>figure not drawn: {_e(type(err).__name__)}: {_e(err)}</p>")
    return "".join(parts)


def _judged_by(store: Store, ev: dict, run_ids: Sequence[int | None]) -> tuple[str, str]:
    """(metric, mode) a step's runs were judged by: kept in its evidence ("metric", "mode"), or, for a study
    recorded before that, read from its first run (`doctor.judged.run_metric`); val/acc (max) without either."""
    if ev.get("metric") and ev.get("mode") in ("max", "min"):
        return ev["metric"], ev["mode"]
    for run_id in run_ids:
        if run_id is not None:
            try:
                judged = run_metric(store.run(run_id))
            except RunNotFound:
                continue
            return judged.metric, judged.mode
    return CLASSIFIER.metric, CLASSIFIER.mode


def _check_evidence(store: Store, run_id: int) -> dict:
    try:
        return store.run(run_id).get("summary") or {}
    except RunNotFound:
        return {}


def _headline(ev: dict, store: Store) -> str:
    """The final model's line: test and validation accuracy as percentages for a classifier; the task's own
    metrics, named, for anything else (test/mse 0.5391, val/loss 0.4888)."""
    metric = _judged_by(store, ev, [m.get("run") for m in ev.get("members") or ()])[0]
    test_metric = ev.get("test_metric") or "test/acc"
    spread = ev.get("ensemble") and _finite(ev.get("val_std"))
    if metric == "val/acc" and test_metric == "test/acc":
        return ("test accuracy {} &middot; validation accuracy {}{}".format(
            _pct(ev.get("test_acc")), _pct(ev.get("val_acc")), f" +- {ev['val_std']:.2%}" if spread else ""))
    return "{} {} &middot; {} {}{}".format(_e(test_metric), _acc(ev.get("test_acc")), _e(metric), _acc(ev.get("val_acc")),
                                          f" +- {ev['val_std']:.4f}" if spread else "")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _pct(x: Any) -> str:
    return f"{x:.2%}" if _finite(x) else "n/a"


def _refine_findings(store: Store, runs: Sequence[dict]) -> str:
    from trainlab.doctor.diagnose import diagnose_run

    items = []
    for r in runs:
        try:
            d = diagnose_run(store, r["run"])
        except RunNotFound:
            continue
        found = "; ".join(f"{f.name} ({f.confidence}): {f.evidence}" for f in d.findings) or "healthy"
        items.append(f"<li>{_e(r['title'])} (run {r['run']}): {_e(found)}</li>")
    return "<p>The doctor on each refined run:</p><ul class='muted'>" + "".join(items) + "</ul>" if items else ""


def write_report(store: Store, study: str, out: str | Path, *, result=None) -> Path:
    """Write `out/index.html` and its figures for the recipe study `study`; returns the HTML's path.

    `result` (a RecipeResult) adds the run's status and budget; without it the steps are read from the
    store (`steps_from_store`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawn = _read_drawn(out / FIGURES_DRAWN)
    steps = [s.to_dict() for s in result.steps] if result is not None else steps_from_store(store, study)
    latest: dict[str, dict] = {}
    for s in steps:
        latest[s["key"]] = s   # a resumed step appears once, with its last outcome
    steps = list(latest.values())
    warnings: list[str] = []
    final = next((s for s in steps if s["key"] == "final" and s["status"] == "completed"), None)
    status = result.status if result is not None else ("completed" if final else "partial")
    head = [f"<h1>trainlab recipe: {_e(study)}</h1>",
            f"<p>status <span class='badge {_e(status)}'>{_e(status)}</span>"
            + (f" &mdash; {_e(result.reason)}" if result is not None and result.reason else "") + "</p>"]
    if final:
        ev = final["evidence"]
        cv = ev.get("cv") or {}
        metric = _judged_by(store, ev, [m.get("run") for m in ev.get("members") or ()])[0]
        head.append(
            "<div class='box'><p class='big'>{}</p>"
            "<p>{} &middot; chosen on validation only (mean {} over folds {}: {} +- {}); the test split was "
            "evaluated once, for this final model. Config: <a href='final.yaml'>final.yaml</a> "
            "(<code>trainlab train final.yaml</code>).</p></div>".format(
                _headline(ev, store), _e(final["message"].split(f": {metric} ")[0]), _e(metric),
                _e(", ".join(sorted(cv.get("folds", {})))), _acc(cv.get("mean")), _acc(cv.get("std"))))
        if ev.get("ran"):   # what the final trainings did, not only what was planned
            decay = (ev.get("decay") or {}).get("reason")
            head.append(f"<p class='big'>final run: {_e(ev['ran'])}</p>"
                        + (f"<p>schedule: {_e(described(ev['decay'], ev['epochs']))}: "
                           f"{_e(decay)}</p>" if decay else ""))
    if result is not None:
        used = sum(s.get("seconds") or 0.0 for s in steps)
        plan_rows = []
        for phase, planned in result.plan.items():
            spent = sum(s.get("seconds") or 0.0 for s in steps if PHASE_OF_STEP.get(s["number"]) == phase)
            plan_rows.append({"phase": phase, "planned share (s)": round(planned, 1), "spent (s)": round(spent, 1)})
        head.append(f"<p>budget {result.budget_s:.0f} s; steps took {used:.0f} s in all "
                    f"(this run: {result.seconds:.0f} s)</p>" + _table(plan_rows, ["phase", "planned share (s)", "spent (s)"]))
    overview = [{"step": s["number"] if s["number"] <= 7 else "final", "title": s["title"], "verdict": s["verdict"],
                 "seconds": round(s.get("seconds") or 0.0, 1), "message": s["message"]} for s in steps]
    head.append("<h2>Steps</h2>" + _table(overview, ["step", "title", "verdict", "seconds", "message"]))
    body = []
    for s in steps:
        label = f"Step {s['number']}" if s["number"] <= 7 else "Final model"
        rnd = f" (round {s['key'].rsplit('-', 1)[1]})" if "-" in s["key"] else ""
        v = s["verdict"]
        body.append(f"<h2 id='{_e(s['key'])}'>{_e(label)}: {_e(s['title'])}{_e(rnd)} "
                    f"<span class='badge {_e(v)}'>{_e(v)}</span></h2>"
                    f"<p class='msg'>{_e(s['message'])}</p>")
        body.append(_section_figures(store, s, out, warnings, _stamp(store, study, s), drawn))
        if s["key"] == "final" and final:
            yaml_path = out / "final.yaml"
            if yaml_path.is_file():
                body.append(f"<p>final config (<a href='final.yaml'>final.yaml</a>):</p><pre>{_e(yaml_path.read_text())}</pre>")
            if (s["evidence"] or {}).get("members"):
                fev = s["evidence"]
                metric = _judged_by(store, fev, [m.get("run") for m in fev["members"]])[0]
                averaged = ("predicted probabilities" if (fev.get("test_metric") or "test/acc") == "test/acc"
                            else "outputs")
                body.append("<p class='muted'>" + ("The final model is an ensemble: one member per validation fold "
                            "(split_seed), each trained with the chosen config and early-stopped on its own fold; "
                            f"their {averaged} are averaged. Its {_e(metric)} is the members' "
                            "mean on their own folds." if fev.get("ensemble") else
                            "The final model is one run, early-stopped on validation; its best checkpoint is kept.")
                            + "</p>")
        body.append(_details(s.get("evidence") or {}))
    if warnings:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>")
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>trainlab recipe: {_e(study)}</title><style>{_CSS}</style></head><body>"
            + "".join(head) + "".join(body) + "</body></html>")
    _write_atomic(out / FIGURES_DRAWN, json.dumps(drawn, sort_keys=True))
    path = out / "index.html"
    _write_atomic(path, page)
    return path


def _read_drawn(path: Path) -> dict[str, str]:
    """The fingerprints of the figures on disk; none (all drawn again) when the file is missing or damaged."""
    try:
        drawn = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in drawn.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(drawn, dict) else {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
