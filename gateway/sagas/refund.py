"""The refund saga: the HIS first, then the money, then the write-back.

    refund.apply at the HIS (its refundable amount) ─► check + reserve against the payment (one transaction,
    order row locked) ─► channel refund, outside the transaction, same out_refund_no on every retry
    ─► refund.writeback of the channel's serial ─► business notified

A refund the HIS has applied but the channel refused is an exception for finance, never silently dropped.
Refunds of money the HIS never recorded (policy refunds, orders the HIS refused) skip both HIS steps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from gateway.channels.base import ChannelError, RefundRequest, RefundStatus
from gateway.channels.base import RefundState as ChannelRefundState
from gateway.his import HisUnavailable
from gateway.model import ExceptionKind, HisState, OrderStatus, RefundOrigin, RefundState, utcnow
from gateway.sagas.common import new_trade_no
from gateway.services import Services, log
from gateway.store import audit, outbox
from gateway.store import orders as order_store
from gateway.store import refunds as refund_store
from gateway.store.tables import orders
from gateway.views import refund_view

REFUNDABLE_ORDER = (OrderStatus.completed, OrderStatus.his_rejected)
RESEND_CODES = frozenset({"NOT_FOUND", "RESOURCE_NOT_EXISTS", "REFUND_NOT_EXIST", "TRADE_NOT_EXIST"})
"""What a refund query answers when the channel never received the refund: send it (again) then."""


class RefundConflict(Exception):
    """The business refund number is taken by a different request."""


class NotRefundable(Exception):
    pass


@dataclass(frozen=True)
class NewRefund:
    business_refund_no: str
    amount_fen: int
    reason: str | None = None
    request_id: str | None = None
    app_id: str | None = None


def needs_his(refund: Any, order: Any) -> bool:
    return refund.origin == RefundOrigin.business and order.his_state in (HisState.done, HisState.caller)


def his_has_refunded(refund: Any, order: Any) -> bool:
    """The HIS has booked this refund already (it applied it, or started it at its window): if the money does
    not go back, HIS and money disagree and finance must see it."""
    return needs_his(refund, order) or refund.origin == RefundOrigin.window


async def notify(conn: Any, refund: Any, order: Any, event_type: str) -> None:
    await outbox.enqueue(
        conn,
        app_id=order.app_id,
        hospital_id=order.hospital_id,
        event_type=event_type,
        subject_key=refund.out_refund_no,
        payload=refund_view(refund, order),
        notify_url=order.notify_url,
    )


async def request(svc: Services, order: Any, new: NewRefund) -> tuple[Any, bool]:
    """Start a refund of ``order`` and drive it as far as it goes now; idempotent on the business refund no."""
    if order.status not in REFUNDABLE_ORDER:
        raise NotRefundable(f"order {order.business_order_no} is {order.status}: only a completed order is refunded")
    refund, created = await refund_store.insert(
        svc.db,
        {
            "order_id": order.id,
            "hospital_id": order.hospital_id,
            "channel": order.channel,
            "business_refund_no": new.business_refund_no,
            "out_refund_no": new_trade_no("R"),
            "amount_fen": new.amount_fen,
            "reason": new.reason,
            "origin": RefundOrigin.business.value,
            "state": RefundState.his_applying.value,
            "due_at": svc.lease(),
            "request_id": new.request_id,
            "app_id": new.app_id,
        },
    )
    if not created:
        if refund.order_id != order.id or refund.amount_fen != new.amount_fen:
            raise RefundConflict(f"business refund {new.business_refund_no} exists for a different refund")
        return refund, False
    if new.amount_fen > await refund_store.available_fen(svc.db, order.id):
        refund = await _reject_early(svc, refund, order)
        return refund, True
    return await advance(svc, refund), True


async def _reject_early(svc: Services, refund: Any, order: Any) -> Any:
    """Over the payment already: refused without asking the HIS anything."""
    async with svc.db.write() as conn:
        available = int(order.paid_fen or 0) - await refund_store.counted_fen(conn, order.id)
        row = await refund_store.transition(
            conn,
            refund.id,
            [RefundState.his_applying],
            state=RefundState.rejected.value,
            last_error=f"refund {refund.amount_fen} fen exceeds what the payment still covers ({available} fen)",
            due_at=None,
        )
        if row is not None:
            await notify(conn, row, order, "refund.rejected")
        return row or refund


async def advance(svc: Services, refund: Any) -> Any:
    """Run the refund's next steps until it finishes or must wait (then ``due_at`` says when to go on)."""
    while True:
        order = await order_store.get(svc.db, refund.order_id)
        assert order is not None
        step = {
            RefundState.his_applying: _apply_at_his,
            RefundState.reserved: _refund_at_channel,
            RefundState.refunding: _query_channel,
            RefundState.succeeded: _write_back,
        }.get(RefundState(refund.state))
        if step is None:
            return await refund_store.update(svc.db, refund.id, None, due_at=None) or refund
        before = (refund.state, refund.due_at)
        refund = await step(svc, refund, order)
        if refund.due_at is not None and refund.due_at > utcnow():
            return refund
        if (refund.state, refund.due_at) == before:
            return refund


