"""The payment saga: pay first, then tell the HIS (宁长款不短款).

    create ─► channel trade open ─► channel says SUCCESS (callback or query) ─► HIS commit ─► business notified
                                                                              └► HIS refuses: held or refunded

The channel's word is the only thing that moves an order out of ``created``/``paying``. The HIS commit's
request id is derived from the order, so however often it is retried the HIS records the payment once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.channels.base import ChannelError, PaymentRequest, Scene, TradeState, TradeStatus
from gateway.his import HisAnswer, HisUnavailable, write_once
from gateway.model import (
    COMMIT_OPERATION,
    HIS_CLEAR,
    HIS_SENDABLE,
    OPEN_ORDER,
    BusinessType,
    ExceptionKind,
    HisCommit,
    HisState,
    OrderOrigin,
    OrderStatus,
    utcnow,
)
from gateway.representations import order_view
from gateway.sagas.common import hold_unrecorded, new_trade_no
from gateway.services import Services, log
from gateway.store import audit, claims, finance_exceptions, outbox, registry
from gateway.store import orders as order_store
from gateway.store.orders import Order
from gateway.store.tables import orders

SUCCESS_STATES = (TradeState.success, TradeState.refund)
CLOSED_STATES = (TradeState.closed, TradeState.revoked)


WHO_ASKED = ("request_id", "terminal_id", "origin", "his_commit")


class OrderConflict(Exception):
    """The business order number is taken by a different request."""


class NoMerchant(Exception):
    pass


@dataclass(frozen=True)
class NewOrder:
    business_order_no: str
    business_type: BusinessType
    scene: Scene
    channel: str
    amount_fen: int
    subject: str
    his_params: dict[str, Any]
    notify_url: str | None = None
    payer_id: str | None = None
    auth_code: str | None = None
    client_ip: str | None = None
    expire_s: int | None = None
    request_id: str | None = None
    terminal_id: str | None = None
    origin: OrderOrigin = OrderOrigin.app
    his_commit: HisCommit = HisCommit.gateway

    def digest(self) -> str:
        """What makes two requests "the same order": everything but the one-time payer details and who asked."""
        fields = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("auth_code", "client_ip", "payer_id", "notify_url", "expire_s", *WHO_ASKED)
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


async def notify(conn: AsyncConnection, order: Order, event_type: str) -> None:
    await outbox.enqueue(
        conn,
        app_id=order.app_id,
        hospital_id=order.hospital_id,
        event_type=event_type,
        subject_key=order.out_trade_no,
        payload=order_view(order, with_pay_params=False),
        notify_url=order.notify_url,
    )


async def create(svc: Services, app: registry.App, new: NewOrder) -> tuple[Order, bool]:
    """Store the order and open the channel trade. Idempotent on the business order number: a repeat returns
    the stored order (and retries a channel create that had not got through)."""
    merchant_id = await registry.merchant_for(svc.db, app.hospital_id, new.channel)
    if merchant_id is None:
        raise NoMerchant(f"hospital {app.hospital_id} has no {new.channel} merchant")
    now = utcnow()
    ttl = new.expire_s or svc.cfg.workers.order_ttl_s
    lease = svc.lease()
    order, created = await order_store.insert(
        svc.db,
        {
            "hospital_id": app.hospital_id,
            "app_id": app.id,
            "merchant_id": merchant_id,
            "channel": new.channel,
            "business_order_no": new.business_order_no,
            "out_trade_no": new_trade_no("P"),
            "request_digest": new.digest(),
            "business_type": new.business_type.value,
            "scene": new.scene.value,
            "subject": new.subject,
            "amount_fen": new.amount_fen,
            "his_params": new.his_params,
            "notify_url": new.notify_url,
            "status": OrderStatus.created.value,
            "his_state": HisState.none.value,
            "expires_at": now + dt.timedelta(seconds=ttl),
            "due_at": lease,
            "leased_until": lease,
            "request_id": new.request_id,
            "terminal_id": new.terminal_id,
            "origin": new.origin.value,
            "his_commit": new.his_commit.value,
        },
    )
    if not created:
        if order.request_digest != new.digest():
            raise OrderConflict(f"business order {new.business_order_no} exists with different content")
        if order.status not in OPEN_ORDER or order.pay_params is not None:
            return order, False
        claimed = await order_store.try_claim(svc.db, order.id, lease)
        if claimed is None:
            return order, False
        order = claimed
    try:
        return await _open_trade(svc, order, new), created
    finally:
        await claims.release(svc.db, orders, order.id)


async def _open_trade(svc: Services, order: Order, new: NewOrder) -> Order:
    channel = svc.channel(order.merchant_id)
    request = PaymentRequest(
        out_trade_no=order.out_trade_no,
        amount_fen=order.amount_fen,
        description=order.subject,
        scene=Scene(order.scene),
        notify_url=svc.notify_url(order.channel, order.merchant_id),
        expires_at=order.expires_at,
        payer_id=new.payer_id,
        auth_code=new.auth_code,
        client_ip=new.client_ip,
    )
    first_check = min(order.expires_at, svc.soon(svc.cfg.workers.pending_query_after_s))
    try:
        started = await channel.create(request)
    except ChannelError as e:
        if e.in_doubt:
            due = svc.soon(min(5.0, svc.cfg.workers.pending_query_after_s))
            return await order_store.update(svc.db, order.id, OPEN_ORDER, last_error=str(e), due_at=due) or order
        if e.retryable:
            return (
                await order_store.update(svc.db, order.id, OPEN_ORDER, last_error=str(e), due_at=order.expires_at)
                or order
            )
        async with svc.db.write() as conn:
            row = await order_store.transition(
                conn, order.id, OPEN_ORDER, status=OrderStatus.failed.value, last_error=str(e), due_at=None
            )
            if row is not None:
                await notify(conn, row, "order.failed")
                await audit.record(conn, "channel", "order.failed", order.out_trade_no, {"code": e.code})
            return row or await order_store.get_in(conn, order.id) or order
    due = svc.soon(3) if started.state in (TradeState.userpaying, *SUCCESS_STATES) else first_check
    row = await order_store.update(
        svc.db,
        order.id,
        OPEN_ORDER,
        status=OrderStatus.paying.value,
        pay_params=started.pay_params,
        channel_trade_no=started.channel_trade_no,
        due_at=due,
        last_error=None,
    )
    if row is not None and started.state in SUCCESS_STATES:
        try:
            row = await apply_trade_status(svc, row, await channel.query(order.out_trade_no), source="create")
        except ChannelError as e:
            log.info("codepay_query_deferred", out_trade_no=order.out_trade_no, error=str(e))
    return row or await order_store.get(svc.db, order.id) or order


async def apply_trade_status(svc: Services, order: Order, status: TradeStatus, *, source: str) -> Order:
    """Apply the channel's word about a trade. Idempotent: the same word twice changes nothing the second time."""
    if status.state in SUCCESS_STATES:
        return await _paid(svc, order, status, source)
    if status.state in CLOSED_STATES or status.state == TradeState.payerror:
        new = OrderStatus.failed if status.state == TradeState.payerror else OrderStatus.closed
        async with svc.db.write() as conn:
            row = await order_store.transition(conn, order.id, OPEN_ORDER, status=new.value, due_at=None)
            if row is None:
                return await order_store.get_in(conn, order.id) or order
            await notify(conn, row, f"order.{new.value}")
            await audit.record(conn, source, f"order.{new.value}", order.out_trade_no, {"state": status.state.value})
            return row
    if status.state in (TradeState.notpay, TradeState.userpaying) and order.status == OrderStatus.created:
        return (
            await order_store.update(svc.db, order.id, [OrderStatus.created], status=OrderStatus.paying.value) or order
        )
    return order


