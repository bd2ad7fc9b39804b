"""The states an order and a refund move through, and what counts against a payment.

An order is never closed or failed here without the channel's word; a refund's money is reserved against the
payment from the moment it is checked until the channel says it failed.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from bridge import clock


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


COUNTED_REFUND = (RefundState.reserved, RefundState.refunding, RefundState.succeeded, RefundState.completed)
"""Refund states whose amount is taken from the payment (in flight or done)."""


class RefundOrigin(StrEnum):
    business = "business"
    policy = "policy"
    """Automatic refund of a payment the HIS refused (hospital policy ``auto_refund``)."""
    finance = "finance"
    """An over-collection found by reconciliation, refunded from the finance console after a second person's
    approval; the HIS never recorded the money, so neither HIS step runs."""


class RefundPolicy(StrEnum):
    auto_refund = "auto_refund"
    finance = "finance"


class ExceptionKind(StrEnum):
    """Things finance or an operator must see; recorded on the row and in the audit log."""

    paid_after_close = "paid_after_close"
    amount_mismatch = "amount_mismatch"
    his_rejected = "his_rejected"
    his_refund_not_paid = "his_refund_not_paid"
    """The HIS applied a refund that the channel refused or the gateway could not reserve."""
    writeback_failed = "writeback_failed"
    refund_abnormal = "refund_abnormal"


def utcnow() -> dt.datetime:
    return clock.utcnow()
