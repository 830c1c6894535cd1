"""`trainlab search report STUDY -o DIR`: a static HTML page about one search study.

It shows the leaderboard, the validation metric against each hyperparameter (log axes where the space
is log), the grid-versus-random layout picture for the study's two most important parameters (how many
distinct values of each were tried), and Optuna's parameter importances. Figures are PNG files beside
index.html; nothing is fetched from the network.
"""

from __future__ import annotations

import html
import math
import os
import warnings
from pathlib import Path

from trainlab.figures import FEW_TRIALS, plot_importance, plot_metric_vs_params, plot_search_layout
from trainlab.search.leaderboard import best_row, leaderboard, status_counts, study_meta
from trainlab.search.space import parse_space
from trainlab.search.storage import load_study, open_existing_storage
from trainlab.store import Store

__all__ = ["write_search_report", "importances"]


def importances(study) -> tuple[dict[str, float], str]:
    """(Optuna's parameter importances, or {} , a note saying which evaluator, on how many trials (and that
    few trials make it a rough guess), or why there are none)."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}, f"needs at least 2 completed trials, the study has {len(complete)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as err:
        return {}, f"not computed: {str(err).splitlines()[0]}"
    note = f"Optuna's default evaluator (PED-ANOVA) on the {len(complete)} completed trials"
    if len(complete) < FEW_TRIALS:
        note += (f"; with fewer than {FEW_TRIALS} it is a rough guess: another search of the same space may well "
                 "order the parameters differently")
    return {k: float(v) for k, v in found.items()}, note


def _params(study, meta: dict | None) -> list[dict]:
    if meta and meta.get("space"):
        space = parse_space(meta["space"])
        # Discrete values go on an evenly spaced categorical axis unless they are log-spaced numbers.
        return [{"name": p.name, "log": p.log, "categorical": p.discrete and not p.log,
                 "values": list(p.values), "text": p.text} for p in space]
    out: dict[str, dict] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            if name not in out:
                categorical = type(dist).__name__ == "CategoricalDistribution"
                out[name] = {"name": name, "log": bool(getattr(dist, "log", False)), "categorical": categorical,
                             "values": list(getattr(dist, "choices", [])), "text": repr(dist)}
    return list(out.values())


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def write_search_report(study_name: str, out_dir: str | os.PathLike, db=None, storage=None) -> Path:
    """Write DIR/index.html (and its PNG figures) for study `study_name`; returns the page's path.

    Reads only: the store and Optuna's storage are opened read-only (nothing created, migrated or switched
    to WAL); a missing file or one that is not a trainlab store is a one-line ValueError."""
    store = Store(db if db is not None else storage, read_only=True)
    try:
        st = open_existing_storage(storage if storage is not None else db, read_only=True)
        study = load_study(study_name, st)
        meta = study_meta(study) or {}
        rows = leaderboard(study_name, db if db is not None else storage, st, store=store)
    finally:
        store.close()
    metric = meta.get("metric", "value")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = _params(study, meta)
    scored = [r for r in rows if r["status"] in ("completed", "pruned", "diverged")]
    imp, imp_note = importances(study)

    figures = []
    if params:
        plot_metric_vs_params(scored, params, metric, out / "metric_vs_params.png")
        figures.append(("metric_vs_params.png", f"{metric} against each hyperparameter"))
    by_name = {p["name"]: p for p in params}
    order = [n for n in imp if n in by_name] + [p["name"] for p in params if p["name"] not in imp]
    if len(order) >= 2:
        plot_search_layout(scored, by_name[order[0]], by_name[order[1]], metric, out / "layout.png")
        figures.append(("layout.png", "where the trials fell: the two most important parameters"))
    if imp:
        plot_importance(imp, out / "importance.png", n_trials=sum(1 for t in study.get_trials(deepcopy=False)
                                                                    if t.state.name == "COMPLETE"))

    tried = [r for r in rows if r["params"]]
    distinct = [(p["name"], p.get("text", ""), len({repr(r["params"].get(p["name"])) for r in tried
                                                     if p["name"] in r["params"]})) for p in params]
    counts = status_counts(rows)
    names = [p["name"] for p in params]

    h = ["<!doctype html><html><head><meta charset='utf-8'>",
         f"<title>search {html.escape(study_name)}</title>",
         "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
         "font-size:13px}td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}"
         "img{max-width:100%;margin:1em 0}.note{color:#666}</style></head><body>",
         f"<h1>search study {html.escape(study_name)}</h1>",
         f"<p>strategy <b>{html.escape(str(meta.get('strategy', '?')))}</b>, pruning "
         f"<b>{html.escape(str(meta.get('prune', '?')))}</b>, {len(rows)} trials ("
         + ", ".join(f"{v} {html.escape(k)}" for k, v in sorted(counts.items())) + f"); metric {html.escape(metric)} "
         f"({'higher' if meta.get('mode', 'max') == 'max' else 'lower'} is better)</p>"]
    best = best_row(rows)
    if best:
        h.append(f"<p>best: trial {best['trial']} (run {best['run']}), {html.escape(metric)} {best['value']:.4f}: "
                 + ", ".join(f"{html.escape(k)}={_fmt(v)}" for k, v in best["params"].items()) + "</p>")
    h.append("<h2>distinct values tried</h2><table><tr><th>parameter</th><th>space</th><th>distinct values</th>"
             "<th>trials</th></tr>")
    for name, text, n in distinct:
        h.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(text)}</td><td>{n}</td><td>{len(tried)}</td></tr>")
    h.append("</table>")
    for file, caption in figures:
        h.append(f"<h2>{html.escape(caption)}</h2><img src='{file}' alt='{html.escape(caption)}'>")
    h.append("<h2>parameter importance</h2>")
    if imp:
        h.append("<img src='importance.png' alt='parameter importance'>")
        h.append("<table><tr><th>parameter</th><th>importance</th></tr>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in imp.items()) + "</table>")
    h.append(f"<p class='note'>{html.escape(imp_note)}</p>")
    h.append("<h2>leaderboard</h2><table><tr><th>rank</th><th>trial</th><th>run</th><th>status</th>"
             + "".join(f"<th>{html.escape(n)}</th>" for n in names)
             + f"<th>{html.escape(metric)}</th><th>epochs</th><th>reason</th></tr>")
    for r in rows:
        value = "" if r["value"] is None or not math.isfinite(r["value"]) else f"{r['value']:.4f}"
        h.append(f"<tr><td>{r['rank']}</td><td>{r['trial']}</td><td>{r['run'] or ''}</td>"
                 f"<td>{html.escape(r['status'])}</td>"
                 + "".join(f"<td>{_fmt(r['params'].get(n, ''))}</td>" for n in names)
                 + f"<td>{value}</td><td>{r['epochs']}</td><td>{html.escape(r['reason'] or '')}</td></tr>")
    h.append("</table></body></html>")
    page = out / "index.html"
    page.write_text("\n".join(h))
    return page