async def _paid(svc: Services, order: Order, status: TradeStatus, source: str) -> Order:
    if status.amount_fen is None:
        # A success that does not say how much was taken is not believed: the compensation query asks the
        # channel for the amount soon instead of counting the order as paid in full.
        log.warning("paid_without_amount", out_trade_no=order.out_trade_no, source=source)
        return await order_store.update(svc.db, order.id, OPEN_ORDER, due_at=svc.soon(5)) or order
    paid_fen = status.amount_fen
    money: dict[str, Any] = {
        "paid_fen": paid_fen,
        "channel_trade_no": status.channel_trade_no or order.channel_trade_no,
        "paid_at": status.paid_at or utcnow(),
    }
    async with svc.db.write() as conn:
        if paid_fen != order.amount_fen:
            detail = f"channel reports {paid_fen} fen paid, the order is for {order.amount_fen} fen"
            row = await order_store.transition(
                conn,
                order.id,
                [*OPEN_ORDER, OrderStatus.closed, OrderStatus.failed],
                status=OrderStatus.paid.value,
                his_state=HisState.held.value,
                exception=ExceptionKind.amount_mismatch.value,
                exception_detail=detail,
                due_at=None,
                **money,
            )
            if row is not None:
                await audit.record(conn, source, "exception.amount_mismatch", order.out_trade_no, {"paid": paid_fen})
                await finance_exceptions.raise_exception(
                    conn, order=row, cls=ExceptionKind.amount_mismatch, detail=detail, actor=source,
                    channel_fen=paid_fen,
                )  # fmt: skip
                await notify(conn, row, "order.exception")
            return row or order
        row = await order_store.transition(
            conn, order.id, OPEN_ORDER, status=OrderStatus.paid.value, due_at=utcnow(), last_error=None, **money
        )
        if row is not None:
            await audit.record(conn, source, "order.paid", order.out_trade_no, {"fen": paid_fen})
            svc.wake_orders.set()
            return row
        detail = f"the channel reports a payment after the order was {order.status}"
        row = await order_store.transition(
            conn,
            order.id,
            [OrderStatus.closed, OrderStatus.failed],
            his_state=HisState.held.value,
            exception=ExceptionKind.paid_after_close.value,
            exception_detail=detail,
            **money,
        )
        if row is None:
            return await order_store.get_in(conn, order.id) or order
        await audit.record(conn, source, "exception.paid_after_close", order.out_trade_no, {"fen": paid_fen})
        await notify(conn, row, "order.exception")
        await hold_unrecorded(svc, conn, row, cls=ExceptionKind.paid_after_close, detail=detail, actor=source)
        log.warning("paid_after_close", out_trade_no=order.out_trade_no, fen=paid_fen)
        return row


