"""Cell-level helpers the statement parsers share: header lookup by name (with legacy aliases) and fast,
exact yuan → fen conversion for the millions of cells a busy day has."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from gateway.recon.normalize import SHANGHAI, StatementError, local_time


class Header:
    """Column positions by name. A parser asks for a column under any of its known names, so a reordered or
    legacy column set parses the same; a missing required column fails the batch."""

    def __init__(self, names: Sequence[str], what: str) -> None:
        self.names = [n.strip().lstrip("\ufeff`").strip() for n in names]
        self.index = {n: i for i, n in enumerate(self.names) if n}
        self.what = what

    def find(self, *aliases: str) -> int | None:
        for a in aliases:
            if a in self.index:
                return self.index[a]
        return None

    def need(self, *aliases: str) -> int:
        i = self.find(*aliases)
        if i is None:
            raise StatementError(f"{self.what}: no column {' / '.join(aliases)} in the header")
        return i


def _scaled(text: str, places: int, field: str) -> int:
    """A decimal string as an integer count of 10**-places, exactly: plain digit strings without Decimal."""
    s = text.strip()
    if not s:
        return 0
    whole, _, frac = s.partition(".")
    if len(frac) <= places and "_" not in s and " " not in s:
        try:
            return int((whole or "0") + frac.ljust(places, "0"))
        except ValueError:
            pass
    try:
        value = Decimal(s).scaleb(places)
    except InvalidOperation:
        raise StatementError(f"{field}: {text!r} is not an amount in yuan") from None
    if value != value.to_integral_value():
        raise StatementError(f"{field}: {text!r} has more than {places} decimals")
    return int(value)


def fen(text: str, field: str = "amount") -> int:
    """Yuan with at most two decimals → fen, exactly; a third decimal fails the batch rather than round."""
    return _scaled(text, 2, field)


def fen_abs(text: str, field: str = "amount") -> int:
    return abs(fen(text, field))


FEE_PLACES = 5


def fee_units(text: str) -> int:
    """Fees carry up to 5 decimals (WeChat): an exact integer of 10**-5 yuan, for summing and comparing."""
    return _scaled(text, FEE_PLACES, "fee")


def units_to_fen(units: int) -> int:
    """Round half away from zero to the fen, as the channels settle."""
    q, r = divmod(abs(units), 1000)
    q += r >= 500
    return -q if units < 0 else q


def fee_fen(text: str) -> int:
    return units_to_fen(fee_units(text))


class TimeCache:
    """Statement times repeat (a busy second has many rows): parse each distinct string once."""

    def __init__(self) -> None:
        self._seen: dict[str, dt.datetime] = {}

    def __call__(self, text: str) -> dt.datetime:
        value = self._seen.get(text)
        if value is None:
            try:
                value = dt.datetime.fromisoformat(text.strip()).replace(tzinfo=SHANGHAI)
            except ValueError:
                value = local_time(text)
            if len(self._seen) < 200_000:
                self._seen[text] = value
        return value
