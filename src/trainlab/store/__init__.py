"""The run store: every SQL statement and engine setting of trainlab lives in this package.

`engine` makes engines (URLs, SQLite pragmas, read-only engines), `schema` declares the tables, `store`
reads and writes them (`Store`, `MetricBuffer`). Nothing here imports torch.
"""

from trainlab.store.store import (
                                  BUSY_TIMEOUT_S,
                                  DEFAULT_URL,
                                  METRIC_BLOCK,
                                  RUN_STATUSES,
                                  MetricBuffer,
                                  RunNotFound,
                                  Store,
                                  hide_password,
                                  normalize_url,
                                  sqlite_settings,
)

__all__ = ["Store", "MetricBuffer", "RunNotFound", "RUN_STATUSES", "METRIC_BLOCK", "BUSY_TIMEOUT_S", "DEFAULT_URL",
           "hide_password", "normalize_url", "sqlite_settings"]