def commit_params(order: Order) -> tuple[str, dict[str, Any]]:
    operation = COMMIT_OPERATION[BusinessType(order.business_type)]
    params = {
        "request_id": f"{order.out_trade_no}-commit",
        "trade_no": order.out_trade_no,
        "amount_fen": order.paid_fen,
        "channel": order.channel,
        "channel_trade_no": order.channel_trade_no or order.out_trade_no,
        "paid_at": order.paid_at.isoformat(),
        **order.his_params,
    }
    return operation, params


async def commit_his(svc: Services, order: Order) -> Order:
    """Tell the HIS about a paid order, once. Only while its HIS state is ``none`` or ``pending``: a payment held
    back from the HIS (refused, held, returned by finance) is never sent, and a receipt that arrives for one
    anyway becomes an exception saying so. A payment whose caller tells the HIS itself is not sent at all."""
    if order.his_state not in HIS_SENDABLE:
        return order
    if order.his_commit == HisCommit.caller:
        return await _caller_tells_his(svc, order)
    operation, params = commit_params(order)
    try:
        answer = await write_once(
            svc.his_for(order.hospital_id),
            operation,
            params,
            may_have_sent=order.his_state == HisState.pending or order.attempts > 0,
        )
    except HisUnavailable as e:
        return (
            await order_store.update(
                svc.db,
                order.id,
                [OrderStatus.paid],
                last_error=f"bridge: {e}",
                attempts=order.attempts + 1,
                due_at=svc.backoff(order.attempts),
            )
            or order
        )
    if answer.pending:
        return (
            await order_store.update(
                svc.db,
                order.id,
                [OrderStatus.paid],
                his_state=HisState.pending.value,
                attempts=order.attempts + 1,
                due_at=svc.soon(svc.cfg.workers.his_poll_s),
            )
            or order
        )
    async with svc.db.write() as conn:
        if answer.done:
            return await _his_booked(svc, conn, order, answer)
        row = await order_store.transition(
            conn,
            order.id,
            [OrderStatus.paid],
            his_states=HIS_SENDABLE,
            status=OrderStatus.his_rejected.value,
            his_state=HisState.rejected.value,
            his_error=answer.error,
            exception=ExceptionKind.his_rejected.value,
            exception_detail=f"the HIS refused {operation}: {(answer.error or {}).get('message', '')}"[:500],
            due_at=None,
        )
        if row is None:
            return await order_store.get_in(conn, order.id) or order
        await audit.record(conn, "his", "order.his_rejected", order.out_trade_no, answer.error)
        await notify(conn, row, "order.his_rejected")
        await hold_unrecorded(
            svc, conn, row, cls=ExceptionKind.his_rejected, detail=row.exception_detail or "", actor="his"
        )
        return row


