"""``ChannelState`` in the gateway's database, one merchant per instance of this class; and the schedule on
which one instance (whichever claims the row) refreshes a merchant's certificates for all."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gateway.channels.state import KeptCertificate, OrderTime
from gateway.model import utcnow
from gateway.store import claims
from gateway.store.channel_tables import channel_certificates, channel_key_refresh, channel_order_times
from gateway.store.db import Database


class SqlChannelState:
    def __init__(self, db: Database, merchant_id: str) -> None:
        self.db = db
        self.merchant_id = merchant_id

    async def certificates(self) -> list[KeptCertificate]:
        t = channel_certificates.c
        stmt = sa.select(channel_certificates).where(t.merchant_id == self.merchant_id).order_by(t.id)
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [KeptCertificate(r.serial, r.pem.encode(), r.not_before, r.not_after, r.source) for r in rows]

    async def keep_certificate(self, cert: KeptCertificate) -> None:
        t = channel_certificates.c
        values = {
            "pem": cert.pem.decode(),
            "not_before": cert.not_before,
            "not_after": cert.not_after,
            "source": cert.source,
            "kept_at": utcnow(),
        }
        async with self.db.write() as conn:
            existing = (
                await conn.execute(sa.select(t.id).where(t.merchant_id == self.merchant_id, t.serial == cert.serial))
            ).scalar_one_or_none()
            if existing is None:
                await conn.execute(
                    sa.insert(channel_certificates).values(merchant_id=self.merchant_id, serial=cert.serial, **values)
                )
            else:
                await conn.execute(sa.update(channel_certificates).where(t.id == existing).values(**values))

    async def reserve_order_time(self, order_id: str, txn_time: str, kind: str) -> OrderTime:
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    sa.insert(channel_order_times).values(
                        merchant_id=self.merchant_id,
                        order_id=order_id,
                        txn_time=txn_time,
                        kind=kind,
                        created_at=utcnow(),
                    )
                )
            return OrderTime(txn_time, kind)
        except IntegrityError:
            kept = await self.order_time(order_id)
            assert kept is not None
            return kept

    async def order_time(self, order_id: str) -> OrderTime | None:
        t = channel_order_times.c
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(t.txn_time, t.kind).where(t.merchant_id == self.merchant_id, t.order_id == order_id)
                )
            ).first()
        return OrderTime(row.txn_time, row.kind) if row is not None else None


async def schedule_refresh(db: Database, merchant_ids: list[str]) -> None:
    """Make sure each merchant has its refresh row (due now if new); existing schedules are kept."""
    t = channel_key_refresh.c
    async with db.write() as conn:
        known = set((await conn.execute(sa.select(t.merchant_id))).scalars())
        for merchant_id in merchant_ids:
            if merchant_id not in known:
                await conn.execute(sa.insert(channel_key_refresh).values(merchant_id=merchant_id, due_at=utcnow()))


async def claim_refresh(db: Database, *, lease_s: float, limit: int = 10) -> list[str]:
    """The merchants whose refresh is due, claimed by this instance for ``lease_s``."""
    rows = await claims.claim(db, channel_key_refresh, limit=limit, lease_s=lease_s)
    return [r.merchant_id for r in rows]


async def refreshed(db: Database, merchant_id: str, *, next_at: dt.datetime, error: str | None = None) -> None:
    t = channel_key_refresh.c
    values: dict[str, object] = {"due_at": next_at, "last_error": error}
    if error is None:
        values.update(last_ok_at=utcnow(), attempts=0)
    else:
        values["attempts"] = t.attempts + 1
    async with db.write() as conn:
        await conn.execute(sa.update(channel_key_refresh).where(t.merchant_id == merchant_id).values(**values))


async def refresh_attempts(db: Database, merchant_id: str) -> int:
    t = channel_key_refresh.c
    async with db.read() as conn:
        return int(
            (await conn.execute(sa.select(t.attempts).where(t.merchant_id == merchant_id))).scalar_one_or_none() or 0
        )
