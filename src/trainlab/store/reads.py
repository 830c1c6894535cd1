"""Metric reads: a run's whole series, and series of many runs downsampled in the database for plots.

The queries behind `Store.metrics`, `Store.metric_keys` and `Store.metric_buckets` (see there for what
they return), as functions of an open read transaction, so that `Store` keeps the connection policy and
the argument checks. Downsampling is one GROUP BY per run and key over the rows, or over the summary
blocks of `schema` when a series has more blocks than buckets, so a study page of 200 long runs reads
8x fewer rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from trainlab.store.schema import METRIC_BLOCK, tl_metric_blocks, tl_metrics, tl_runs

__all__ = ["buckets_of_series", "keys_of_run", "series_of_run"]


def series_of_run(conn: Connection, run_id: int, keys: Sequence[str] | None) -> dict[str, dict[str, list]]:
    """`Store.metrics` inside the read transaction ``conn``: key -> step, epoch and value lists by step."""
    query = (
        sa.select(tl_metrics.c.key, tl_metrics.c.step, tl_metrics.c.epoch, tl_metrics.c.value)
        .where(tl_metrics.c.run_id == run_id)
        .order_by(tl_metrics.c.key, tl_metrics.c.step, tl_metrics.c.id)
    )
    if keys is not None:
        query = query.where(tl_metrics.c.key.in_(list(keys)))
    out: dict[str, dict[str, list]] = {}
    nan = math.nan
    for key, step, epoch, value in conn.execute(query):
        series = out.get(key)
        if series is None:
            series = out[key] = {"step": [], "epoch": [], "value": []}
        series["step"].append(step)
        series["epoch"].append(epoch)
        series["value"].append(nan if value is None else value)
    return out


def keys_of_run(conn: Connection, run_id: int) -> list[str]:
    """The metric keys a run has logged, sorted."""
    query = sa.select(tl_metrics.c.key).where(tl_metrics.c.run_id == run_id).distinct().order_by(tl_metrics.c.key)
    return list(conn.scalars(query))


def buckets_of_series(conn: Connection, run_ids: Sequence[int], keys: Sequence[str], buckets: int, *,
                      has_blocks: bool) -> dict[int, dict[str, dict[str, Any]]]:
    """`Store.metric_buckets` inside the read transaction ``conn``: checked arguments, both non-empty.
    ``has_blocks``: tl_metric_blocks exists (an older store read-only: every bucket from the rows)."""
    m = tl_metrics.alias("m")
    # the last step of each (run, key): one index lookup each, no scan
    lasts = [
        sa.select(sa.func.max(m.c.step)).where(m.c.run_id == tl_runs.c.id, m.c.key == key).scalar_subquery()
        for key in keys
    ]
    value, width = tl_metrics.c.value, sa.bindparam("width", type_=sa.BigInteger)
    rows_query = (  # built once: per run and key only the parameters change
        sa.select(
            sa.func.min(tl_metrics.c.step), sa.func.max(tl_metrics.c.step), sa.func.min(value), sa.func.max(value),
            sa.func.sum(value), sa.func.count(value), sa.func.count(),
        )
        .where(tl_metrics.c.run_id == sa.bindparam("run_id"), tl_metrics.c.key == sa.bindparam("key"))
        .group_by(tl_metrics.c.step // width)
        .order_by(sa.func.min(tl_metrics.c.step))
    )
    b = tl_metric_blocks.c
    blocks_query = (  # the same buckets from the summary blocks, when width is a multiple of METRIC_BLOCK
        sa.select(
            sa.func.min(b.first_step), sa.func.max(b.last_step), sa.func.min(b.vmin), sa.func.max(b.vmax),
            sa.case((sa.func.count(b.vsum) < sa.func.count(), None), else_=sa.func.sum(b.vsum)),
            sa.func.sum(b.n_values), sa.func.sum(b.n_rows),
        )
        .where(b.run_id == sa.bindparam("run_id"), b.key == sa.bindparam("key"))
        .group_by(b.block // (width // METRIC_BLOCK))
        .order_by(sa.func.min(b.first_step))
    )
    # how many blocks each (run, key) has: more than `buckets` means more rows than buckets, so buckets
    # of whole blocks lose nothing a plot of `buckets` points would keep; 0 for rows without blocks
    n_blocks = [
        sa.select(sa.func.count()).where(b.run_id == tl_runs.c.id, b.key == key).scalar_subquery()
        if has_blocks else sa.literal(0) for key in keys
    ]
    out: dict[int, dict[str, dict[str, Any]]] = {}
    found = conn.execute(
        sa.select(tl_runs.c.id, *lasts, *n_blocks).where(tl_runs.c.id.in_(run_ids)).order_by(tl_runs.c.id))
    for run_id, *columns in found.all():
        for key, last, blocks in zip(keys, columns[: len(keys)], columns[len(keys) :]):
            if last is None:
                continue
            w = max(1, -(-(last + 1) // buckets))
            query = rows_query
            if blocks > buckets:
                w, query = -(-w // METRIC_BLOCK) * METRIC_BLOCK, blocks_query
            rows = conn.execute(query, {"run_id": run_id, "key": key, "width": w}).all()
            first, last_in, lo, hi, total, n_values, n_rows = (list(c) for c in zip(*rows))
            out.setdefault(run_id, {})[key] = {
                "width": w, "first": first, "last": last_in,
                "min": [None if v is None else float(v) for v in lo],
                "max": [None if v is None else float(v) for v in hi],
                "mean": [float(t) / n if n and t is not None else None for t, n in zip(total, n_values)],
                "count": n_rows, "nan": [r - n for r, n in zip(n_rows, n_values)],
            }
    return out
