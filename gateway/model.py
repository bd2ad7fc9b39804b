"""The states an order and a refund move through, and what counts against a payment.

An order is never closed or failed here without the channel's word; a refund's money is reserved against the
payment from the moment it is checked until the channel says it failed.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from zoneinfo import ZoneInfo

from bridge import clock

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
"""The hospitals' time zone: business days, reconciliation days and statements are in it."""


class OrderStatus(StrEnum):
    created = "created"
    """Stored; the channel trade is not (yet) known to exist."""
    paying = "paying"
    """The channel trade is open, waiting for the payer."""
    paid = "paid"
    """The channel took the money; the HIS commit is under way."""
    completed = "completed"
    """Paid and recorded by the HIS."""
    his_rejected = "his_rejected"
    """Paid, but the HIS refused it for good: refunded by policy or left for finance."""
    closed = "closed"
    """The channel confirmed no payment (closed, expired, revoked)."""
    failed = "failed"
    """The channel refused the trade outright (bad parameters, payment error)."""


OPEN_ORDER = (OrderStatus.created, OrderStatus.paying)
PAID_ORDER = (OrderStatus.paid, OrderStatus.completed, OrderStatus.his_rejected)


class HisState(StrEnum):
    none = "none"
    pending = "pending"
    done = "done"
    rejected = "rejected"
    held = "held"
    """Paid money the HIS must not be told about (a payment after a close): finance decides."""
    caller = "caller"
    """The caller tells the HIS itself (a kiosk that talks to the HIS, the HIS's own window): no commit is sent."""


class HisCommit(StrEnum):
    """Who tells the HIS after a payment, per hospital and per app."""

    gateway = "gateway"
    """The gateway sends the commit (registration/charge/prepay) through the hospital's bridge."""
    caller = "caller"
    """The calling system records the payment in the HIS itself, under the order's ``out_trade_no``."""


class OrderOrigin(StrEnum):
    """Who started a payment."""

    app = "app"
    """A hospital app on the internet (mini program, app, internet hospital) through the business API."""
    terminal = "terminal"
    """A kiosk or another intranet system, through the hospital's agent."""
    window = "window"
    """A cashier window, through the hospital's agent."""


class BusinessType(StrEnum):
    registration = "registration"
    charge = "charge"
    prepay = "prepay"


COMMIT_OPERATION = {
    BusinessType.registration: "registration.commit",
    BusinessType.charge: "charge.commit",
    BusinessType.prepay: "prepay.commit",
}


class RefundState(StrEnum):
    his_applying = "his_applying"
    """Waiting for the HIS's ``refund.apply``; nothing reserved yet."""
    reserved = "reserved"
    """Checked and reserved against the payment; the channel refund is next."""
    refunding = "refunding"
    """The channel accepted the refund and is processing it (or its outcome is in doubt)."""
    succeeded = "succeeded"
    """The money went back; the HIS write-back is under way."""
    completed = "completed"
    """Money back and written back to the HIS (or no HIS record was needed)."""
    rejected = "rejected"
    """Refused before any money moved (HIS refused, or over the refundable amount)."""
    failed = "failed"
    """The channel refused or closed the refund; the reservation is released."""
    his_cancelling = "his_cancelling"
    """Finance decided to undo the HIS's application of a refund that was never paid (``refund.cancel``)."""
    cancelled = "cancelled"
    """The HIS undid its application; no money moved."""


COUNTED_REFUND = (RefundState.reserved, RefundState.refunding, RefundState.succeeded, RefundState.completed)
"""Refund states whose amount is taken from the payment (in flight or done)."""


class RefundOrigin(StrEnum):
    business = "business"
    policy = "policy"
    """Automatic refund of a payment the HIS refused (hospital policy ``auto_refund``)."""
    finance = "finance"
    """An over-collection found by reconciliation, refunded from the finance console after a second person's
    approval; the HIS never recorded the money, so neither HIS step runs."""
    window = "window"
    """Started by the HIS at its cashier window (窗口退费), through the hospital's agent: the HIS has refunded
    already, so ``refund.apply`` and ``refund.writeback`` are not sent; still capped by paid − refunded."""


class RefundPolicy(StrEnum):
    auto_refund = "auto_refund"
    finance = "finance"


class ExceptionKind(StrEnum):
    """Things finance or an operator must see about one order or refund: recorded on the row, in the audit log,
    and as an exception in finance's list (source ``gateway``), where they are worked like reconciliation's."""

    paid_after_close = "paid_after_close"
    amount_mismatch = "amount_mismatch"
    """The channel reports a different amount than the order (paid), or than the refund (refund callback)."""
    his_rejected = "his_rejected"
    his_refund_not_paid = "his_refund_not_paid"
    """The HIS applied a refund that the channel refused or the gateway could not reserve."""
    writeback_failed = "writeback_failed"
    refund_abnormal = "refund_abnormal"
    his_stuck = "his_stuck"
    """A HIS step (commit, refund application, write-back, cancel) has waited longer than ``his_stuck_after_s``;
    the gateway keeps trying, finance may re-drive it."""
    refund_late_success = "refund_late_success"
    """The channel paid a refund after it had been marked failed."""
    his_receipt_on_held = "his_receipt_on_held"
    """The HIS booked a payment the gateway holds back from it (refused, held, or returned by finance)."""


HIS_CLEAR = (HisState.rejected, HisState.held)
"""HIS states in which money may go back without the HIS: the HIS refused the payment, or was never told of it
and never will be. A payment whose HIS step is none, pending or done is refunded only through the HIS."""
HIS_SENDABLE = (HisState.none, HisState.pending)
"""HIS states in which the commit may (still) be sent."""


def utcnow() -> dt.datetime:
    return clock.utcnow()


def local_day(t: dt.datetime | None = None) -> dt.date:
    """The business day (Asia/Shanghai) of an aware time, now by default."""
    return (t or utcnow()).astimezone(LOCAL_TZ).date()