def _request_id(refund: Any, step: str) -> str:
    return f"{refund.out_refund_no}-{step}"


async def _apply_at_his(svc: Services, refund: Any, order: Any) -> Any:
    if not needs_his(refund, order):
        reservation = await _reserve(svc, refund, order, limit_fen=None, his={})
        if his_has_refunded(refund, order) and not reservation.reserved:
            return await his_refund_not_paid(svc, reservation.refund)
        return reservation.refund
    params = {
        "request_id": _request_id(refund, "apply"),
        "trade_no": order.out_trade_no,
        "refund_no": refund.out_refund_no,
        "amount_fen": refund.amount_fen,
        **({"reason": refund.reason} if refund.reason else {}),
    }
    his = svc.his_for(order.hospital_id)
    try:
        answer = None
        if refund.attempts:
            answer = await his.status(params["request_id"])
        if answer is None:
            answer = await his.write("refund.apply", params)
    except HisUnavailable as e:
        return await _later(svc, refund, f"bridge: {e}")
    if answer.pending:
        return await refund_store.update(
            svc.db, refund.id, None, attempts=refund.attempts + 1, due_at=svc.soon(svc.cfg.workers.his_poll_s)
        )
    if answer.failed:
        async with svc.db.write() as conn:
            row = await refund_store.transition(
                conn,
                refund.id,
                [RefundState.his_applying],
                state=RefundState.rejected.value,
                last_error=f"HIS refused: {answer.error}"[:500],
                due_at=None,
            )
            if row is not None:
                await notify(conn, row, order, "refund.rejected")
            return row or refund
    refundable = int(answer.result.get("refundable_fen", 0))
    his = {"his_refundable_fen": refundable, "his_refund_id": answer.result.get("his_refund_id")}
    reservation = await _reserve(svc, refund, order, limit_fen=refundable, his=his)
    if not reservation.reserved and reservation.refund.state == RefundState.rejected:
        return await his_refund_not_paid(svc, reservation.refund)
    return reservation.refund


async def his_refund_not_paid(svc: Services, refund: Any) -> Any:
    """A refund the HIS has booked was refused before any money moved: an exception for finance."""
    if refund.state != RefundState.rejected:
        return refund
    row = await refund_store.update(
        svc.db,
        refund.id,
        [RefundState.rejected],
        exception=ExceptionKind.his_refund_not_paid.value,
        exception_detail="the HIS applied this refund, but it was not paid out: " + (refund.last_error or ""),
    )
    log.warning("his_refund_not_paid", out_refund_no=refund.out_refund_no)
    return row or refund


