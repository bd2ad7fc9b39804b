"""Exact value filters between catalog values and HIS values, shared by request templates and reply mapping.

Money is integer fen on our side and a yuan string on most HIS (``12.50``); the conversion goes through
:class:`~decimal.Decimal` and refuses anything that is not exactly representable in fen, so a sub-fen amount
or a float artefact can never be rounded away silently. HIS clocks are local (Asia/Shanghai unless the profile
says otherwise) and carry no offset: aware datetimes are converted to that zone before formatting, and naive
HIS times are read as being in it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from adapters.mapping.errors import FilterError

SHANGHAI = ZoneInfo("Asia/Shanghai")
HIS_DATETIME = "%Y-%m-%d %H:%M:%S"
HIS_DATE = "%Y-%m-%d"
_DATETIME_FORMATS = (HIS_DATETIME, "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M:%S", "%Y%m%d%H%M%S")
_DATE_FORMATS = (HIS_DATE, "%Y%m%d", "%Y/%m/%d")
_ISO_DATES = {"%Y-%m-%d": re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), "%Y%m%d": re.compile(r"[0-9]{8}")}
"""Date formats that ``date.fromisoformat`` reads exactly as ``strptime`` does, for text of this shape."""
_YUAN = re.compile(r"[+-]?[0-9]+(?:\.[0-9]{1,2})?")
_INT = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"1", "true", "y", "yes", "t"})
_FALSE = frozenset({"0", "false", "n", "no", "f"})


def yuan(fen: int) -> str:
    """Integer fen → yuan string with exactly two decimals (``1250`` → ``"12.50"``)."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise FilterError(f"yuan: expected an integer amount in fen, got {fen!r}")
    return f"{Decimal(fen).scaleb(-2):.2f}"


def fen(value: str | int) -> int:
    """Yuan string (``"12.5"``, ``"12.50"``, ``"12"``) → integer fen; more than two decimals is an error."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FilterError(f"fen: expected a yuan amount as text, got {value!r}")
    text = str(value).strip()
    if not _YUAN.fullmatch(text):
        raise FilterError(f"fen: {value!r} is not a yuan amount with at most two decimals")
    return int(Decimal(text).scaleb(2))


def to_int(value: str | int) -> int:
    """Decimal integer text → int; refuses ``"1.0"``, ``"1e3"`` and empty text."""
    if isinstance(value, bool):
        raise FilterError(f"int: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not _INT.fullmatch(text):
        raise FilterError(f"int: {value!r} is not an integer")
    return int(text)


def to_bool(value: str | int | bool) -> bool:
    """HIS flag (``1``/``0``, ``true``/``false``, ``Y``/``N``) → bool; anything else is an error."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise FilterError(f"bool: {value!r} is not a recognised flag (1/0, true/false, Y/N)")


def xml_text(value: Any) -> str:
    """A value escaped for XML text, ``None`` as empty: for XML built where templates do not escape (an XML
    document passed as a stored-procedure parameter)."""
    if value is None:
        return ""
    text = str(value)
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )


def bool01(value: Any) -> str:
    """Boolean → ``"1"``/``"0"``, the flag most HIS expect."""
    return "1" if to_bool(value) else "0"


