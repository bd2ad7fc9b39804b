"""What the business API and the notifications show of an order or a refund: the same shape in both, so a
business system can treat a pushed event and a pulled answer alike."""

from __future__ import annotations

import datetime as dt
from typing import Any


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def order_view(order: Any, *, with_pay_params: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "business_order_no": order.business_order_no,
        "out_trade_no": order.out_trade_no,
        "hospital_id": order.hospital_id,
        "channel": order.channel,
        "merchant_id": order.merchant_id,
        "business_type": order.business_type,
        "scene": order.scene,
        "subject": order.subject,
        "amount_fen": order.amount_fen,
        "status": order.status,
        "paid_fen": order.paid_fen,
        "refunded_fen": order.refunded_fen,
        "channel_trade_no": order.channel_trade_no,
        "paid_at": _time(order.paid_at),
        "his": {"state": order.his_state, "receipt_no": order.his_receipt_no, "error": order.his_error},
        "exception": order.exception,
        "exception_detail": order.exception_detail,
        "close_requested": order.close_requested,
        "last_error": order.last_error,
        "origin": order.origin,
        "terminal_id": order.terminal_id,
        "request_id": order.request_id,
        "expires_at": _time(order.expires_at),
        "created_at": _time(order.created_at),
        "updated_at": _time(order.updated_at),
    }
    if with_pay_params:
        view["pay_params"] = order.pay_params
    return view


def refund_view(refund: Any, order: Any) -> dict[str, Any]:
    return {
        "business_refund_no": refund.business_refund_no,
        "out_refund_no": refund.out_refund_no,
        "business_order_no": order.business_order_no,
        "out_trade_no": order.out_trade_no,
        "amount_fen": refund.amount_fen,
        "reason": refund.reason,
        "origin": refund.origin,
        "terminal_id": refund.terminal_id,
        "request_id": refund.request_id,
        "state": refund.state,
        "channel_refund_no": refund.channel_refund_no,
        "refunded_at": _time(refund.refunded_at),
        "his": {
            "refundable_fen": refund.his_refundable_fen,
            "refund_id": refund.his_refund_id,
            "receipt_no": refund.his_receipt_no,
        },
        "exception": refund.exception,
        "exception_detail": refund.exception_detail,
        "last_error": refund.last_error,
        "created_at": _time(refund.created_at),
        "updated_at": _time(refund.updated_at),
    }
