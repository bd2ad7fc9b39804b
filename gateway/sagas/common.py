"""Pieces the sagas share: new trade numbers, and what happens to money the HIS will not record."""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import RefundOrigin, RefundPolicy, utcnow
from gateway.services import Services
from gateway.store import audit, finance_exceptions
from gateway.store import refunds as refund_store
from gateway.store.orders import Order
from gateway.store.tables import hospitals


def new_trade_no(prefix: str) -> str:
    """A channel-safe number (WeChat: 6-32 of [A-Za-z0-9_-]) that sorts by time."""
    return f"{prefix}{utcnow():%y%m%d%H%M%S}{secrets.token_hex(6)}"


async def hold_unrecorded(
    svc: Services, conn: AsyncConnection, order: Order, *, cls: str, detail: str, actor: str
) -> int | None:
    """Money was taken that the HIS will not record (the caller has just moved the order's HIS state to
    ``rejected`` or ``held``, in ``conn``). It is an exception finance sees either way; under the hospital's
    ``auto_refund`` policy a refund of all of it to the original route is also reserved and queued (and the
    exception closes itself when that refund completes). Returns the refund id, if one was queued."""
    await finance_exceptions.raise_exception(conn, order=order, cls=cls, detail=detail, actor=actor)
    policy = (
        await conn.execute(sa.select(hospitals.c.refund_policy).where(hospitals.c.id == order.hospital_id))
    ).scalar()
    if policy != RefundPolicy.auto_refund:
        await audit.record(conn, actor, "payment.held_for_finance", order.out_trade_no, {"reason": detail[:200]})
        return None
    reservation = await refund_store.reserve_new(
        svc.db,
        conn,
        order.id,
        amount_fen=None,
        origin=RefundOrigin.policy,
        out_refund_no=new_trade_no("A"),
        reason=detail,
        require_his_clear=True,
    )
    if reservation.refund is None:
        await audit.record(conn, actor, "payment.auto_refund_refused", order.out_trade_no, {"why": reservation.why})
        return None
    fen = reservation.refund.amount_fen
    await audit.record(conn, actor, "payment.auto_refund", order.out_trade_no, {"reason": detail[:200], "fen": fen})
    svc.wake_refunds.set()
    return int(reservation.refund.id)
