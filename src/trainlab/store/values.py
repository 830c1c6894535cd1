"""Checks and conversions of the values a caller hands the store, before they become row values.

Each raises ValueError naming the field, what it expects and what it got. Times are UTC ISO 8601
strings of fixed width ("2024-05-01T12:00:00.000000+00:00"), so they sort as text and travel to JSON
as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from trainlab.store.schema import STORED_STATUSES

__all__ = ["UPDATABLE", "now", "as_time", "as_int", "as_float", "as_json_dict", "as_str", "check_status", "run_values"]

# the run fields that change after create_run (Store.update_run)
UPDATABLE = ("status", "reason", "best_metric", "best_epoch", "epochs", "checkpoint", "summary", "finished")


def now() -> str:
    """The time now, as the store writes it."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def as_time(field: str, value: Any) -> str | None:
    """A UTC ISO string from a datetime (naive means UTC) or an ISO string."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{field}: expected an ISO 8601 time, got {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"{field}: expected a datetime or ISO 8601 string, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def as_int(field: str, value: Any, *, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    try:
        return int(value.__index__())
    except (AttributeError, TypeError):
        raise ValueError(f"{field}: expected an integer, got {value!r}") from None


def as_float(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: expected a number, got {value!r}") from None


def as_json_dict(field: str, value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise ValueError(f"{field}: expected a dict, got {type(value).__name__} {value!r}")
    value = dict(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{field}: not JSON-serializable: {err}") from None
    return value


def as_str(field: str, value: Any, *, nullable: bool) -> str | None:
    if value is None and nullable:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a string, got {value!r}")
    return value


def check_status(status: Any, allowed: Sequence[str] = STORED_STATUSES) -> str:
    if status not in allowed:
        raise ValueError(f"status must be one of {', '.join(allowed)}; got {status!r}")
    return status


def run_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of tl_runs that `Store.update_run` sets, checked and converted: field -> row value."""
    unknown = sorted(set(fields) - set(UPDATABLE))
    if unknown:
        raise ValueError(f"update_run: unknown field {unknown[0]!r}; known fields: {', '.join(UPDATABLE)}")
    values: dict[str, Any] = {}
    for field, value in fields.items():
        if field == "status":
            values[field] = check_status(value)
        elif field in ("reason", "checkpoint"):
            values[field] = as_str(field, value, nullable=True)
        elif field == "best_metric":
            values[field] = as_float(field, value)
        elif field == "best_epoch":
            values[field] = as_int(field, value, nullable=True)
        elif field == "epochs":
            values[field] = as_int(field, value, nullable=False)
        elif field == "summary":
            values[field] = as_json_dict(field, value)
        elif field == "finished":
            values[field] = as_time(field, value)
    return values
