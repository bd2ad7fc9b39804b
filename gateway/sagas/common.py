"""Pieces the sagas share: new trade numbers, and what happens to money the HIS will not record."""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import RefundOrigin, RefundPolicy, RefundState, utcnow
from gateway.store import audit
from gateway.store import refunds as refund_store
from gateway.store.tables import hospitals, refunds


def new_trade_no(prefix: str) -> str:
    """A channel-safe number (WeChat: 6-32 of [A-Za-z0-9_-]) that sorts by time."""
    return f"{prefix}{utcnow():%y%m%d%H%M%S}{secrets.token_hex(6)}"


async def hold_unrecorded(conn: AsyncConnection, order: Any, *, reason: str, actor: str) -> int | None:
    """Money was taken that the HIS will not record. Under the hospital's ``auto_refund`` policy, reserve and
    queue a refund of all of it to the original route (in the caller's transaction, the order row locked by
    its update); under ``finance`` leave it visible for finance. Returns the refund id, if one was queued."""
    policy = (
        await conn.execute(sa.select(hospitals.c.refund_policy).where(hospitals.c.id == order.hospital_id))
    ).scalar()
    if policy != RefundPolicy.auto_refund:
        await audit.record(conn, actor, "payment.held_for_finance", order.out_trade_no, {"reason": reason})
        return None
    available = int(order.paid_fen or 0) - await refund_store.counted_fen(conn, order.id)
    if available <= 0:
        return None
    now = utcnow()
    refund_id = (
        await conn.execute(
            sa.insert(refunds)
            .values(
                order_id=order.id,
                hospital_id=order.hospital_id,
                channel=order.channel,
                business_refund_no=None,
                out_refund_no=new_trade_no("A"),
                amount_fen=available,
                reason=reason[:200],
                origin=RefundOrigin.policy.value,
                state=RefundState.reserved.value,
                due_at=now,
                created_at=now,
                updated_at=now,
            )
            .returning(refunds.c.id)
        )
    ).scalar_one()
    await audit.record(conn, actor, "payment.auto_refund", order.out_trade_no, {"reason": reason, "fen": available})
    return int(refund_id)
