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

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.channels.base import ChannelError, RefundRequest, RefundStatus
from gateway.channels.base import RefundState as ChannelRefundState
from gateway.his import HisAnswer, HisUnavailable, write_once
from gateway.model import ExceptionKind, HisState, OrderStatus, RefundOrigin, RefundState, utcnow
from gateway.representations import refund_view
from gateway.sagas.common import new_trade_no
from gateway.services import Services, log
from gateway.store import audit, finance_exceptions, outbox
from gateway.store import orders as order_store
from gateway.store import refunds as refund_store
from gateway.store.orders import Order
from gateway.store.refunds import Refund
from gateway.store.tables import orders

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


def needs_his(refund: Refund, order: Order) -> bool:
    """The refund goes through the HIS's steps (apply, write-back): a business refund of a payment the HIS
    booked (told by the gateway, or by the caller itself)."""
    return refund.origin == RefundOrigin.business and order.his_state in (HisState.done, HisState.caller)


def his_has_refunded(refund: Refund, order: Order) -> bool:
    """The HIS has booked this refund already (it applied it, or started it at its window): if the money does
    not go back, HIS and money disagree and finance must see it."""
    return needs_his(refund, order) or refund.origin == RefundOrigin.window


async def notify(conn: AsyncConnection, refund: Refund, order: Order, event_type: str) -> None:
    await outbox.enqueue(
        conn,
        app_id=order.app_id,
        hospital_id=order.hospital_id,
        event_type=event_type,
        subject_key=refund.out_refund_no,
        payload=refund_view(refund, order),
        notify_url=order.notify_url,
    )


async def request(svc: Services, order: Order, new: NewRefund) -> tuple[Refund, bool]:
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


async def _reject_early(svc: Services, refund: Refund, order: Order) -> Refund:
    """Over the payment already: refused without asking the HIS anything."""
    async with svc.db.write() as conn:
        available = await refund_store.refundable_fen(conn, order)
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


async def advance(svc: Services, refund: Refund) -> Refund:
    """Run the refund's next steps until it finishes or must wait (then ``due_at`` says when to go on)."""
    while True:
        order = await order_store.get(svc.db, refund.order_id)
        assert order is not None
        step = {
            RefundState.his_applying: _apply_at_his,
            RefundState.reserved: _refund_at_channel,
            RefundState.refunding: _query_channel,
            RefundState.succeeded: _write_back,
            RefundState.his_cancelling: _cancel_at_his,
        }.get(RefundState(refund.state))
        if step is None:
            return await refund_store.update(svc.db, refund.id, None, due_at=None) or refund
        before = (refund.state, refund.due_at)
        refund = await step(svc, refund, order)
        if refund.due_at is not None and refund.due_at > utcnow():
            return refund
        if (refund.state, refund.due_at) == before:
            return refund


async def _send_step(
    svc: Services, refund: Refund, order: Order, operation: str, params: dict[str, Any]
) -> tuple[HisAnswer | None, Refund]:
    """One HIS step of a refund, sent once (``write_once``): the HIS's answer, or None and the refund rescheduled
    when there is none yet (the agent unreachable, or the write pending there)."""
    try:
        answer = await write_once(svc.his_for(order.hospital_id), operation, params, may_have_sent=refund.attempts > 0)
    except HisUnavailable as e:
        return None, await _later(svc, refund, f"bridge: {e}")
    if answer.pending:
        later = svc.soon(svc.cfg.workers.his_poll_s)
        row = await refund_store.update(svc.db, refund.id, None, attempts=refund.attempts + 1, due_at=later)
        return None, row or refund
    return answer, refund


def _request_id(refund: Refund, step: str) -> str:
    """The same on every retry of a step; a new one only when finance re-drives a step the HIS refused."""
    return f"{refund.out_refund_no}-{step}" + (f"-{refund.his_round + 1}" if refund.his_round else "")


