"""The run store: every SQL statement and engine setting of trainlab lives in this package.

`engine` makes engines (URLs, SQLite pragmas, read-only and Optuna engines), `locks` holds PostgreSQL's
advisory locks, `schema` declares the tables, `store` reads and writes them (`Store`; `buckets` is its
downsampling query, `values` its argument checks), `buffer` batches metric rows for it (`MetricBuffer`),
`liveness` says which running runs are lost, `errors` what a database error means for the user.
Nothing here imports torch.
"""

from trainlab.store.engine import (
    BUSY_TIMEOUT_S,
    DEFAULT_URL,
    hide_password,
    is_in_memory,
    make_engine,
    normalize_url,
    optuna_engine_kwargs,
    prepare_optuna_engine,
    read_only_url,
    sqlite_file,
    sqlite_settings,
)
from trainlab.store.errors import StoreFault, StoreUnavailable, StoreUnusable, classify
from trainlab.store.liveness import HEARTBEAT_S, LOST_AFTER_S, RunBusy
from trainlab.store.locks import AdvisoryLock
from trainlab.store.schema import METRIC_BLOCK, RUN_STATUSES, STORED_STATUSES
from trainlab.store.buffer import MetricBuffer
from trainlab.store.store import RunNotFound, Store

__all__ = ["Store", "MetricBuffer", "RunNotFound", "RUN_STATUSES", "METRIC_BLOCK", "BUSY_TIMEOUT_S", "DEFAULT_URL",
           "hide_password", "normalize_url", "sqlite_settings", "sqlite_file", "is_in_memory", "read_only_url",
           "make_engine", "optuna_engine_kwargs", "prepare_optuna_engine", "AdvisoryLock", "STORED_STATUSES",
           "StoreFault", "StoreUnavailable", "StoreUnusable", "classify", "RunBusy", "HEARTBEAT_S", "LOST_AFTER_S"]
