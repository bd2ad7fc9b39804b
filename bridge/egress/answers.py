"""What a terminal is told: the gateway's order and refund views reduced to the few states a counter acts on.

Payments: ``paid`` (print the receipt), ``waiting`` (a QR code is shown, the payer has not paid yet),
``pending`` (the outcome is not known yet: ask again), ``closed`` (nothing was taken and the trade is over),
``failed`` (refused; nothing was taken). Refunds: ``succeeded``, ``processing`` (the gateway has it, the channel
is paying), ``queued`` (kept by the agent until the cloud can be reached), ``pending`` (in doubt: ask again),
``rejected`` (over what the payment still covers, or not refundable), ``failed`` (the channel refused it).
"""

from __future__ import annotations

from typing import Any

ORDER_STATUS = {
    "paid": "paid",
    "completed": "paid",
    "his_rejected": "paid",
    "closed": "closed",
    "failed": "failed",
}
REFUND_STATE = {
    "his_applying": "processing",
    "reserved": "processing",
    "refunding": "processing",
    "succeeded": "succeeded",
    "completed": "succeeded",
    "rejected": "rejected",
    "failed": "failed",
}
FINAL = frozenset({"paid", "closed", "failed", "succeeded", "rejected"})
NO_MONEY = frozenset({"failed", "rejected"})
"""Final answers under which no money moved for this request: they do not count against a daily limit."""
WAITING = frozenset({"pending", "waiting", "queued", "processing"})


def may_change(answer: dict[str, Any]) -> bool:
    """Whether asking the gateway again can tell more: the payment or refund is not final, or it is paid and
    the HIS has not recorded it yet (the kiosk prints the HIS's receipt number)."""
    if answer.get("status") not in FINAL:
        return True
    return answer.get("status") == "paid" and (answer.get("his") or {}).get("state") in ("none", "pending")


def error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def _qr_code(pay_params: dict[str, Any] | None) -> str | None:
    if not pay_params:
        return None
    for name in ("code_url", "qr_code"):
        if isinstance(pay_params.get(name), str):
            return str(pay_params[name])
    return None


def payment(request_id: str, operation: str, order: dict[str, Any]) -> dict[str, Any]:
    raw = str(order.get("status", ""))
    qr = _qr_code(order.get("pay_params"))
    status = ORDER_STATUS.get(raw) or ("waiting" if qr else "pending")
    his = order.get("his") or {}
    answer: dict[str, Any] = {
        "request_id": request_id,
        "operation": operation,
        "status": status,
        "out_trade_no": order.get("out_trade_no"),
        "business_order_no": order.get("business_order_no"),
        "channel": order.get("channel"),
        "amount_fen": order.get("amount_fen"),
        "paid_fen": order.get("paid_fen"),
        "channel_trade_no": order.get("channel_trade_no"),
        "paid_at": order.get("paid_at"),
        "qr_code": qr if status == "waiting" else None,
        "his": {"state": his.get("state"), "receipt_no": his.get("receipt_no")},
        "error": None,
    }
    if status in ("failed", "closed") or (status == "pending" and order.get("last_error")):
        answer["error"] = error(_channel_code(order.get("last_error")), str(order.get("last_error") or raw))
    return answer


def refund(request_id: str, view: dict[str, Any]) -> dict[str, Any]:
    status = REFUND_STATE.get(str(view.get("state", "")), "pending")
    answer: dict[str, Any] = {
        "request_id": request_id,
        "operation": "refund",
        "status": status,
        "out_refund_no": view.get("out_refund_no"),
        "out_trade_no": view.get("out_trade_no"),
        "amount_fen": view.get("amount_fen"),
        "channel_refund_no": view.get("channel_refund_no"),
        "refunded_at": view.get("refunded_at"),
        "error": None,
    }
    if status in ("rejected", "failed"):
        answer["error"] = error(
            "refund_" + status, str(view.get("last_error") or view.get("exception_detail") or status)
        )
    return answer


def refused(request_id: str, operation: str, code: str, message: str) -> dict[str, Any]:
    """A request that ends without any money moving (never forwarded, or refused by the gateway)."""
    return {
        "request_id": request_id,
        "operation": operation,
        "status": "rejected" if operation == "refund" else "failed",
        "error": error(code, message),
    }


def waiting(request_id: str, operation: str, status: str, code: str, message: str) -> dict[str, Any]:
    """Not final yet: ``pending`` (in doubt) or ``queued`` (a refund waiting for the link)."""
    return {"request_id": request_id, "operation": operation, "status": status, "error": error(code, message)}


def _channel_code(last_error: Any) -> str:
    """The channel's own code where the gateway kept it (``AUTHCODEEXPIRE: …``), else a generic one."""
    text = str(last_error or "")
    head = text.split(":", 1)[0].strip()
    return head if head and head.replace("_", "").replace(".", "").isalnum() and head.upper() == head else "declined"
