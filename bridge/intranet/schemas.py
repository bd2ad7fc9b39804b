"""What a terminal may send: strict bodies per operation, money in integer fen, unknown fields refused.

The HIS references a payment's commit will need (schedule, bills, inpatient number) are checked here, when the
kiosk asks, not after the patient has paid.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from bridge.catalog import Code, PositiveFen, Strict
from bridge.intranet.config import TerminalOperation

TerminalRequestId = Annotated[
    str,
    Field(
        min_length=8,
        max_length=40,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="the terminal's own idempotency key: the same id with the same body answers the stored outcome",
    ),
]
AuthCode = Annotated[str, Field(pattern=r"^[0-9]{10,32}$", description="the payer's 付款码 as the scanner read it")]
BusinessType = Literal["registration", "charge", "prepay"]
Channel = Literal["wechat", "alipay"]

REFERENCE = {"registration": "schedule_id", "charge": "bill_nos", "prepay": "inpatient_no"}


def channel_of(auth_code: str) -> Channel | None:
    """Which wallet a 付款码 belongs to, by its published prefixes: WeChat 18 digits from 10–15, Alipay 16–24
    digits from 25–30."""
    head = int(auth_code[:2])
    if len(auth_code) == 18 and 10 <= head <= 15:
        return "wechat"
    if 16 <= len(auth_code) <= 24 and 25 <= head <= 30:
        return "alipay"
    return None


class _Payment(Strict):
    request_id: TerminalRequestId
    business_type: BusinessType
    amount_fen: PositiveFen
    subject: Annotated[str, Field(min_length=1, max_length=128)]
    patient_id: Code
    schedule_id: Code | None = None
    lock_id: Code | None = None
    bill_nos: Annotated[list[Code], Field(min_length=1, max_length=200)] | None = None
    inpatient_no: Code | None = None

    @model_validator(mode="after")
    def _his_reference(self) -> _Payment:
        needed = REFERENCE[self.business_type]
        if getattr(self, needed) is None:
            raise ValueError(f"a {self.business_type} payment needs {needed}")
        return self


class CodepayIn(_Payment):
    """Pay by the payer's 付款码, read by the terminal's scanner."""

    auth_code: AuthCode
    channel: Channel | None = Field(None, description="inferred from the code's prefix when absent")

    @model_validator(mode="after")
    def _channel(self) -> CodepayIn:
        inferred = channel_of(self.auth_code)
        if self.channel is None:
            if inferred is None:
                raise ValueError("auth_code is neither a WeChat nor an Alipay 付款码; name the channel")
            self.channel = inferred
        return self


class QrIn(_Payment):
    """Pay by a QR code shown on the terminal's screen."""

    channel: Channel
    expire_s: Annotated[int, Field(ge=60, le=7200)] | None = None


class PaymentRef(Strict):
    request_id: TerminalRequestId = Field(description="the request id of the payment")


class RefundIn(Strict):
    """A refund the HIS has already made at the window (窗口退费): the money goes back by the original route."""

    request_id: TerminalRequestId
    out_trade_no: Code = Field(description="the payment's trade number, as the HIS recorded it")
    amount_fen: PositiveFen
    his_refund_no: Code = Field(description="the HIS's own number for this refund, which reconciliation matches")
    reason: Annotated[str, Field(max_length=200)] | None = None


class RefundRef(Strict):
    request_id: TerminalRequestId = Field(description="the request id of the refund")


class TransactionsIn(Strict):
    date: dt.date = Field(description="the day, Asia/Shanghai")


INPUT: dict[TerminalOperation, type[BaseModel]] = {
    TerminalOperation.pay_codepay: CodepayIn,
    TerminalOperation.pay_qr: QrIn,
    TerminalOperation.pay_query: PaymentRef,
    TerminalOperation.pay_close: PaymentRef,
    TerminalOperation.refund: RefundIn,
    TerminalOperation.refund_query: RefundRef,
    TerminalOperation.transactions: TransactionsIn,
}
SUMMARY = {
    TerminalOperation.pay_codepay: "Pay by the payer's 付款码: a definite outcome, or pending within the deadline.",
    TerminalOperation.pay_qr: "Open a payment paid by a QR code shown on the terminal's screen.",
    TerminalOperation.pay_query: "The current state of one of this terminal's payments.",
    TerminalOperation.pay_close: "Close a QR payment nobody paid.",
    TerminalOperation.refund: "Refund (part of) a payment the HIS has already refunded at the window.",
    TerminalOperation.refund_query: "The current state of one of this terminal's refunds.",
    TerminalOperation.transactions: "This terminal's payments and refunds of one day, for the end-of-shift count.",
}
