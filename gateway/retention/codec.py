"""Rows as archive lines: each column's value in JSON by its declared type (times as ISO 8601 with their
offset, dates as ISO dates, bytes as base64), read back to the same Python values, and a canonical text per row
so that a row in a file and the same row in the database compare equal byte for byte."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from gateway.store.schema import UtcDateTime


def _kind(column: sa.Column[Any]) -> str:
    kind = column.type
    if isinstance(kind, UtcDateTime):
        return "time"
    if isinstance(kind, sa.LargeBinary):
        return "bytes"
    if isinstance(kind, sa.Date) and not isinstance(kind, sa.DateTime):
        return "date"
    return "plain"


def encode(table: sa.Table, row: Any) -> dict[str, Any]:
    """A database row (a ``Row`` or a mapping) as JSON-ready values, every column of the table."""
    mapping = row._mapping if hasattr(row, "_mapping") else row
    out: dict[str, Any] = {}
    for column in table.c:
        value = mapping[column.name]
        if value is None:
            out[column.name] = None
            continue
        kind = _kind(column)
        if kind == "time":
            out[column.name] = value.astimezone(dt.UTC).isoformat(timespec="microseconds")
        elif kind == "bytes":
            out[column.name] = base64.b64encode(bytes(value)).decode()
        elif kind == "date":
            out[column.name] = value.isoformat()
        elif isinstance(value, bool):
            out[column.name] = value
        else:
            out[column.name] = value
    return out


def decode(table: sa.Table, values: dict[str, Any]) -> dict[str, Any]:
    """Archive values back to what an insert into ``table`` takes."""
    out: dict[str, Any] = {}
    for column in table.c:
        value = values.get(column.name)
        if value is None:
            out[column.name] = None
            continue
        kind = _kind(column)
        if kind == "time":
            out[column.name] = dt.datetime.fromisoformat(value)
        elif kind == "bytes":
            out[column.name] = base64.b64decode(value)
        elif kind == "date":
            out[column.name] = dt.date.fromisoformat(value)
        else:
            out[column.name] = value
    return out


def canonical(values: dict[str, Any]) -> str:
    """The one text of a row that both sides of a comparison produce."""
    return json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def money_columns(table: sa.Table) -> list[str]:
    """Integer-fen columns (``*_fen``), whose totals a manifest records."""
    return [c.name for c in table.c if c.name.endswith("_fen") and isinstance(c.type, sa.BigInteger)]
