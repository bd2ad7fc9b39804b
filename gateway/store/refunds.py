"""Refunds, and the one place where money is reserved against a payment.

The money rule, kept here only: what a payment can still give back is ``paid − refunded − in flight``
(:func:`refundable_fen`), read with the order row locked (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` holds the database's writer lock). Every refund path — a business refund after the HIS
agreed (:func:`reserve`), an automatic refund of money the HIS will not record, a finance refund from the
console, a refund the HIS window started (:func:`reserve_new`) — reserves through these two functions, so
however many refunds race, their sum never exceeds what was paid.

Lock order: a transaction that changes a refund's money and its order locks the **order first** (the HIS
commit path and every reservation do), so two such transactions can never wait on each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import COUNTED_REFUND, HIS_CLEAR, PAID_ORDER, HisState, RefundOrigin, RefundState, utcnow
from gateway.store import orders as order_store
from gateway.store.db import Database
from gateway.store.tables import refunds

Refund = sa.Row[Any]


@dataclass(frozen=True)
class Reservation:
    refund: Refund | None
    """The refund as it stands afterwards (None when :func:`reserve_new` refused before inserting one)."""
    reserved: bool
    available_fen: int
    """What the payment could still cover before this refund."""
    why: str | None = None
    """Why it was refused."""


class NotRefundable(Exception):
    """A refund the money rule or the HIS rule refuses; the message says which and why."""


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
        return await get_in(conn, refund_id)


async def get_in(conn: AsyncConnection, refund_id: int) -> Refund | None:
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


async def refundable_fen(conn: AsyncConnection, order: order_store.Order) -> int:
    """Paid minus refunded and in flight. Exact only inside a transaction that holds the order's lock."""
    return int(order.paid_fen or 0) - await counted_fen(conn, order.id)


async def available_fen(db: Database, order_id: int) -> int:
    """:func:`refundable_fen` without a lock: a quick refusal before the HIS is asked anything."""
    async with db.read() as conn:
        order = await order_store.get_in(conn, order_id)
        assert order is not None
        return await refundable_fen(conn, order)


HIS_RULE = {
    "why.his_booked": "the HIS booked this payment: refund it through the HIS",
    "why.not_registered": "the gateway has not registered this payment yet; it will be sent to the HIS",
    "why.his_pending": "the HIS commit of this payment is still pending or in doubt: wait for the HIS, or re-drive it",
}
"""Why money may not go back without the HIS, by code (the console words them in its languages)."""


def his_rule(order: order_store.Order) -> str | None:
    """Why money may not go back to the payer without the HIS (a ``HIS_RULE`` code), or None when it may: the
    HIS refused the payment or was never told of it (``HIS_CLEAR``). Pending, in doubt or booked: only
    through the HIS."""
    if order.his_state in [s.value for s in HIS_CLEAR]:
        return None
    if order.his_state == HisState.done:
        return "why.his_booked"
    if order.status not in [s.value for s in PAID_ORDER]:
        return "why.not_registered"
    return "why.his_pending"


def _refusal(order: order_store.Order, amount_fen: int, available: int, limit_fen: int | None) -> str | None:
    if order.status not in [s.value for s in PAID_ORDER] and order.his_state != HisState.held:
        return f"the order is {order.status}, not paid"
    if amount_fen > available:
        return f"refund {amount_fen} fen exceeds what the payment still covers ({available} fen)"
    if limit_fen is not None and amount_fen > limit_fen:
        return f"refund {amount_fen} fen exceeds the HIS's refundable {limit_fen} fen"
    return None


async def reserve(
    db: Database,
    refund_id: int,
    *,
    from_state: RefundState,
    limit_fen: int | None = None,
    facts: dict[str, Any] | None = None,
    **values: Any,
) -> Reservation:
    """Check a stored refund against the payment (and the HIS's refundable ``limit_fen``): reserve it (with
    ``values``), or reject it with the reason. ``facts`` (what the HIS answered) are kept either way. One
    transaction, the order row locked first."""
    async with db.write() as conn:
        order_id = (await conn.execute(sa.select(refunds.c.order_id).where(refunds.c.id == refund_id))).scalar_one()
        order = await order_store.lock(db, conn, order_id)
        assert order is not None
        # The refund row is locked too: a worker of another instance may move it without touching the order.
        query = sa.select(refunds).where(refunds.c.id == refund_id)
        refund = (await conn.execute(query.with_for_update())).one()
        available = int(order.paid_fen or 0) - await counted_fen(conn, order.id, excluding=refund.id)
        if refund.state != from_state:
            return Reservation(refund, refund.state in COUNTED_REFUND, available)
        why = _refusal(order, refund.amount_fen, available, limit_fen)
        facts = facts or {}
        if why is not None:
            row = await transition(
                conn, refund.id, [from_state], state=RefundState.rejected.value, last_error=why, **facts
            )
            return Reservation(row or refund, False, available, why)
        row = await transition(conn, refund.id, [from_state], state=RefundState.reserved.value, **facts, **values)
        if row is None:  # moved all the same: answer with the refund as it is
            now = (await conn.execute(query)).one()
            return Reservation(now, now.state in COUNTED_REFUND, available)
        return Reservation(row, True, available)


async def reserve_new(
    db: Database,
    conn: AsyncConnection,
    order_id: int,
    *,
    amount_fen: int | None,
    origin: RefundOrigin,
    out_refund_no: str,
    reason: str | None,
    require_his_clear: bool,
    **values: Any,
) -> Reservation:
    """Insert a refund already reserved against the payment, in the caller's transaction (the order row is
    locked here first). ``amount_fen`` None refunds all that is left. ``require_his_clear``: money that goes back
    without the HIS (finance, policy) — refused unless the HIS refused the payment or was never told."""
    order = await order_store.lock(db, conn, order_id)
    if order is None:
        return Reservation(None, False, 0, f"no order {order_id}")
    available = await refundable_fen(conn, order)
    amount = available if amount_fen is None else amount_fen
    why = his_rule(order) if require_his_clear else None
    if why is None and amount <= 0:
        why = "nothing is left to refund on this payment"
    why = why or _refusal(order, amount, available, None)
    if why is not None:
        return Reservation(None, False, available, why)
    now = utcnow()
    row = (
        await conn.execute(
            sa.insert(refunds)
            .values(
                order_id=order.id,
                hospital_id=order.hospital_id,
                channel=order.channel,
                out_refund_no=out_refund_no,
                amount_fen=amount,
                reason=(reason or "")[:200] or None,
                origin=origin.value,
                state=RefundState.reserved.value,
                created_at=now,
                updated_at=now,
                **{"business_refund_no": None, "due_at": now, **values},
            )
            .returning(*refunds.c)
        )
    ).one()
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