async def _reserve(
    svc: Services, refund: Any, order: Any, *, limit_fen: int | None, his: dict[str, Any]
) -> refund_store.Reservation:
    reservation = await refund_store.reserve(
        svc.db, refund.id, from_state=RefundState.his_applying, limit_fen=limit_fen, due_at=utcnow(), **his
    )
    if not reservation.reserved and reservation.refund.state == RefundState.rejected:
        async with svc.db.write() as conn:
            await notify(conn, reservation.refund, order, "refund.rejected")
            await refund_store.transition(conn, refund.id, None, due_at=None)
    return reservation


async def _refund_at_channel(svc: Services, refund: Any, order: Any) -> Any:
    channel = svc.channel(order.merchant_id)
    request = RefundRequest(
        out_trade_no=order.out_trade_no,
        out_refund_no=refund.out_refund_no,
        refund_fen=refund.amount_fen,
        total_fen=int(order.paid_fen or order.amount_fen),
        reason=refund.reason,
        notify_url=svc.notify_url(order.channel, order.merchant_id),
    )
    try:
        status = await channel.refund(request)
    except ChannelError as e:
        if e.in_doubt:
            return (
                await refund_store.update(
                    svc.db,
                    refund.id,
                    [RefundState.reserved],
                    state=RefundState.refunding.value,
                    last_error=str(e),
                    attempts=refund.attempts + 1,
                    due_at=svc.soon(svc.cfg.workers.retry_base_s),
                )
                or refund
            )
        if e.retryable:
            return await _later(svc, refund, str(e))
        return await _channel_refused(svc, refund, order, str(e))
    return await apply_refund_status(svc, refund, order, status, source="channel")


async def _query_channel(svc: Services, refund: Any, order: Any) -> Any:
    try:
        status = await svc.channel(order.merchant_id).query_refund(order.out_trade_no, refund.out_refund_no)
    except ChannelError as e:
        if e.code in RESEND_CODES:
            return (
                await refund_store.update(
                    svc.db, refund.id, [RefundState.refunding], state=RefundState.reserved.value, due_at=utcnow()
                )
                or refund
            )
        return await _later(svc, refund, str(e))
    return await apply_refund_status(svc, refund, order, status, source="compensation")


async def apply_refund_status(svc: Services, refund: Any, order: Any, status: RefundStatus, *, source: str) -> Any:
    """Apply the channel's word about a refund; idempotent."""
    in_flight = [RefundState.reserved, RefundState.refunding]
    if status.state == ChannelRefundState.success:
        async with svc.db.write() as conn:
            row = await refund_store.transition(
                conn,
                refund.id,
                in_flight,
                state=RefundState.succeeded.value,
                channel_refund_no=status.channel_refund_no,
                refunded_at=status.succeeded_at or utcnow(),
                last_error=None,
                due_at=utcnow(),
            )
            if row is None:
                return await refund_store.get(svc.db, refund.id)
            await order_store.transition(conn, order.id, None, refunded_fen=orders.c.refunded_fen + refund.amount_fen)
            await notify(conn, row, order, "refund.succeeded")
            await audit.record(conn, source, "refund.succeeded", refund.out_refund_no, {"fen": refund.amount_fen})
        svc.wake_refunds.set()
        return row
    if status.state == ChannelRefundState.closed:
        return await _channel_refused(svc, refund, order, "the channel closed the refund")
    values: dict[str, Any] = {"state": RefundState.refunding.value, "attempts": refund.attempts + 1}
    if status.state == ChannelRefundState.abnormal:
        values.update(
            exception=ExceptionKind.refund_abnormal.value,
            exception_detail="the channel could not pay the refund back to the payer's account; finance must act",
            due_at=svc.soon(svc.cfg.workers.retry_max_s),
        )
    else:
        values["due_at"] = min(svc.backoff(refund.attempts), svc.soon(svc.cfg.workers.retry_max_s))
    return await refund_store.update(svc.db, refund.id, in_flight, **values) or refund


