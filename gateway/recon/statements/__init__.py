"""Channel statements: one parser per channel's file format, all producing ``normalize.StatementRow``.

Statements stream. A busy hospital's day is a million rows; holding the decoded file, its lines and its rows at
once took 1.3 GB. A parser is therefore a generator over the file's rows::

    def rows(data: bytes | str, *, merchant: str | None = None,
             tally: StatementTally | None = None) -> Iterator[StatementRow]

It reads ``data`` through ``statements.source`` (gzip / zip member → incremental decode → lines), yields each
row as soon as it is read, and after the last row checks the statement's own summary against what it yielded,
raising ``StatementError`` on a mismatch. When it returns, ``tally`` (if given) holds the rows' counts and sums.
A consumer must exhaust the generator before trusting any row: the check runs at the end (``check`` below
does one pass that keeps nothing; ``store.fetch`` calls it before a run sees a row).

Adapting a parser written as ``parse(data, *, merchant=None) -> ParsedStatement`` is mechanical:

1. rename it ``rows`` and add ``tally: StatementTally | None = None`` (a fresh one when ``None``);
2. read lines with ``source.text_lines(data, what)`` (or ``source.zip_lines``) instead of decoding the bytes and
   calling ``splitlines()``;
3. drop the list of rows: replace ``rows.append(row)`` by ``tally.add(row)`` then ``yield row``, and take
   whatever it computed from the list (``len(rows)``, sums by type) from ``tally``;
4. where it built ``ParsedStatement(rows, totals)`` and called ``check_totals(parsed, what)``, call
   ``check_tally(totals, tally, what)``; return nothing;
5. keep ``def parse(data, *, merchant=None): return collect(rows(data, merchant=merchant))`` for callers that
   want the whole statement, and list ``rows`` in ``PARSERS``.

Until then, ``register(channel, parse=…)`` accepts the old form as it is (it then holds that channel's rows in
memory, as before).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from gateway.recon.normalize import ParsedStatement, StatementRow, StatementTally, collect
from gateway.recon.statements import alipay, unionpay, wechat


class RowParser(Protocol):
    def __call__(
        self, data: bytes | str, *, merchant: str | None = None, tally: StatementTally | None = None
    ) -> Iterator[StatementRow]: ...


WholeParser = Callable[..., ParsedStatement]
"""The older form: ``parse(data, *, merchant=None) -> ParsedStatement``."""

PARSERS: dict[str, RowParser] = {"wechat": wechat.rows, "alipay": alipay.rows}


def whole_file(parse: WholeParser) -> RowParser:
    """A streaming parser over one that returns the whole statement (which holds every row in memory)."""

    def rows(
        data: bytes | str, *, merchant: str | None = None, tally: StatementTally | None = None
    ) -> Iterator[StatementRow]:
        parsed = parse(data, merchant=merchant)
        if tally is not None:
            for row in parsed.rows:
                tally.add(row)
        yield from parsed.rows

    return rows


def register(channel: str, *, rows: RowParser | None = None, parse: WholeParser | None = None) -> None:
    """Add a channel's parser: streaming (``rows``) or, for one not yet adapted, whole-file (``parse``)."""
    if rows is not None and parse is None:
        PARSERS[channel] = rows
    elif parse is not None and rows is None:
        PARSERS[channel] = whole_file(parse)
    else:
        raise TypeError("register a channel's parser with exactly one of rows= or parse=")


register("unionpay", parse=unionpay.parse)  # UnionPay's ZM file, read whole (records are fixed-width, per zip member)


def _parser(channel: str) -> RowParser:
    try:
        return PARSERS[channel]
    except KeyError:
        raise ValueError(f"no statement parser for channel {channel!r}") from None


def rows(
    channel: str, data: bytes | str, *, merchant: str | None = None, tally: StatementTally | None = None
) -> Iterator[StatementRow]:
    """The statement's rows as they stream (see the module docstring for when they can be trusted)."""
    return _parser(channel)(data, merchant=merchant, tally=tally)


def check(channel: str, data: bytes | str, *, merchant: str | None = None) -> StatementTally:
    """One pass over the statement that keeps no row: its counts and sums, or StatementError."""
    tally = StatementTally()
    for _ in _parser(channel)(data, merchant=merchant, tally=tally):
        pass
    return tally


def parse(channel: str, data: bytes | str, *, merchant: str | None = None) -> ParsedStatement:
    """The whole statement in memory (the CLI, tests); StatementError if it does not add up."""
    return collect(rows(channel, data, merchant=merchant))


class StatementRows:
    """The rows of a statement already checked: each iteration reads them again from its bytes, so the rows are
    never all in memory; ``len`` is the checked count."""

    def __init__(self, channel: str, data: bytes, merchant: str | None, count: int) -> None:
        self.channel, self.data, self.merchant, self.count = channel, data, merchant, count

    def __iter__(self) -> Iterator[StatementRow]:
        if not self.data:
            return iter(())
        return rows(self.channel, self.data, merchant=self.merchant)

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class CheckedStatement:
    """A statement whose summary has been checked: its tally, and its rows to stream (as often as needed)."""

    rows: StatementRows
    tally: StatementTally

    @classmethod
    def of(cls, channel: str, data: bytes, *, merchant: str | None = None) -> CheckedStatement:
        """Check ``data`` (StatementError if it does not add up) and keep it to stream its rows later."""
        tally = check(channel, data, merchant=merchant)
        return cls(StatementRows(channel, data, merchant, tally.count), tally)

    @classmethod
    def empty(cls, channel: str) -> CheckedStatement:
        return cls(StatementRows(channel, b"", None, 0), StatementTally())

    @property
    def pay_fen(self) -> int:
        return self.tally.pay_fen

    @property
    def refund_fen(self) -> int:
        return self.tally.refund_fen

    @property
    def fee_fen(self) -> int:
        return self.tally.fee_fen
