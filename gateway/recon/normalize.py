"""The one normalized statement row every channel's parser produces, and the conversions they share.

Money is integer fen, positive; ``type`` says the direction. Times are aware, in Asia/Shanghai (the channels
write local times without a zone). Yuan strings are read exactly (``statements.fields``), never through float.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from bridge import clock
from gateway.model import LOCAL_TZ

SHANGHAI = LOCAL_TZ
EntryType = Literal["pay", "refund"]


class StatementError(ValueError):
    """The statement cannot be trusted as a whole: the batch fails loudly, nothing of it is used."""


@dataclass(frozen=True, slots=True, kw_only=True)
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
        """The row as JSON-ready values, fields in declaration order. Built by hand: ``dataclasses.asdict``
        deep-copies every field, which was a third of a million-row run's time."""
        return {
            "channel": self.channel,
            "merchant": self.merchant,
            "channel_trade_no": self.channel_trade_no,
            "out_trade_no": self.out_trade_no,
            "out_refund_no": self.out_refund_no,
            "channel_refund_no": self.channel_refund_no,
            "type": self.type,
            "amount_fen": self.amount_fen,
            "fee_fen": self.fee_fen,
            "time": self.time.isoformat(),
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class StatementTotals:
    """What a statement's own summary rows say; checked against the rows parsed."""

    count: int
    pay_fen: int | None = None
    refund_fen: int | None = None
    fee_fen: int | None = None
    pay_count: int | None = None
    refund_count: int | None = None


@dataclass(slots=True)
class StatementTally:
    """Counts and sums of a statement's rows, kept as they stream past: what the summary is checked against and
    what is stored, without keeping the rows."""

    count: int = 0
    pay_count: int = 0
    refund_count: int = 0
    pay_fen: int = 0
    refund_fen: int = 0
    fee_fen: int = 0

    def add(self, row: StatementRow) -> None:
        self.count += 1
        if row.type == "pay":
            self.pay_count += 1
            self.pay_fen += row.amount_fen
        else:
            self.refund_count += 1
            self.refund_fen += row.amount_fen
        self.fee_fen += row.fee_fen

    @classmethod
    def of(cls, rows: Iterable[StatementRow]) -> StatementTally:
        tally = cls()
        for row in rows:
            tally.add(row)
        return tally


@dataclass(frozen=True, slots=True)
class ParsedStatement:
    """A whole statement in memory: for the CLI, tests and small files; runs stream (``statements.rows``)."""

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


def collect(rows: Iterable[StatementRow]) -> ParsedStatement:
    """A streamed statement held whole. Exhausting ``rows`` runs the parser's summary check; the totals kept are
    those of the rows, which the check has just found equal to what the statement announced."""
    kept = list(rows)
    t = StatementTally.of(kept)
    return ParsedStatement(
        kept, StatementTotals(t.count, t.pay_fen, t.refund_fen, t.fee_fen, t.pay_count, t.refund_count)
    )


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
    """``check_tally`` for a statement held whole (parsers not yet streaming)."""
    check_tally(parsed.totals, StatementTally.of(parsed.rows), what)


def check_tally(totals: StatementTotals, tally: StatementTally, what: str) -> None:
    """Compare the rows (as tallied) with what the statement's own summary announced; any difference fails the
    batch. Totals left ``None`` are ones the format does not promise and are not checked."""
    problems = []
    if totals.count != tally.count:
        problems.append(f"{totals.count} rows announced, {tally.count} parsed")
    if totals.pay_count is not None and totals.pay_count != tally.pay_count:
        problems.append(f"{totals.pay_count} payments announced, {tally.pay_count} parsed")
    if totals.refund_count is not None and totals.refund_count != tally.refund_count:
        problems.append(f"{totals.refund_count} refunds announced, {tally.refund_count} parsed")
    for name, announced, actual in (
        ("payments", totals.pay_fen, tally.pay_fen),
        ("refunds", totals.refund_fen, tally.refund_fen),
        ("fees", totals.fee_fen, tally.fee_fen),
    ):
        if announced is not None and announced != actual:
            problems.append(f"{name} total {announced} fen announced, rows sum to {actual} fen")
    if problems:
        raise StatementError(f"{what}: summary mismatch: " + "; ".join(problems))
