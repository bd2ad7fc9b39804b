"""Statements per merchant and day: downloaded through the channel (which checks the channel's own hash or zip
integrity), kept raw with their SHA-256, and checked against their summary rows in one streaming pass that keeps
no row; the run then streams the rows again from the same bytes (``FetchedStatement.parsed.rows``).

A statement that fails its checks is stored too (``status = failed`` with the reason) so an operator can see
what arrived, and the run fails loudly: reconciling against a statement that does not add up would turn its
errors into false exceptions. A channel with no statement for the day (no trades) is an empty statement.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.channels.base import Channel, ChannelError
from gateway.model import utcnow
from gateway.recon.normalize import StatementError, StatementTally
from gateway.recon.statements import CheckedStatement
from gateway.store.db import Database
from gateway.store.recon_tables import statements

NO_STATEMENT = frozenset({"NO_STATEMENT_EXIST", "isp.bill_not_exist", "ACQ.BILL_NOT_EXIST"})


@dataclass(frozen=True)
class FetchedStatement:
    merchant_id: str
    channel: str
    statement_id: int | None
    parsed: CheckedStatement
    """Checked; ``parsed.rows`` streams the rows again from the stored bytes, ``len`` gives their count."""


async def _store(
    db: Database,
    hospital: str,
    merchant_id: str,
    channel: str,
    day: dt.date,
    raw: bytes,
    tally: StatementTally | None,
    error: str | None,
) -> int:
    digest = hashlib.sha256(raw).hexdigest()
    values: dict[str, Any] = {
        "status": "parsed" if tally is not None else "failed",
        "error": error,
        "row_count": tally.count if tally else None,
        "pay_count": tally.pay_count if tally else None,
        "refund_count": tally.refund_count if tally else None,
        "pay_fen": tally.pay_fen if tally else None,
        "refund_fen": tally.refund_fen if tally else None,
        "fee_fen": tally.fee_fen if tally else None,
        "fetched_at": utcnow(),
    }
    t = statements.c
    async with db.write() as conn:
        existing = (
            await conn.execute(sa.select(t.id).where(t.merchant_id == merchant_id, t.day == day, t.sha256 == digest))
        ).scalar_one_or_none()
        if existing is not None:
            await conn.execute(sa.update(statements).where(t.id == existing).values(**values))
            return int(existing)
        row = await conn.execute(
            sa.insert(statements)
            .values(
                hospital_id=hospital,
                merchant_id=merchant_id,
                channel=channel,
                day=day,
                raw=raw,
                sha256=digest,
                size=len(raw),
                **values,
            )
            .returning(t.id)
        )
        return int(row.scalar_one())


async def fetch(
    db: Database, hospital: str, merchant_id: str, channel_name: str, channel: Channel, day: dt.date
) -> FetchedStatement:
    """Download, store raw, parse and check one merchant's statement of ``day``; StatementError if it fails."""
    try:
        raw = await channel.download_bill(day)
    except ChannelError as exc:
        if exc.code in NO_STATEMENT:
            return FetchedStatement(merchant_id, channel_name, None, CheckedStatement.empty(channel_name))
        raise
    try:
        parsed = await asyncio.to_thread(CheckedStatement.of, channel_name, raw)
    except StatementError as exc:
        await _store(db, hospital, merchant_id, channel_name, day, raw, None, str(exc))
        raise StatementError(f"merchant {merchant_id} statement of {day}: {exc}") from None
    statement_id = await _store(db, hospital, merchant_id, channel_name, day, raw, parsed.tally, None)
    return FetchedStatement(merchant_id, channel_name, statement_id, parsed)


async def stored(db: Database, merchant_id: str, day: dt.date) -> list[dict[str, Any]]:
    """The statements kept for a merchant's day, newest first, without their bytes."""
    cols = [c for c in statements.c if c.name != "raw"]
    stmt = (
        sa.select(*cols)
        .where(statements.c.merchant_id == merchant_id, statements.c.day == day)
        .order_by(statements.c.id.desc())
    )
    async with db.read() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]
