"""The store's tables (SQLAlchemy Core), their creation, and the summary blocks of long metric series.

Four tables, prefixed ``tl_`` because Optuna keeps its own (``studies``, ``trials``, ...) in the same
database: ``tl_studies``, ``tl_runs``, ``tl_metrics`` (one row per step and key) and
``tl_metric_blocks`` (every METRIC_BLOCK steps of a series summarized, kept in step with the rows).
A store written before the blocks existed gets them, filled from its rows, when a writer opens it.
The bulk writes that depend on the tables' layout live here too: metric rows, and blocks rebuilt.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from trainlab.store.engine import write_engine
from trainlab.store.locks import xact_lock

__all__ = ["RUN_STATUSES", "STORED_STATUSES", "ADDED_RUN_COLUMNS", "missing_columns", "survey", "METRIC_BLOCK", "metadata", "tl_studies", "tl_runs", "tl_metrics", "tl_metric_blocks",
           "missing_tables", "create_tables", "METRIC_COLUMNS", "insert_metrics", "blocks_of_rows", "rebuild_blocks"]

STORED_STATUSES = ("running", "completed", "stopped", "diverged", "failed", "pruned")
# every status a run shows: the stored ones, and "lost" (a running run whose process is gone, see `liveness`)
RUN_STATUSES = (*STORED_STATUSES, "lost")
_INSERT_CHUNK_ROWS = 500  # rows per INSERT statement: few statements, bounded memory
_SCHEMA_LOCK = 7061726  # PostgreSQL advisory lock held while creating tables: two workers must not both CREATE

metadata = sa.MetaData()

tl_studies = sa.Table(
    "tl_studies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("created", sa.String(40), nullable=False),
)

tl_runs = sa.Table(
    "tl_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("tl_studies.id"), nullable=True, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False, default="train"),
    sa.Column("hparams", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # one of RUN_STATUSES
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created", sa.String(40), nullable=False),
    sa.Column("updated", sa.String(40), nullable=False),
    sa.Column("finished", sa.String(40), nullable=True),
    sa.Column("best_metric", sa.Double, nullable=True),
    sa.Column("best_epoch", sa.Integer, nullable=True),
    sa.Column("epochs", sa.Integer, nullable=False, default=0),
    sa.Column("checkpoint", sa.Text, nullable=True),
    sa.Column("seed", sa.BigInteger, nullable=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
    # liveness (`liveness`): the process holding a running run, and when it last said so
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("node", sa.String(255), nullable=True),       # host name, boot id, pid namespace
    sa.Column("heartbeat", sa.String(40), nullable=True),   # UTC ISO time, like `updated`
)

# columns added to tl_runs after stores were first written: (name, SQL type), added by `create_tables`
ADDED_RUN_COLUMNS = (("pid", "INTEGER"), ("node", "VARCHAR(255)"), ("heartbeat", "VARCHAR(40)"))

tl_metrics = sa.Table(
    "tl_metrics",
    metadata,
    # SQLite's rowid alias must be exactly INTEGER; elsewhere 64 bits, for big shared databases.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("tl_runs.id"), nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=True),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("value", sa.Double, nullable=True),  # NULL is NaN
    # (run_id, key, step) serves both "one key of a run" and its ordering by step.
    sa.Index("ix_tl_metrics_run_key", "run_id", "key", "step"),
    sa.Index("ix_tl_metrics_run_step", "run_id", "step"),
)

METRIC_BLOCK = 8  # steps per summary block

# Every METRIC_BLOCK steps of a series summarized (min, max, sum and counts), written in the transaction that
# writes the rows: plots of long series (a study page of 200 runs x 5,000 steps) read 8x fewer rows.
tl_metric_blocks = sa.Table(
    "tl_metric_blocks",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("tl_runs.id"), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("block", sa.BigInteger, primary_key=True),  # step // METRIC_BLOCK
    sa.Column("first_step", sa.BigInteger, nullable=False),
    sa.Column("last_step", sa.BigInteger, nullable=False),
    sa.Column("vmin", sa.Double, nullable=True),  # over the non-NaN values; NULL when all are NaN
    sa.Column("vmax", sa.Double, nullable=True),
    sa.Column("vsum", sa.Double, nullable=True),  # NULL when NaN (Inf + -Inf)
    sa.Column("n_values", sa.Integer, nullable=False),
    sa.Column("n_rows", sa.Integer, nullable=False),
    sqlite_with_rowid=False,  # stored in key order: one series' blocks are contiguous
)


def survey(engine: Engine) -> tuple[set[str], set[str]]:
    """(the store's tables that ``engine``'s database lacks, the ADDED_RUN_COLUMNS an existing tl_runs lacks),
    on one connection with two cheap queries (the table names; tl_runs' columns); only reads. Every command
    opens a store, so this is on the start-up path of each."""
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        have_tables = set(inspector.get_table_names())
        missing = {t.name for t in metadata.sorted_tables if t.name not in have_tables}
        if tl_runs.name in missing:
            return missing, set()
        have = {c["name"] for c in inspector.get_columns(tl_runs.name)}
    return missing, {name for name, _ in ADDED_RUN_COLUMNS if name not in have}


def missing_tables(engine: Engine) -> set[str]:
    """The names of the store's tables that ``engine``'s database lacks; only reads."""
    return survey(engine)[0]


def missing_columns(engine: Engine) -> set[str]:
    """The columns of ADDED_RUN_COLUMNS that an existing tl_runs lacks (none when there is no tl_runs)."""
    return survey(engine)[1]


def create_tables(engine: Engine) -> bool:
    """Create the missing tables and add the missing tl_runs columns, in one write transaction; a store written
    before the summary blocks existed gets them, filled from its rows, and one written before liveness gets
    its columns, each running run's heartbeat filled with its last write (`updated`), so a run that died
    long ago shows as lost. Returns whether tl_metric_blocks is there afterwards: False for an older store
    this connection may not write (read, then, without blocks).
    Raises sqlalchemy's DBAPIError when a table other than the blocks is missing and cannot be made."""
    before, columns = survey(engine)
    if not before and not columns:
        return True
    try:
        with write_engine(engine).begin() as conn:
            xact_lock(conn, _SCHEMA_LOCK)
            inspector = sa.inspect(conn)
            backfill = not inspector.has_table(tl_metric_blocks.name) and inspector.has_table(tl_metrics.name)
            metadata.create_all(conn, checkfirst=True)  # under the write lock on SQLite too
            if backfill:
                conn.execute(tl_metric_blocks.insert().from_select([c.name for c in tl_metric_blocks.c],
                                                                   blocks_of_rows()))
            have = {c["name"] for c in sa.inspect(conn).get_columns(tl_runs.name)}
            for name, sql_type in ADDED_RUN_COLUMNS:
                if name not in have:  # another process may have added it while we waited for the lock
                    conn.exec_driver_sql(f"ALTER TABLE tl_runs ADD COLUMN {name} {sql_type}")
            if "heartbeat" not in have:
                conn.execute(tl_runs.update().where(tl_runs.c.status == "running")
                             .values(heartbeat=tl_runs.c.updated))
    except sa.exc.DBAPIError:
        if before - {tl_metric_blocks.name}:
            raise
        return tl_metric_blocks.name not in before  # a read-only connection to an older store
    return True


def blocks_of_rows() -> sa.Select:
    """The blocks of tl_metrics rows, computed from the rows (add a WHERE): to fill or repair tl_metric_blocks."""
    m = tl_metrics.c
    block = m.step // METRIC_BLOCK
    return sa.select(
        m.run_id, m.key, block, sa.func.min(m.step), sa.func.max(m.step), sa.func.min(m.value), sa.func.max(m.value),
        sa.case((sa.func.count(m.value) == 0, 0.0), else_=sa.func.sum(m.value)),  # NULL only for Inf - Inf
        sa.func.count(m.value), sa.func.count(),
    ).group_by(m.run_id, m.key, block)


def rebuild_blocks(conn: Connection, run_id: int, step: int) -> None:
    """Summarize again, from its rows, every block of a run from the one holding `step` on: after rows
    were added at or after `step` (or deleted after it). In SQL, on a few blocks' rows: cheap."""
    block = step // METRIC_BLOCK
    conn.execute(tl_metric_blocks.delete().where(tl_metric_blocks.c.run_id == run_id,
                                                 tl_metric_blocks.c.block >= block))
    rows = blocks_of_rows().where(tl_metrics.c.run_id == run_id, tl_metrics.c.step >= block * METRIC_BLOCK)
    conn.execute(tl_metric_blocks.insert().from_select([c.name for c in tl_metric_blocks.c], rows))


METRIC_COLUMNS = ("run_id", "step", "epoch", "key", "value")


def insert_metrics(conn: Connection, values: list[tuple]) -> None:
    """INSERT metric rows given as tuples in METRIC_COLUMNS order: straight to the driver on SQLite (a
    third of the cost of a row, which a training pays twice a step), through SQLAlchemy elsewhere."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            'INSERT INTO tl_metrics (run_id, step, epoch, "key", value) VALUES (?, ?, ?, ?, ?)', values)
        return
    for start in range(0, len(values), _INSERT_CHUNK_ROWS):
        chunk = values[start : start + _INSERT_CHUNK_ROWS]
        conn.execute(tl_metrics.insert(), [dict(zip(METRIC_COLUMNS, v)) for v in chunk])
