"""Escalation: a HIS step that has waited too long is an exception finance sees, not a retry in silence.

Commits, refund applications, write-backs and cancels retry for as long as it takes (capped backoff), which is
right for the money but leaves nobody knowing that a paid order has waited hours for the HIS. Past
``workers.his_stuck_after_s`` the order or refund gets a ``his_stuck`` exception — in finance's list, in
``GET /v1/orders?exceptions=1``, in ``hisgateway_his_stuck`` and under the ``HisGatewayHisStepStuck`` alert —
while the saga keeps trying; the exception closes itself when the step completes. Finance may re-drive it
(``redrive``: try now, from the start of the backoff).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from gateway.model import HIS_SENDABLE, ExceptionKind, OrderStatus, RefundOrigin, RefundState, utcnow
from gateway.services import Services, log
from gateway.store import audit, finance_exceptions
from gateway.store import orders as order_store
from gateway.store import refunds as refund_store
from gateway.store.orders import Order
from gateway.store.refunds import Refund
from gateway.store.tables import orders, refunds

BATCH = 200
REFUND_STEPS = {
    RefundState.his_applying.value: ("refund.apply", refunds.c.created_at),
    RefundState.succeeded.value: ("refund.writeback", refunds.c.refunded_at),
    RefundState.his_cancelling.value: ("refund.cancel", refunds.c.updated_at),
}
"""A refund's state that waits on the HIS → the step, and the column that says since when it has waited."""


@dataclass(frozen=True)
class Stuck:
    orders: int
    refunds: int


def _minutes(since: dt.datetime | None, now: dt.datetime) -> int:
    return int((now - since).total_seconds() // 60) if since is not None else 0


def _order_detail(order: Order, now: dt.datetime) -> str:
    step = {"registration": "registration.commit", "charge": "charge.commit", "prepay": "prepay.commit"}
    return (
        f"{step.get(order.business_type, 'commit')} has waited {_minutes(order.paid_at, now)} min for the HIS"
        f" (HIS state {order.his_state}, {order.attempts} attempts; last: {order.last_error or 'pending at the agent'})"
    )


async def escalate(svc: Services) -> Stuck:
    """Flag every HIS step waiting longer than allowed that is not flagged yet; how many were flagged now."""
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=svc.cfg.workers.his_stuck_after_s)
    o = orders.c
    stmt = (
        sa.select(o.id)
        .where(
            o.status == OrderStatus.paid.value,
            o.his_state.in_([s.value for s in HIS_SENDABLE]),
            o.paid_at < cutoff,
            o.exception.is_(None),
        )
        .limit(BATCH)
    )
    async with svc.db.read() as conn:
        order_ids = list((await conn.execute(stmt)).scalars())
    flagged_orders = 0
    for order_id in order_ids:
        async with svc.db.write() as conn:
            order = await order_store.lock(svc.db, conn, order_id)
            if order is None or order.exception is not None or order.his_state not in HIS_SENDABLE:
                continue
            if order.status != OrderStatus.paid:
                continue
            detail = _order_detail(order, now)
            row = await order_store.transition(
                conn, order.id, [OrderStatus.paid], exception=ExceptionKind.his_stuck.value, exception_detail=detail
            )
            await finance_exceptions.raise_exception(
                conn, order=row or order, cls=ExceptionKind.his_stuck, detail=detail, actor="escalation"
            )
            await audit.record(conn, "escalation", "exception.his_stuck", order.out_trade_no, {"detail": detail})
            flagged_orders += 1
            log.warning("his_stuck", out_trade_no=order.out_trade_no, minutes=_minutes(order.paid_at, now))
    flagged_refunds = 0
    r = refunds.c
    waiting = sa.or_(*(sa.and_(r.state == state, since < cutoff) for state, (_, since) in REFUND_STEPS.items()))
    stmt = (
        sa.select(r.id)
        .where(waiting, r.exception.is_(None), r.origin == RefundOrigin.business.value)
        .limit(BATCH)
    )  # fmt: skip
    async with svc.db.read() as conn:
        refund_ids = list((await conn.execute(stmt)).scalars())
    for refund_id in refund_ids:
        async with svc.db.write() as conn:
            refund = await refund_store.get_in(conn, refund_id)
            if refund is None or refund.exception is not None or refund.state not in REFUND_STEPS:
                continue
            order = await order_store.get_in(conn, refund.order_id)
            assert order is not None
            detail = _refund_detail(refund, now)
            row = await refund_store.transition(
                conn, refund.id, [RefundState(refund.state)], exception=ExceptionKind.his_stuck.value,
                exception_detail=detail,
            )  # fmt: skip
            await finance_exceptions.raise_exception(
                conn, order=order, refund=row or refund, cls=ExceptionKind.his_stuck, detail=detail, actor="escalation"
            )
            await audit.record(conn, "escalation", "exception.his_stuck", refund.out_refund_no, {"detail": detail})
            flagged_refunds += 1
            log.warning("his_stuck", out_refund_no=refund.out_refund_no, step=REFUND_STEPS[refund.state][0])
    return Stuck(flagged_orders, flagged_refunds)


def _refund_detail(refund: Refund, now: dt.datetime) -> str:
    step, column = REFUND_STEPS[refund.state]
    since = getattr(refund, column.name)
    return (
        f"{step} has waited {_minutes(since, now)} min for the HIS ({refund.attempts} attempts;"
        f" last: {refund.last_error or 'pending at the agent'})"
    )


async def escalate_forever(svc: Services) -> None:
    while True:
        try:
            await escalate(svc)
        except Exception:
            log.exception("escalation_failed")
        await asyncio.sleep(svc.cfg.workers.escalate_every_s)