async def _channel_refused(svc: Services, refund: Any, order: Any, why: str) -> Any:
    values: dict[str, Any] = {"state": RefundState.failed.value, "last_error": why[:500], "due_at": None}
    if his_has_refunded(refund, order):
        values.update(
            exception=ExceptionKind.his_refund_not_paid.value,
            exception_detail=f"the HIS applied this refund but the channel refused it: {why}"[:500],
        )
    async with svc.db.write() as conn:
        row = await refund_store.transition(conn, refund.id, [RefundState.reserved, RefundState.refunding], **values)
        if row is None:
            return await refund_store.get(svc.db, refund.id)
        await notify(conn, row, order, "refund.failed")
        await audit.record(conn, "channel", "refund.failed", refund.out_refund_no, {"why": why[:200]})
    log.warning("refund_failed", out_refund_no=refund.out_refund_no, why=why)
    return row


async def _write_back(svc: Services, refund: Any, order: Any) -> Any:
    if not needs_his(refund, order):
        return (
            await refund_store.update(
                svc.db, refund.id, [RefundState.succeeded], state=RefundState.completed.value, due_at=None
            )
            or refund
        )
    params = {
        "request_id": _request_id(refund, "writeback"),
        "trade_no": order.out_trade_no,
        "refund_no": refund.out_refund_no,
        "amount_fen": refund.amount_fen,
        "channel_refund_no": _code(refund.channel_refund_no or refund.out_refund_no),
        "refunded_at": (refund.refunded_at or utcnow()).isoformat(),
    }
    his = svc.his_for(order.hospital_id)
    try:
        answer = None
        if refund.attempts:
            answer = await his.status(params["request_id"])
        if answer is None:
            answer = await his.write("refund.writeback", params)
    except HisUnavailable as e:
        return await _later(svc, refund, f"bridge: {e}")
    if answer.pending:
        return (
            await refund_store.update(
                svc.db, refund.id, None, attempts=refund.attempts + 1, due_at=svc.soon(svc.cfg.workers.his_poll_s)
            )
            or refund
        )
    if answer.done:
        return (
            await refund_store.update(
                svc.db,
                refund.id,
                [RefundState.succeeded],
                state=RefundState.completed.value,
                his_receipt_no=answer.result.get("receipt_no"),
                last_error=None,
                due_at=None,
            )
            or refund
        )
    async with svc.db.write() as conn:
        row = await refund_store.transition(
            conn,
            refund.id,
            [RefundState.succeeded],
            exception=ExceptionKind.writeback_failed.value,
            exception_detail=f"money refunded, but the HIS refused the write-back: {answer.error}"[:500],
            due_at=None,
        )
        await audit.record(conn, "his", "exception.writeback_failed", refund.out_refund_no, answer.error)
    return row or refund


def _code(value: str) -> str:
    """The bridge accepts codes of [A-Za-z0-9_.:/-]; a channel serial outside that is sent as its digest."""
    if all(c.isalnum() or c in "_.:/-" for c in value) and len(value) <= 64:
        return value
    return hashlib.sha256(value.encode()).hexdigest()[:40]


async def _later(svc: Services, refund: Any, error: str) -> Any:
    return (
        await refund_store.update(
            svc.db,
            refund.id,
            None,
            last_error=error[:500],
            attempts=refund.attempts + 1,
            due_at=svc.backoff(refund.attempts),
        )
        or refund
    )


async def on_channel_refund(svc: Services, status: RefundStatus, channel: str, *, source: str) -> str:
    """A refund callback: apply it to the refund it names, then go on with the write-back."""
    refund = await refund_store.by_out_refund_no(svc.db, channel, status.out_refund_no)
    if refund is None:
        return f"unknown refund {status.out_refund_no}"
    order = await order_store.get(svc.db, refund.order_id)
    assert order is not None
    refund = await apply_refund_status(svc, refund, order, status, source=source)
    return f"refund {refund.out_refund_no} {refund.state}"
