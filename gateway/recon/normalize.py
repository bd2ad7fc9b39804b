"""The one normalized statement row every channel's parser produces, and the conversions they share.

Money is integer fen, positive; ``type`` says the direction. Times are aware, in Asia/Shanghai (the channels
write local times without a zone). Yuan strings are read exactly (``statements.fields``), never through float.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo

from bridge import clock

SHANGHAI = ZoneInfo("Asia/Shanghai")
EntryType = Literal["pay", "refund"]


class StatementError(ValueError):
    """The statement cannot be trusted as a whole: the batch fails loudly, nothing of it is used."""


@dataclass(frozen=True, slots=True)
class StatementRow:
    channel: str
    merchant: str
    channel_trade_no: str
    out_trade_no: str
    out_refund_no: str | None
    channel_refund_no: str | None
    type: EntryType
    amount_fen: int
    fee_fen: int
    time: dt.datetime
    status: str
    """``success``, or the channel's own word for anything else (lower case)."""

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["time"] = self.time.isoformat()
        return out


@dataclass(frozen=True, slots=True)
class StatementTotals:
    """What a statement's own summary rows say; checked against the rows parsed."""

    count: int
    pay_fen: int | None = None
    refund_fen: int | None = None
    fee_fen: int | None = None
    pay_count: int | None = None
    refund_count: int | None = None


@dataclass(frozen=True, slots=True)
class ParsedStatement:
    rows: list[StatementRow]
    totals: StatementTotals

    @property
    def pay_fen(self) -> int:
        return sum(r.amount_fen for r in self.rows if r.type == "pay")

    @property
    def refund_fen(self) -> int:
        return sum(r.amount_fen for r in self.rows if r.type == "refund")

    @property
    def fee_fen(self) -> int:
        return sum(r.fee_fen for r in self.rows)


def local_time(text: str) -> dt.datetime:
    """``2021-01-28 17:07:11`` (or Alipay's ``2021年01月28日 17:07:11``) in Asia/Shanghai."""
    text = text.strip()
    try:
        if "年" in text:
            return dt.datetime.strptime(text, "%Y年%m月%d日 %H:%M:%S").replace(tzinfo=SHANGHAI)
        return dt.datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)
    except ValueError:
        raise StatementError(f"{text!r} is not a time") from None


def shanghai_today(now: dt.datetime | None = None) -> dt.date:
    return (now or clock.utcnow()).astimezone(SHANGHAI).date()


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The day's [start, end) as aware Asia/Shanghai times."""
    start = dt.datetime.combine(day, dt.time(), SHANGHAI)
    return start, start + dt.timedelta(days=1)


def check_totals(parsed: ParsedStatement, what: str) -> None:
    """Compare the rows with the statement's own summary; any difference fails the batch."""
    t = parsed.totals
    rows = parsed.rows
    problems = []
    if t.count != len(rows):
        problems.append(f"{t.count} rows announced, {len(rows)} parsed")
    if t.pay_count is not None and t.pay_count != sum(r.type == "pay" for r in rows):
        problems.append(f"{t.pay_count} payments announced, {sum(r.type == 'pay' for r in rows)} parsed")
    if t.refund_count is not None and t.refund_count != sum(r.type == "refund" for r in rows):
        problems.append(f"{t.refund_count} refunds announced, {sum(r.type == 'refund' for r in rows)} parsed")
    for name, announced, actual in (
        ("payments", t.pay_fen, parsed.pay_fen),
        ("refunds", t.refund_fen, parsed.refund_fen),
        ("fees", t.fee_fen, parsed.fee_fen),
    ):
        if announced is not None and announced != actual:
            problems.append(f"{name} total {announced} fen announced, rows sum to {actual} fen")
    if problems:
        raise StatementError(f"{what}: summary mismatch: " + "; ".join(problems))