async def _apply_at_his(svc: Services, refund: Refund, order: Order) -> Refund:
    if not needs_his(refund, order):
        reservation = await _reserve(svc, refund, order, limit_fen=None, his={})
        if his_has_refunded(refund, order) and not reservation.reserved:
            return await his_refund_not_paid(svc, reservation.refund or refund, order, reservation.why)
        return reservation.refund or refund
    params = {
        "request_id": _request_id(refund, "apply"),
        "trade_no": order.out_trade_no,
        "refund_no": refund.out_refund_no,
        "amount_fen": refund.amount_fen,
        **({"reason": refund.reason} if refund.reason else {}),
    }
    answer, waiting = await _send_step(svc, refund, order, "refund.apply", params)
    if answer is None:
        return waiting
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
                await _his_step_done(conn, row, order, "the HIS refused the refund application")
            return row or refund
    refundable = int(answer.result.get("refundable_fen", 0))
    his = {"his_refundable_fen": refundable, "his_refund_id": answer.result.get("his_refund_id")}
    reservation = await _reserve(svc, refund, order, limit_fen=refundable, his=his)
    reserved = reservation.refund or refund
    if not reservation.reserved and reserved.state == RefundState.rejected:
        return await his_refund_not_paid(svc, reserved, order, reservation.why)
    if reservation.reserved:
        async with svc.db.write() as conn:
            await _his_step_done(conn, reserved, order, "the HIS applied the refund")
    return reserved


async def _his_step_done(conn: AsyncConnection, refund: Refund, order: Order, note: str) -> None:
    """A HIS step of this refund finished: its ``his_stuck`` exception, if any, settles itself."""
    await finance_exceptions.resolve(
        conn,
        hospital_id=order.hospital_id,
        entry_key=finance_exceptions.entry_key(order, refund),
        classes=[ExceptionKind.his_stuck],
        note=note,
        actor="his",
    )
    if refund.exception == ExceptionKind.his_stuck:
        await refund_store.transition(conn, refund.id, None, exception=None, exception_detail=None)


async def his_refund_not_paid(svc: Services, refund: Refund, order: Order, why: str | None) -> Refund:
    """A refund the HIS has booked (applied, or started at its window) was refused before any money moved: an
    exception for finance, on the refund and in finance's list."""
    if refund.state != RefundState.rejected:
        return refund
    detail = "the HIS applied this refund, but it was not paid out: " + (why or refund.last_error or "")
    async with svc.db.write() as conn:
        row = await refund_store.transition(
            conn,
            refund.id,
            [RefundState.rejected],
            exception=ExceptionKind.his_refund_not_paid.value,
            exception_detail=detail[:500],
        )
        if row is not None:
            await finance_exceptions.raise_exception(
                conn, order=order, refund=row, cls=ExceptionKind.his_refund_not_paid, detail=detail, actor="gateway"
            )
    log.warning("his_refund_not_paid", out_refund_no=refund.out_refund_no)
    return row or refund


async def _reserve(
    svc: Services, refund: Refund, order: Order, *, limit_fen: int | None, his: dict[str, Any]
) -> refund_store.Reservation:
    reservation = await refund_store.reserve(
        svc.db, refund.id, from_state=RefundState.his_applying, limit_fen=limit_fen, facts=his, due_at=utcnow()
    )
    if not reservation.reserved and reservation.refund is not None and reservation.refund.state == RefundState.rejected:
        async with svc.db.write() as conn:
            await notify(conn, reservation.refund, order, "refund.rejected")
            await refund_store.transition(conn, refund.id, None, due_at=None)
    return reservation


async def _refund_at_channel(svc: Services, refund: Refund, order: Order) -> Refund:
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


async def _query_channel(svc: Services, refund: Refund, order: Order) -> Refund:
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


def _mismatch(refund: Refund, order: Order, status: RefundStatus) -> str | None:
    """Why the channel's word cannot be about this refund, or None when it can."""
    if status.out_refund_no != refund.out_refund_no:
        return f"the channel speaks of refund {status.out_refund_no}, not {refund.out_refund_no}"
    if status.out_trade_no and status.out_trade_no != order.out_trade_no:
        return (
            f"the channel puts refund {refund.out_refund_no} on trade {status.out_trade_no}, not {order.out_trade_no}"
        )
    if status.state != ChannelRefundState.success:
        return None
    if status.cumulative:
        if not refund.amount_fen <= status.refund_fen <= int(order.paid_fen or order.amount_fen):
            return (
                f"the channel reports {status.refund_fen} fen refunded on the trade in all, which cannot include"
                f" this refund of {refund.amount_fen} fen of a {order.paid_fen} fen payment"
            )
        return None
    if status.refund_fen != refund.amount_fen:
        return f"the channel reports {status.refund_fen} fen refunded, the refund is for {refund.amount_fen} fen"
    return None


