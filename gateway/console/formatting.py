"""How the console shows values: money as yuan with two decimals from integer fen (Decimal, never float),
times in Beijing time, which is what finance staff read on their statements."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from bridge import clock
from gateway.channels.money import yuan_to_fen

BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


def yuan(fen: int | None, *, grouped: bool = True) -> str:
    """``123456`` → ``1,234.56``; ``None`` → an empty string (a record that is missing, not zero)."""
    if fen is None:
        return ""
    value = (Decimal(int(fen)) / 100).quantize(Decimal("0.01"))
    return f"{value:,}" if grouped else str(value)


def yuan_decimal(fen: int | None) -> Decimal | None:
    return None if fen is None else (Decimal(int(fen)) / 100).quantize(Decimal("0.01"))


def parse_yuan(text: str) -> int:
    """What a clerk types (``12.5``, ``1,200.00``, ``¥30``) → fen; ValueError if it is not an amount."""
    cleaned = text.strip().replace(",", "").replace("，", "").lstrip("¥￥").strip()
    return yuan_to_fen(cleaned)


def local_time(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def today() -> dt.date:
    return clock.utcnow().astimezone(BEIJING).date()


def cell(value: Any) -> str:
    """One value of a raw record or an audit entry, as text: structures as compact JSON, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    if isinstance(value, dt.datetime):
        return local_time(value)
    return str(value)
