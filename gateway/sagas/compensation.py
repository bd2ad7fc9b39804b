"""Compensation for orders the channel has not settled: ask the channel, and only then decide.

An open order is queried after ``pending_query_after_s`` and then with backoff. Past its expiry (or when the
business system asked to close it) the channel trade is closed — codepay trades reversed — and the order is
closed only once the channel says so. If the channel says it was paid meanwhile, it is paid.
"""

from __future__ import annotations

from gateway.channels.base import ChannelError, Scene, TradeState
from gateway.model import OPEN_ORDER, OrderStatus, utcnow
from gateway.sagas import payment
from gateway.services import Services, log
from gateway.store import claims
from gateway.store import orders as order_store
from gateway.store.orders import Order
from gateway.store.tables import orders

CLOSE_GRACE_S = 60
"""How long past expiry a trade the channel has never heard of is still given to appear."""


async def check(svc: Services, order: Order) -> Order:
    """One compensation step for an open order; leaves it rescheduled, or settled by the channel's word."""
    channel = svc.channel(order.merchant_id)
    try:
        status = await channel.query(order.out_trade_no)
    except ChannelError as e:
        return await _retry_later(svc, order, e)
    order = await payment.apply_trade_status(svc, order, status, source="compensation")
    if order.status not in OPEN_ORDER:
        return order
    now = utcnow()
    if not (order.close_requested or now >= order.expires_at):
        nxt = min(order.expires_at, svc.backoff(order.attempts))
        return await order_store.update(svc.db, order.id, OPEN_ORDER, attempts=order.attempts + 1, due_at=nxt) or order
    if status.state == TradeState.not_found:
        if order.close_requested or (now - order.expires_at).total_seconds() >= CLOSE_GRACE_S:
            return await _closed_by_channel(svc, order, "the channel has no such trade")
        return await order_store.update(svc.db, order.id, OPEN_ORDER, due_at=svc.soon(CLOSE_GRACE_S)) or order
    try:
        if order.scene == Scene.codepay:
            await channel.reverse(order.out_trade_no)
        else:
            await channel.close(order.out_trade_no)
    except ChannelError as e:
        if not e.retryable and not e.in_doubt:
            log.info("close_refused", out_trade_no=order.out_trade_no, code=e.code)
        return await _retry_later(svc, order, e, soon=True)
    try:
        status = await channel.query(order.out_trade_no)
    except ChannelError as e:
        return await _retry_later(svc, order, e, soon=True)
    if status.state == TradeState.not_found:
        return await _closed_by_channel(svc, order, "closed; the channel no longer knows the trade")
    return await payment.apply_trade_status(svc, order, status, source="compensation")


async def _closed_by_channel(svc: Services, order: Order, why: str) -> Order:
    async with svc.db.write() as conn:
        row = await order_store.transition(
            conn, order.id, OPEN_ORDER, status=OrderStatus.closed.value, last_error=why, due_at=None
        )
        if row is not None:
            await payment.notify(conn, row, "order.closed")
        return row or order


async def _retry_later(svc: Services, order: Order, error: ChannelError, *, soon: bool = False) -> Order:
    due = svc.soon(svc.cfg.workers.retry_base_s) if soon and order.attempts < 3 else svc.backoff(order.attempts)
    return (
        await order_store.update(
            svc.db, order.id, OPEN_ORDER, last_error=str(error), attempts=order.attempts + 1, due_at=due
        )
        or order
    )


async def request_close(svc: Services, order: Order) -> Order:
    """The business system wants the order closed: mark it, and close now if no worker holds it."""
    async with svc.db.write() as conn:
        row = await order_store.transition(conn, order.id, OPEN_ORDER, close_requested=True)
    if row is None:
        return order
    claimed = await order_store.try_claim(svc.db, order.id, svc.lease())
    if claimed is None:
        return row
    try:
        return await check(svc, claimed)
    finally:
        await claims.release(svc.db, orders, order.id)