async def _his_booked(svc: Services, conn: AsyncConnection, order: Order, answer: HisAnswer) -> Order:
    receipt = answer.result.get("receipt_no")
    row = await order_store.transition(
        conn,
        order.id,
        [OrderStatus.paid],
        his_states=HIS_SENDABLE,
        status=OrderStatus.completed.value,
        his_state=HisState.done.value,
        his_receipt_no=receipt,
        last_error=None,
        due_at=None,
    )
    if row is not None:
        await notify(conn, row, "order.completed")
        await finance_exceptions.resolve(
            conn,
            hospital_id=row.hospital_id,
            entry_key=finance_exceptions.entry_key(row),
            classes=[ExceptionKind.his_stuck],
            note=f"the HIS booked the payment (receipt {receipt})",
            actor="his",
        )
        if row.exception == ExceptionKind.his_stuck:
            row = await order_store.transition(conn, order.id, None, exception=None, exception_detail=None) or row
        return row
    current = await order_store.get_in(conn, order.id)
    if current is None or current.his_state not in [s.value for s in HIS_CLEAR]:
        return current or order
    detail = (
        f"the HIS booked receipt {receipt} for a payment the gateway holds back from it ({current.his_state});"
        f" {current.refunded_fen} of {current.paid_fen} fen already returned to the payer"
    )
    await finance_exceptions.raise_exception(
        conn, order=current, cls=ExceptionKind.his_receipt_on_held, detail=detail, actor="his"
    )
    await audit.record(conn, "his", "exception.his_receipt_on_held", order.out_trade_no, {"receipt_no": receipt})
    log.error("his_receipt_on_held", out_trade_no=order.out_trade_no, receipt_no=receipt)
    return current


async def _caller_tells_his(svc: Services, order: Order) -> Order:
    """The caller records the payment in the HIS itself (under ``out_trade_no``): nothing is sent to the HIS,
    and reconciliation still expects the HIS's record."""
    async with svc.db.write() as conn:
        row = await order_store.transition(
            conn,
            order.id,
            [OrderStatus.paid],
            his_states=HIS_SENDABLE,
            status=OrderStatus.completed.value,
            his_state=HisState.caller.value,
            last_error=None,
            due_at=None,
        )
        if row is not None:
            await notify(conn, row, "order.completed")
        return row or await order_store.get_in(conn, order.id) or order