def _as_datetime(value: str | dt.datetime | dt.date, name: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise FilterError(f"{name}: {value!r} is not an ISO 8601 date or datetime")


def _in_zone(moment: dt.datetime, tz: ZoneInfo, name: str) -> dt.datetime:
    """An aware instant in the HIS zone; one the calendar cannot hold there (year 9999 at UTC-12) is refused."""
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(tz)
    except OverflowError:
        raise FilterError(f"{name}: {moment.isoformat()} is out of range in the HIS time zone {tz}") from None


def format_datetime(value: str | dt.datetime, fmt: str = HIS_DATETIME, *, tz: ZoneInfo = SHANGHAI) -> str:
    """ISO datetime → HIS local time text; an aware value is converted to the HIS zone first."""
    moment = _in_zone(_as_datetime(value, "datetime"), tz, "datetime")
    return moment.strftime(fmt)


def format_date(value: str | dt.date, fmt: str = HIS_DATE, *, tz: ZoneInfo = SHANGHAI) -> str:
    """ISO date (or datetime, taken in the HIS zone) → HIS date text."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.strftime(fmt)
    moment = _in_zone(_as_datetime(value, "date"), tz, "date")
    return moment.date().strftime(fmt)


def parse_datetime(text: str, fmt: str | None = None, *, tz: ZoneInfo = SHANGHAI) -> str:
    """HIS time text → ISO 8601 with offset; a naive time is taken to be in the HIS zone."""
    raw = str(text).strip()
    moment: dt.datetime | None = None
    for candidate in (fmt,) if fmt else _DATETIME_FORMATS:
        try:
            moment = dt.datetime.strptime(raw, candidate)
            break
        except ValueError:
            continue
    if moment is None and fmt is None:
        try:
            moment = dt.datetime.fromisoformat(raw)
        except ValueError:
            pass
    if moment is None:
        raise FilterError(f"datetime: {text!r} does not match {fmt or ' / '.join(_DATETIME_FORMATS)}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.isoformat()


def parse_date(text: str, fmt: str | None = None) -> str:
    """HIS date text → ISO date; a date-time such as ``1990-01-02 00:00:00`` gives its date."""
    raw = str(text).strip()
    for candidate in (fmt,) if fmt else _ISO_DATES:  # fast path: strptime costs ~20 µs (locale lookups)
        shape = _ISO_DATES.get(candidate)
        if shape is not None and shape.fullmatch(raw):
            try:
                return dt.date.fromisoformat(raw).isoformat()
            except ValueError:
                break  # not a real date: strptime below says so as before
    for candidate in (fmt,) if fmt else _DATE_FORMATS:
        try:
            return dt.datetime.strptime(raw, candidate).date().isoformat()
        except ValueError:
            continue
    if fmt is None:
        for candidate in _DATETIME_FORMATS:
            try:
                return dt.datetime.strptime(raw, candidate).date().isoformat()
            except ValueError:
                continue
    raise FilterError(f"date: {text!r} does not match {fmt or ' / '.join(_DATE_FORMATS)}")


class CodeTables:
    """The profile's code tables: our value → HIS code for requests, and the reverse for replies."""

    def __init__(self, tables: Mapping[str, Mapping[str, str]]) -> None:
        self._forward = {name: dict(table) for name, table in tables.items()}
        self._reverse: dict[str, dict[str, str]] = {}
        for name, table in self._forward.items():
            reverse: dict[str, str] = {}
            for ours, theirs in table.items():
                reverse.setdefault(theirs, ours)
            self._reverse[name] = reverse

    def names(self) -> frozenset[str]:
        return frozenset(self._forward)

    def ambiguous(self, table: str) -> list[str]:
        """HIS codes that more than one of our values map to (cannot be read back unambiguously)."""
        seen: dict[str, int] = {}
        for theirs in self._forward.get(table, {}).values():
            seen[theirs] = seen.get(theirs, 0) + 1
        return sorted(code for code, count in seen.items() if count > 1)

    def encode(self, value: Any, table: str) -> str:
        mapping = self._table(self._forward, table)
        key = "" if value is None else str(value)
        try:
            return mapping[key]
        except KeyError:
            raise FilterError(f"code table {table!r} has no entry for {key!r}") from None

    def decode(self, code: str, table: str) -> str:
        mapping = self._table(self._reverse, table)
        try:
            return mapping[code]
        except KeyError:
            raise FilterError(f"code table {table!r} has no value for HIS code {code!r}") from None

    @staticmethod
    def _table(tables: dict[str, dict[str, str]], table: str) -> dict[str, str]:
        try:
            return tables[table]
        except KeyError:
            raise FilterError(f"no code table named {table!r}") from None


class Filters:
    """One profile's filter set: the code tables and the HIS time zone bound into plain callables."""

    def __init__(self, code_tables: CodeTables | None = None, tz: ZoneInfo = SHANGHAI) -> None:
        self.codes = code_tables or CodeTables({})
        self.tz = tz

    def template_filters(self) -> dict[str, Callable[..., Any]]:
        """The filters request templates may use."""
        tz = self.tz
        return {
            "yuan": yuan,
            "fen": fen,
            "datetime": lambda value, fmt=HIS_DATETIME: format_datetime(value, fmt, tz=tz),
            "date": lambda value, fmt=HIS_DATE: format_date(value, fmt, tz=tz),
            "code": self.codes.encode,
            "bool01": bool01,
            "xml": xml_text,
        }

    def convert(self, text: str, kind: str, fmt: str | None = None) -> Any:
        """A HIS text value → the JSON value of one catalog field type."""
        if kind == "str":
            return text
        if kind == "int":
            return to_int(text)
        if kind == "fen":
            return fen(text)
        if kind == "bool":
            return to_bool(text)
        if kind == "date":
            return parse_date(text, fmt)
        if kind == "datetime":
            return parse_datetime(text, fmt, tz=self.tz)
        raise FilterError(f"unknown field type {kind!r}")


FIELD_TYPES = ("str", "int", "fen", "bool", "date", "datetime")
