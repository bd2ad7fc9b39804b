"""Reads the console needs beyond reconciliation's own API: the hospitals and channels to filter by, a day's
figures per channel (from the statements and the exceptions), and an exception's audit history."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from gateway.recon import exceptions as recon
from gateway.store import audit
from gateway.store.db import Database
from gateway.store.recon_tables import recon_exceptions, recon_runs, statements
from gateway.store.tables import hospitals, merchants


@dataclass
class ChannelDay:
    channel: str
    pay_count: int = 0
    pay_fen: int = 0
    refund_count: int = 0
    refund_fen: int = 0
    fee_fen: int = 0
    statements: int = 0
    by_class: dict[str, int] = field(default_factory=dict)


CHANNEL_FIELDS = ("statements", "pay_count", "pay_fen", "refund_count", "refund_fen", "fee_fen")


async def hospital_names(db: Database) -> dict[str, str]:
    async with db.read() as conn:
        rows = await conn.execute(sa.select(hospitals.c.id, hospitals.c.name).order_by(hospitals.c.id))
        return {r.id: r.name or r.id for r in rows}


async def channel_names(db: Database) -> list[str]:
    async with db.read() as conn:
        rows = await conn.execute(sa.select(merchants.c.channel).distinct().order_by(merchants.c.channel))
        return [r.channel for r in rows]


async def channel_days(db: Database, hospital: str, day: dt.date) -> list[ChannelDay]:
    """Per channel: what the day's latest reconciliation run read from its statements (the same figures as the
    run's totals; for a run older than those figures, the latest parsed statement of each merchant), and the
    day's exceptions by class."""
    r = recon_runs.c
    latest_run = (
        sa.select(r.by_channel)
        .where(r.hospital_id == hospital, r.day == day, r.status == "done")
        .order_by(r.version.desc())
        .limit(1)
    )
    out: dict[str, ChannelDay] = {}
    async with db.read() as conn:
        figures = (await conn.execute(latest_run)).scalar()
        if figures:
            for channel, f in figures.items():
                out[channel] = ChannelDay(
                    channel,
                    pay_count=int(f.get("pay_count", 0)),
                    pay_fen=int(f.get("pay_fen", 0)),
                    refund_count=int(f.get("refund_count", 0)),
                    refund_fen=int(f.get("refund_fen", 0)),
                    fee_fen=int(f.get("fee_fen", 0)),
                    statements=int(f.get("statements", 0)),
                )
        else:
            latest = (
                sa.select(sa.func.max(statements.c.id))
                .where(statements.c.hospital_id == hospital, statements.c.day == day, statements.c.status == "parsed")
                .group_by(statements.c.merchant_id)
            )
            for s in await conn.execute(sa.select(statements).where(statements.c.id.in_(latest))):
                c = out.setdefault(s.channel, ChannelDay(s.channel))
                c.statements += 1
                c.pay_count += int(s.pay_count or 0)
                c.pay_fen += int(s.pay_fen or 0)
                c.refund_count += int(s.refund_count or 0)
                c.refund_fen += int(s.refund_fen or 0)
                c.fee_fen += int(s.fee_fen or 0)
        t = recon_exceptions.c
        stmt = (
            sa.select(t.channel, t["class"], sa.func.count())
            .where(t.hospital_id == hospital, t.day == day)
            .group_by(t.channel, t["class"])
        )
        for channel, cls, n in await conn.execute(stmt):
            c = out.setdefault(channel or "", ChannelDay(channel or ""))
            c.by_class[cls] = int(n)
    return sorted(out.values(), key=lambda c: c.channel)


async def history(db: Database, exception_id: int) -> list[dict[str, Any]]:
    return await audit.entries(db, subject=recon.subject(exception_id), limit=200)