async def apply_refund_status(
    svc: Services, refund: Refund, order: Order, status: RefundStatus, *, source: str
) -> Refund:
    """Apply the channel's word about a refund; idempotent. A word that does not fit the refund (its amount,
    its trade) is not applied: it becomes an exception finance sees."""
    why = _mismatch(refund, order, status)
    if why is not None:
        return await _word_does_not_fit(svc, refund, order, status, why, source)
    in_flight = [RefundState.reserved, RefundState.refunding]
    if status.state == ChannelRefundState.success:
        async with svc.db.write() as conn:
            await order_store.lock(svc.db, conn, order.id)
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
                current = await refund_store.get_in(conn, refund.id)
                if current is not None and current.state in LATE_SUCCESS_FROM:
                    return await _late_success(svc, conn, current, order, status, source)
                return current or refund
            await order_store.transition(conn, order.id, None, refunded_fen=orders.c.refunded_fen + refund.amount_fen)
            await notify(conn, row, order, "refund.succeeded")
            await audit.record(conn, source, "refund.succeeded", refund.out_refund_no, {"fen": refund.amount_fen})
            if row.exception == ExceptionKind.refund_abnormal:
                await finance_exceptions.resolve(
                    conn, hospital_id=order.hospital_id, entry_key=finance_exceptions.entry_key(order, row),
                    classes=[ExceptionKind.refund_abnormal], note="the channel paid the refund after all", actor=source,
                )  # fmt: skip
        svc.wake_refunds.set()
        return row
    if status.state == ChannelRefundState.closed:
        return await _channel_refused(svc, refund, order, "the channel closed the refund")
    values: dict[str, Any] = {"state": RefundState.refunding.value, "attempts": refund.attempts + 1}
    if status.state == ChannelRefundState.abnormal:
        detail = "the channel could not pay the refund back to the payer's account; finance must act"
        values.update(
            exception=ExceptionKind.refund_abnormal.value,
            exception_detail=detail,
            due_at=svc.soon(svc.cfg.workers.retry_max_s),
        )
        async with svc.db.write() as conn:
            row = await refund_store.transition(conn, refund.id, in_flight, **values)
            if row is not None and refund.exception != ExceptionKind.refund_abnormal:
                await finance_exceptions.raise_exception(
                    conn, order=order, refund=row, cls=ExceptionKind.refund_abnormal, detail=detail, actor=source
                )
            return row or refund
    values["due_at"] = min(svc.backoff(refund.attempts), svc.soon(svc.cfg.workers.retry_max_s))
    return await refund_store.update(svc.db, refund.id, in_flight, **values) or refund


LATE_SUCCESS_FROM = (RefundState.failed.value, RefundState.his_cancelling.value, RefundState.cancelled.value)


async def _late_success(
    svc: Services, conn: AsyncConnection, refund: Refund, order: Order, status: RefundStatus, source: str
) -> Refund:
    """The channel paid a refund it had refused or closed (or that finance has since undone at the HIS): the
    money did go back. Count it if the payment still covers it, and tell finance either way."""
    locked = await order_store.get_in(conn, order.id)
    assert locked is not None
    room = await refund_store.refundable_fen(conn, locked)
    counted = refund.amount_fen <= room
    his_applied = refund.state == RefundState.failed.value and needs_his(refund, locked)
    detail = f"the channel paid {refund.amount_fen} fen back after the refund was marked {refund.state}"
    if counted:
        row = await refund_store.transition(
            conn,
            refund.id,
            LATE_SUCCESS_FROM_STATES,
            state=(RefundState.succeeded if refund.state == RefundState.failed else RefundState.completed).value,
            channel_refund_no=status.channel_refund_no,
            refunded_at=status.succeeded_at or utcnow(),
            exception=ExceptionKind.refund_late_success.value,
            exception_detail=detail[:500],
            due_at=utcnow(),
        )
        await order_store.transition(conn, order.id, None, refunded_fen=orders.c.refunded_fen + refund.amount_fen)
        detail += "; it is counted as refunded"
        if his_applied:
            detail += " and written back to the HIS"
        elif refund.state != RefundState.failed.value:
            detail += ", but the HIS no longer holds the refund application: the HIS books the payment in full"
    else:
        row = await refund_store.transition(
            conn,
            refund.id,
            None,
            exception=ExceptionKind.refund_late_success.value,
            exception_detail=(detail + f"; only {room} fen of the payment was left to refund")[:500],
        )
        detail += f"; only {room} fen of the payment was left to refund: more went back than was paid"
    current = row or refund
    await finance_exceptions.raise_exception(
        conn, order=locked, refund=current, cls=ExceptionKind.refund_late_success, detail=detail, actor=source
    )
    await audit.record(conn, source, "exception.refund_late_success", refund.out_refund_no, {"detail": detail})
    log.warning("refund_late_success", out_refund_no=refund.out_refund_no, counted=counted)
    if counted:
        svc.wake_refunds.set()
    return current


