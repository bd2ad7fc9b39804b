"""Refunds, and the one place where money is reserved against a payment.

``reserve`` is the invariant of the whole refund saga: inside one write transaction it locks the order row
(``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` holds the database's writer lock), sums
what is already refunded or in flight, and moves the refund to ``reserved`` only if the payment still covers
it. However many refunds race, their sum never exceeds what was paid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import COUNTED_REFUND, PAID_ORDER, RefundState, utcnow
from gateway.store import orders as order_store
from gateway.store.db import Database
from gateway.store.tables import refunds

Refund = sa.Row[Any]


@dataclass(frozen=True)
class Reservation:
    refund: Refund
    reserved: bool
    available_fen: int
    """What the payment could still cover before this refund."""


async def insert(db: Database, values: dict[str, Any]) -> tuple[Refund, bool]:
    """Insert a refund, or return the one already stored under (hospital, business refund no)."""
    now = utcnow()
    try:
        async with db.write() as conn:
            row = (
                await conn.execute(
                    sa.insert(refunds).values(created_at=now, updated_at=now, **values).returning(*refunds.c)
                )
            ).one()
        return row, True
    except IntegrityError:
        if values.get("business_refund_no") is None:
            raise
        existing = await by_business_no(db, values["hospital_id"], values["business_refund_no"])
        if existing is None:
            raise
        return existing, False


async def by_business_no(db: Database, hospital_id: str, business_refund_no: str) -> Refund | None:
    async with db.read() as conn:
        stmt = sa.select(refunds).where(
            refunds.c.hospital_id == hospital_id, refunds.c.business_refund_no == business_refund_no
        )
        return (await conn.execute(stmt)).first()


async def by_out_refund_no(db: Database, channel: str, out_refund_no: str) -> Refund | None:
    async with db.read() as conn:
        stmt = sa.select(refunds).where(refunds.c.channel == channel, refunds.c.out_refund_no == out_refund_no)
        return (await conn.execute(stmt)).first()


async def get(db: Database, refund_id: int) -> Refund | None:
    async with db.read() as conn:
        return (await conn.execute(sa.select(refunds).where(refunds.c.id == refund_id))).first()


async def for_order(db: Database, order_id: int) -> list[Refund]:
    async with db.read() as conn:
        return list(await conn.execute(sa.select(refunds).where(refunds.c.order_id == order_id).order_by(refunds.c.id)))


async def counted_fen(conn: AsyncConnection, order_id: int, *, excluding: int | None = None) -> int:
    stmt = sa.select(sa.func.coalesce(sa.func.sum(refunds.c.amount_fen), 0)).where(
        refunds.c.order_id == order_id, refunds.c.state.in_([s.value for s in COUNTED_REFUND])
    )
    if excluding is not None:
        stmt = stmt.where(refunds.c.id != excluding)
    return int((await conn.execute(stmt)).scalar() or 0)


async def available_fen(db: Database, order_id: int) -> int:
    """Paid minus refunded and in flight, without a lock: a quick refusal before the HIS is asked anything."""
    async with db.read() as conn:
        order = (await conn.execute(sa.select(order_store.orders).where(order_store.orders.c.id == order_id))).one()
        return int(order.paid_fen or 0) - await counted_fen(conn, order_id)


async def reserve(
    db: Database, refund_id: int, *, from_state: RefundState, limit_fen: int | None = None, **values: Any
) -> Reservation:
    """Check the refund against the payment (and the HIS's refundable ``limit_fen``): reserve it, or reject it
    with the reason. One transaction, the order row locked."""
    async with db.write() as conn:
        refund = (await conn.execute(sa.select(refunds).where(refunds.c.id == refund_id))).one()
        order = await order_store.lock(db, conn, refund.order_id)
        assert order is not None
        available = int(order.paid_fen or 0) - await counted_fen(conn, order.id, excluding=refund.id)
        if refund.state != from_state:
            return Reservation(refund, refund.state in COUNTED_REFUND, available)
        ok = order.status in PAID_ORDER and refund.amount_fen <= available
        if limit_fen is not None:
            ok = ok and refund.amount_fen <= limit_fen
        if not ok:
            why = f"refund {refund.amount_fen} fen exceeds what the payment still covers ({available} fen)"
            if order.status not in PAID_ORDER:
                why = f"the order is {order.status}, not paid"
            elif limit_fen is not None and refund.amount_fen > limit_fen:
                why = f"refund {refund.amount_fen} fen exceeds the HIS's refundable {limit_fen} fen"
            row = await transition(conn, refund.id, [from_state], state=RefundState.rejected.value, last_error=why)
            assert row is not None
            return Reservation(row, False, available)
        row = await transition(conn, refund.id, [from_state], state=RefundState.reserved.value, **values)
        assert row is not None
        return Reservation(row, True, available)


async def transition(
    conn: AsyncConnection, refund_id: int, from_state: Iterable[RefundState] | None, **values: Any
) -> Refund | None:
    stmt = sa.update(refunds).where(refunds.c.id == refund_id)
    if from_state is not None:
        stmt = stmt.where(refunds.c.state.in_([s.value for s in from_state]))
    return (await conn.execute(stmt.values(updated_at=utcnow(), **values).returning(*refunds.c))).first()


async def update(
    db: Database, refund_id: int, from_state: Iterable[RefundState] | None, **values: Any
) -> Refund | None:
    async with db.write() as conn:
        return await transition(conn, refund_id, from_state, **values)
