"""Refunds the HIS started at its cashier window (窗口退费), forwarded by the hospital's agent.

The HIS has already done its own 退费, so neither ``refund.apply`` nor ``refund.writeback`` is sent (origin
``window`` makes ``refund.needs_his`` false); the rest is the refund saga as for any refund: checked and
reserved against paid − refunded in one transaction, the channel called with one refund number on every retry.
Because the HIS has booked the refund, one that cannot be paid out (over the cap, the channel refuses) is an
exception finance sees, never a silent refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from gateway.model import PAID_ORDER, RefundOrigin, RefundState
from gateway.sagas import refund as refund_saga
from gateway.sagas.common import new_trade_no
from gateway.services import Services
from gateway.store import audit, registry
from gateway.store import orders as order_store
from gateway.store import refunds as refund_store


@dataclass(frozen=True)
class NewWindowRefund:
    business_refund_no: str
    amount_fen: int
    his_refund_no: str
    terminal_id: str
    request_id: str | None = None
    reason: str | None = None


async def request(
    svc: Services, app: registry.App, order: order_store.Order, new: NewWindowRefund
) -> tuple[refund_store.Refund, bool]:
    """Record the window's refund and drive it as far as it goes now; idempotent on the business refund no."""
    if order.status not in PAID_ORDER:
        raise refund_saga.NotRefundable(
            f"payment {order.out_trade_no} is {order.status}: only a payment the channel took is refunded"
        )
    try:
        row, created = await refund_store.insert(
            svc.db,
            {
                "order_id": order.id,
                "hospital_id": order.hospital_id,
                "channel": order.channel,
                "business_refund_no": new.business_refund_no,
                "out_refund_no": new_trade_no("W"),
                "amount_fen": new.amount_fen,
                "reason": new.reason,
                "origin": RefundOrigin.window.value,
                "state": RefundState.his_applying.value,
                "his_refund_id": new.his_refund_no,
                "app_id": app.id,
                "terminal_id": new.terminal_id,
                "request_id": new.request_id,
                "due_at": svc.lease(),
            },
        )
    except IntegrityError:
        raise refund_saga.RefundConflict(f"request_id {new.request_id} was used for another refund") from None
    if not created:
        same = row.order_id == order.id and row.amount_fen == new.amount_fen and row.origin == RefundOrigin.window
        if not same:
            raise refund_saga.RefundConflict(f"business refund {new.business_refund_no} exists for a different refund")
        return row, False
    async with svc.db.write() as conn:
        await audit.record(
            conn,
            f"terminal:{new.terminal_id}",
            "refund.window",
            row.out_refund_no,
            {"fen": new.amount_fen, "his_refund_no": new.his_refund_no, "out_trade_no": order.out_trade_no},
        )
    return await refund_saga.advance(svc, row), True