LATE_SUCCESS_FROM_STATES = [RefundState(s) for s in LATE_SUCCESS_FROM]


async def _word_does_not_fit(
    svc: Services, refund: Refund, order: Order, status: RefundStatus, why: str, source: str
) -> Refund:
    log.error("refund_word_mismatch", out_refund_no=refund.out_refund_no, why=why, source=source)
    async with svc.db.write() as conn:
        row = await refund_store.transition(
            conn, refund.id, None, exception=ExceptionKind.amount_mismatch.value, exception_detail=why[:500]
        )
        await finance_exceptions.raise_exception(
            conn,
            order=order,
            refund=row or refund,
            cls=ExceptionKind.amount_mismatch,
            detail=f"{source}: {why}",
            actor=source,
            channel_fen=status.refund_fen,
        )
        await audit.record(conn, source, "refund.word_refused", refund.out_refund_no, {"why": why[:500]})
    return row or refund


async def _channel_refused(svc: Services, refund: Refund, order: Order, why: str) -> Refund:
    values: dict[str, Any] = {"state": RefundState.failed.value, "last_error": why[:500], "due_at": None}
    detail = f"the HIS applied this refund but the channel refused it: {why}"
    if his_has_refunded(refund, order):
        values.update(exception=ExceptionKind.his_refund_not_paid.value, exception_detail=detail[:500])
    async with svc.db.write() as conn:
        row = await refund_store.transition(conn, refund.id, [RefundState.reserved, RefundState.refunding], **values)
        if row is None:
            return await refund_store.get_in(conn, refund.id) or refund
        await notify(conn, row, order, "refund.failed")
        await audit.record(conn, "channel", "refund.failed", refund.out_refund_no, {"why": why[:200]})
        if his_has_refunded(refund, order):
            await finance_exceptions.raise_exception(
                conn, order=order, refund=row, cls=ExceptionKind.his_refund_not_paid, detail=detail, actor="channel"
            )
    log.warning("refund_failed", out_refund_no=refund.out_refund_no, why=why)
    return row


async def _write_back(svc: Services, refund: Refund, order: Order) -> Refund:
    if not needs_his(refund, order):
        async with svc.db.write() as conn:
            row = await refund_store.transition(
                conn, refund.id, [RefundState.succeeded], state=RefundState.completed.value, due_at=None
            )
            if row is not None and refund.origin == RefundOrigin.policy:
                await finance_exceptions.resolve(
                    conn, hospital_id=order.hospital_id, entry_key=finance_exceptions.entry_key(order),
                    classes=[ExceptionKind.his_rejected, ExceptionKind.paid_after_close],
                    note=f"refunded in full to the payer under the hospital's policy ({refund.out_refund_no})",
                    actor="gateway",
                )  # fmt: skip
            return row or refund
    params = {
        "request_id": _request_id(refund, "writeback"),
        "trade_no": order.out_trade_no,
        "refund_no": refund.out_refund_no,
        "amount_fen": refund.amount_fen,
        "channel_refund_no": _code(refund.channel_refund_no or refund.out_refund_no),
        "refunded_at": (refund.refunded_at or utcnow()).isoformat(),
    }
    answer, waiting = await _send_step(svc, refund, order, "refund.writeback", params)
    if answer is None:
        return waiting
    async with svc.db.write() as conn:
        if answer.done:
            row = await refund_store.transition(
                conn,
                refund.id,
                [RefundState.succeeded],
                state=RefundState.completed.value,
                his_receipt_no=answer.result.get("receipt_no"),
                last_error=None,
                due_at=None,
            )
            if row is not None:
                await _his_step_done(conn, row, order, "the HIS recorded the write-back")
                await finance_exceptions.resolve(
                    conn, hospital_id=order.hospital_id, entry_key=finance_exceptions.entry_key(order, row),
                    classes=[ExceptionKind.writeback_failed], note="the write-back went through", actor="his",
                )  # fmt: skip
            return row or refund
        detail = f"money refunded, but the HIS refused the write-back: {answer.error}"
        row = await refund_store.transition(
            conn,
            refund.id,
            [RefundState.succeeded],
            exception=ExceptionKind.writeback_failed.value,
            exception_detail=detail[:500],
            due_at=None,
        )
        await audit.record(conn, "his", "exception.writeback_failed", refund.out_refund_no, answer.error)
        if row is not None:
            await finance_exceptions.raise_exception(
                conn, order=order, refund=row, cls=ExceptionKind.writeback_failed, detail=detail, actor="his"
            )
    return row or refund


