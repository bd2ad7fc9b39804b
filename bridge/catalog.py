"""The operation catalog: the only calls the bridge will make into a HIS, the same for every hospital.

Each operation has a strict input and output schema. Money is an integer number of fen; strings are bounded;
unknown fields are refused so that a typo in the caller never silently drops data. Writes carry a caller-chosen
``request_id`` (the idempotency key) and a ``trade_no`` (the business key that orders calls for one trade).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Fen = Annotated[int, Field(ge=0, le=10_000_000_000, strict=True, description="amount in fen (1/100 yuan)")]
PositiveFen = Annotated[int, Field(gt=0, le=10_000_000_000, strict=True, description="amount in fen, > 0")]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")]
Text = Annotated[str, Field(max_length=200)]
_RFC3339_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _rfc3339_datetime(value: Any) -> Any:
    """Only what the contract publishes: a JSON string in RFC 3339 with its offset. Pydantic alone would also
    take Unix seconds, a bare date or a time without an offset, and the HIS would read those as local time."""
    if isinstance(value, dt.datetime):
        return value  # built in Python by our own callers (the gateway's probe); AwareDatetime checks the zone
    if not isinstance(value, str) or not _RFC3339_DATETIME.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time string with its offset, e.g. 2026-01-01T08:30:00+08:00")
    return value


def _iso_date(value: Any) -> Any:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date string YYYY-MM-DD")
    return value


DateTime = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_datetime),
    Field(json_schema_extra={"pattern": f"^{_RFC3339_DATETIME.pattern}$"}),
]
"""An instant in an input: RFC 3339 with an offset (``Z`` or ``±hh:mm``), at most microseconds."""
Date = Annotated[dt.date, BeforeValidator(_iso_date), Field(json_schema_extra={"pattern": f"^{_ISO_DATE.pattern}$"})]
RequestId = Annotated[
    str,
    Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="caller-chosen idempotency key"),
]


class Channel(StrEnum):
    wechat = "wechat"
    alipay = "alipay"
    unionpay = "unionpay"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class WriteInput(Strict):
    request_id: RequestId
    trade_no: Code = Field(description="platform trade number; calls for one trade run in arrival order")


class PaidWrite(WriteInput):
    patient_id: Code
    amount_fen: PositiveFen
    channel: Channel
    channel_trade_no: Code
    paid_at: DateTime


# --- reads -------------------------------------------------------------------------------------------------


class PatientQueryIn(Strict):
    card_no: Code | None = None
    id_card_no: Annotated[str, Field(pattern=r"^[0-9]{17}[0-9Xx]$")] | None = None
    phone: Annotated[str, Field(pattern=r"^\+?[0-9]{6,20}$")] | None = None

    @model_validator(mode="after")
    def _one_key(self) -> PatientQueryIn:
        if not (self.card_no or self.id_card_no or self.phone):
            raise ValueError("give at least one of card_no, id_card_no, phone")
        return self


class PatientQueryOut(Strict):
    found: bool
    patient_id: Code | None = None
    name: Text | None = None
    gender: Literal["M", "F", "U"] | None = None
    birth_date: dt.date | None = None
    card_no: Code | None = None
    phone: Annotated[str, Field(max_length=20)] | None = None


class BillsUnpaidIn(Strict):
    patient_id: Code


class Bill(Strict):
    bill_no: Code
    dept_name: Text | None = None
    amount_fen: Fen
    created_at: dt.datetime | None = None


class BillsUnpaidOut(Strict):
    bills: Annotated[list[Bill], Field(max_length=500)]


WriteOperationName = Literal[
    "registration.lock",
    "registration.unlock",
    "registration.commit",
    "charge.commit",
    "prepay.commit",
    "refund.apply",
    "refund.writeback",
    "refund.cancel",
]


class TradeCheckIn(Strict):
    trade_no: Code
    operation: WriteOperationName = Field(description="the write operation whose effect is being checked")
    refund_no: Code | None = None


class TradeCheckOut(Strict):
    found: bool
    receipt_no: Code | None = None
    amount_fen: Fen | None = None
    status: Annotated[str, Field(max_length=32)] | None = None


class ReconFetchIn(Strict):
    date: Date
    page: Annotated[int, Field(ge=1, le=1_000_000, strict=True)] = 1
    page_size: Annotated[int, Field(ge=1, le=1000, strict=True)] = 500


class ReconRecord(Strict):
    """One record of the HIS's books: a payment by the time the HIS recorded it, a refund by the time the HIS
    applied (booked) it, written back or not; a cancelled refund application is not listed."""

    trade_no: Code
    kind: Literal["registration", "charge", "prepay", "refund"]
    receipt_no: Code | None = None
    amount_fen: Fen
    channel: Channel | None = None
    channel_trade_no: Code | None = None
    refund_no: Code | None = None
    time: dt.datetime
    refund_state: Literal["applied", "written_back"] | None = Field(
        None, description="refunds: applied (booked, no money back yet) or written_back (the channel paid it)"
    )
    channel_refund_no: Code | None = Field(None, description="refunds written back: the channel's refund serial")
    written_back_at: dt.datetime | None = Field(None, description="refunds written back: when the HIS recorded it")

    @model_validator(mode="after")
    def _refund_fields_on_refunds_only(self) -> ReconRecord:
        if self.kind == "refund" or (
            self.refund_state is None and self.channel_refund_no is None and self.written_back_at is None
        ):
            return self
        extra = [f for f in ("refund_state", "channel_refund_no", "written_back_at") if getattr(self, f) is not None]
        raise ValueError(f"{', '.join(extra)} belong to refund records only (this record is a {self.kind})")


class ReconFetchOut(Strict):
    records: Annotated[list[ReconRecord], Field(max_length=1000)]
    total: Annotated[int, Field(ge=0)]
    has_more: bool


# --- writes ------------------------------------------------------------------------------------------------


class RegistrationLockIn(WriteInput):
    patient_id: Code
    schedule_id: Code


class RegistrationLockOut(Strict):
    lock_id: Code
    amount_fen: Fen
    expires_at: dt.datetime | None = None


class RegistrationUnlockIn(WriteInput):
    lock_id: Code


class RegistrationUnlockOut(Strict):
    unlocked: bool


class RegistrationCommitIn(PaidWrite):
    schedule_id: Code
    lock_id: Code | None = None


class ReceiptOut(Strict):
    receipt_no: Code


class RegistrationCommitOut(ReceiptOut):
    visit_no: Code | None = None


class ChargeCommitIn(PaidWrite):
    bill_nos: Annotated[list[Code], Field(min_length=1, max_length=200)]


class PrepayCommitIn(PaidWrite):
    inpatient_no: Code


class PrepayCommitOut(ReceiptOut):
    balance_fen: Fen | None = None


class RefundApplyIn(WriteInput):
    refund_no: Code
    amount_fen: PositiveFen
    reason: Text | None = None


class RefundApplyOut(Strict):
    refundable_fen: Fen
    his_refund_id: Code | None = None


class RefundWritebackIn(WriteInput):
    refund_no: Code
    amount_fen: PositiveFen
    channel_refund_no: Code
    refunded_at: DateTime


class RefundCancelIn(WriteInput):
    refund_no: Code = Field(description="the refund application to withdraw (refund.apply's refund_no)")
    reason: Text | None = None


class RefundCancelOut(Strict):
    cancelled: Literal[True] = Field(description="always true: a HIS that will not cancel answers an error")
    receipt_no: Code | None = Field(None, description="the HIS's voucher for the cancellation, the same on a repeat")
    amount_fen: Fen | None = Field(None, description="the amount of the withdrawn refund, as the HIS booked it")


# --- the catalog -------------------------------------------------------------------------------------------


def _receipt(check: TradeCheckOut) -> dict[str, Any]:
    return {"receipt_no": check.receipt_no}


def _refund_apply(check: TradeCheckOut) -> dict[str, Any]:
    return {"refundable_fen": check.amount_fen or 0, "his_refund_id": check.receipt_no}


def _refund_cancel(check: TradeCheckOut) -> dict[str, Any]:
    return {"cancelled": True, "receipt_no": check.receipt_no, "amount_fen": check.amount_fen}


@dataclass(frozen=True)
class Operation:
    name: str
    summary: str
    input: type[Strict]
    output: type[Strict]
    write: bool
    from_check: Callable[[TradeCheckOut], dict[str, Any]] | None = None
    """How a found ``trade.check`` answer stands in for this write's result when the write was in doubt."""

    def check_input(self, params: Strict) -> TradeCheckIn:
        return TradeCheckIn(
            trade_no=params.trade_no,  # type: ignore[attr-defined]
            operation=self.name,
            refund_no=getattr(params, "refund_no", None),
        )


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        Operation(
            "patient.query",
            "Find a patient by card, ID card or phone.",
            PatientQueryIn,
            PatientQueryOut,
            False,
        ),
        Operation("bills.unpaid", "A patient's unpaid outpatient bills.", BillsUnpaidIn, BillsUnpaidOut, False),
        Operation(
            "trade.check",
            "Did the HIS record this trade's write? Its receipt number or not found.",
            TradeCheckIn,
            TradeCheckOut,
            False,
        ),
        Operation(
            "recon.fetch",
            "One page of the HIS's records of one day, for reconciliation.",
            ReconFetchIn,
            ReconFetchOut,
            False,
        ),
        Operation(
            "registration.lock",
            "Hold a registration slot while the patient pays.",
            RegistrationLockIn,
            RegistrationLockOut,
            True,
            lambda c: {"lock_id": c.receipt_no, "amount_fen": c.amount_fen or 0},
        ),
        Operation(
            "registration.unlock",
            "Release a held slot (payment abandoned).",
            RegistrationUnlockIn,
            RegistrationUnlockOut,
            True,
            lambda c: {"unlocked": True},
        ),
        Operation(
            "registration.commit",
            "Record a paid registration.",
            RegistrationCommitIn,
            RegistrationCommitOut,
            True,
            _receipt,
        ),
        Operation("charge.commit", "Record paid outpatient bills.", ChargeCommitIn, ReceiptOut, True, _receipt),
        Operation(
            "prepay.commit",
            "Record a paid inpatient deposit.",
            PrepayCommitIn,
            PrepayCommitOut,
            True,
            _receipt,
        ),
        Operation(
            "refund.apply",
            "Ask the HIS to cancel; returns the refundable amount.",
            RefundApplyIn,
            RefundApplyOut,
            True,
            _refund_apply,
        ),
        Operation(
            "refund.writeback",
            "Record the channel's refund serial in the HIS.",
            RefundWritebackIn,
            ReceiptOut,
            True,
            _receipt,
        ),
        Operation(
            "refund.cancel",
            "Withdraw a refund application never paid out; the HIS restores what refund.apply took.",
            RefundCancelIn,
            RefundCancelOut,
            True,
            _refund_cancel,
        ),
    ]
}

WRITE_OPERATIONS = frozenset(name for name, op in OPERATIONS.items() if op.write)
assert set(WriteOperationName.__args__) == WRITE_OPERATIONS, "trade.check must name exactly the writes"
READ_OPERATIONS = frozenset(name for name, op in OPERATIONS.items() if not op.write)


def get(name: str) -> Operation | None:
    return OPERATIONS.get(name)
