"""Exact conversion between integer fen and the yuan strings some channels speak ("12.50")."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation


def fen_to_yuan(fen: int) -> str:
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"fen must be an int, not {type(fen).__name__}")
    return str((Decimal(fen) / 100).quantize(Decimal("0.01")))


def yuan_to_fen(yuan: str | int | Decimal) -> int:
    """``"12.50"`` → 1250. Refuses floats, more than two decimals and anything that is not a number."""
    if isinstance(yuan, float | bool):
        raise TypeError("yuan amounts are strings or Decimals, never floats")
    try:
        value = Decimal(str(yuan).strip())
    except InvalidOperation:
        raise ValueError(f"not an amount: {yuan!r}") from None
    if not value.is_finite() or value != value.quantize(Decimal("0.01")):
        raise ValueError(f"not an amount in yuan with at most two decimals: {yuan!r}")
    return int(value * 100)