async def _cancel_at_his(svc: Services, refund: Refund, order: Order) -> Refund:
    """Undo the HIS's application of a refund that was never paid (finance decided so, two people)."""
    params = {
        "request_id": _request_id(refund, "cancel"),
        "trade_no": order.out_trade_no,
        "refund_no": refund.out_refund_no,
        "reason": (refund.last_error or "refund not paid; cancelled by finance")[:200],
    }
    answer, waiting = await _send_step(svc, refund, order, "refund.cancel", params)
    if answer is None:
        return waiting
    return await _cancel_answered(svc, refund, order, answer)


async def _cancel_answered(svc: Services, refund: Refund, order: Order, answer: HisAnswer) -> Refund:
    async with svc.db.write() as conn:
        key = finance_exceptions.entry_key(order, refund)
        if answer.done:
            row = await refund_store.transition(
                conn, refund.id, [RefundState.his_cancelling], state=RefundState.cancelled.value, due_at=None,
                his_receipt_no=answer.result.get("receipt_no"), last_error=None,
            )  # fmt: skip
            if row is not None:
                await _his_step_done(conn, row, order, "the HIS cancelled the refund application")
                await audit.record(conn, "his", "refund.cancelled_at_his", refund.out_refund_no, answer.result)
            return row or refund
        detail = f"the HIS refused to cancel its refund application: {answer.error}"
        row = await refund_store.transition(
            conn, refund.id, [RefundState.his_cancelling], state=RefundState.failed.value, due_at=None,
            exception=ExceptionKind.his_refund_not_paid.value, exception_detail=detail[:500],
        )  # fmt: skip
        if row is not None:
            await finance_exceptions.raise_exception(
                conn, order=order, refund=row, cls=ExceptionKind.his_refund_not_paid, detail=detail, actor="his"
            )
            await audit.record(conn, "his", "refund.cancel_refused", refund.out_refund_no, answer.error)
        log.warning("refund_cancel_refused", out_refund_no=refund.out_refund_no, key=key)
        return row or refund


def _code(value: str) -> str:
    """The bridge accepts codes of [A-Za-z0-9_.:/-]; a channel serial outside that is sent as its digest."""
    if all(c.isalnum() or c in "_.:/-" for c in value) and len(value) <= 64:
        return value
    return hashlib.sha256(value.encode()).hexdigest()[:40]


async def _later(svc: Services, refund: Refund, error: str) -> Refund:
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


async def on_channel_refund(svc: Services, status: RefundStatus, channel: str, merchant: str, *, source: str) -> str:
    """A refund callback: apply it to the refund it names (if that refund is this merchant's), then go on with
    the write-back."""
    refund = await refund_store.by_out_refund_no(svc.db, channel, status.out_refund_no)
    if refund is None:
        return f"unknown refund {status.out_refund_no}"
    order = await order_store.get(svc.db, refund.order_id)
    assert order is not None
    if order.merchant_id != merchant:
        log.warning("refund_callback_wrong_merchant", out_refund_no=status.out_refund_no, merchant=merchant)
        return f"refund {status.out_refund_no} belongs to merchant {order.merchant_id}, not {merchant}"
    refund = await apply_refund_status(svc, refund, order, status, source=source)
    return f"refund {refund.out_refund_no} {refund.state}"
