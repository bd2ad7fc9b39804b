"""Request bodies of the business API. Strict like the bridge's catalog: integer fen only, bounded strings,
unknown fields refused, and the HIS references a commit will need checked when the order is created — not
after the patient has paid."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge import catalog, clock
from gateway.channels.base import Scene
from gateway.model import COMMIT_OPERATION, BusinessType, OrderOrigin

Code = catalog.Code
PositiveFen = catalog.PositiveFen
TerminalId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateOrder(_Strict):
    """A payment to take. Besides the schema: a registration needs ``schedule_id``, a charge ``bill_nos``, a
    deposit ``inpatient_no`` (checked against the HIS commit's schema now, not after payment); a ``codepay``
    order needs the payer's ``auth_code``; ``notify_url`` must name one of the app's notify hosts."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "business_order_no": "KIOSK1-20260105-000123",
                    "business_type": "charge",
                    "scene": "native",
                    "channel": "wechat",
                    "amount_fen": 12550,
                    "subject": "门诊缴费",
                    "patient_id": "P0001",
                    "bill_nos": ["B0001", "B0002"],
                    "notify_url": "https://his-apps.example-hospital.cn/pay/notify",
                }
            ]
        },
    )

    business_order_no: Code
    business_type: BusinessType
    scene: Scene
    channel: Literal["wechat", "alipay", "unionpay"]
    amount_fen: PositiveFen
    subject: Annotated[str, Field(min_length=1, max_length=128)]
    patient_id: Code
    schedule_id: Code | None = None
    lock_id: Code | None = None
    bill_nos: Annotated[list[Code], Field(min_length=1, max_length=200)] | None = None
    inpatient_no: Code | None = None
    payer_id: Annotated[str, Field(max_length=128)] | None = None
    auth_code: Annotated[str, Field(pattern=r"^[0-9]{10,32}$")] | None = None
    client_ip: Annotated[str, Field(max_length=64)] | None = None
    notify_url: Annotated[str, Field(pattern=r"^https?://", max_length=500)] | None = None
    expire_s: Annotated[int, Field(ge=60, le=7 * 86400)] | None = None
    request_id: Code | None = None
    """The caller's own request id: ``GET /v1/requests/{request_id}`` finds the order by it."""
    terminal_id: TerminalId | None = None
    """The kiosk or window that took the payment (agent apps only)."""
    origin: OrderOrigin = OrderOrigin.app

    @model_validator(mode="after")
    def _his_references(self) -> CreateOrder:
        needed = {
            BusinessType.registration: "schedule_id",
            BusinessType.charge: "bill_nos",
            BusinessType.prepay: "inpatient_no",
        }[self.business_type]
        if getattr(self, needed) is None:
            raise ValueError(f"a {self.business_type.value} order needs {needed}")
        if self.scene == Scene.codepay and not self.auth_code:
            raise ValueError("a codepay order needs the payer's auth_code")
        return self

    def his_params(self) -> dict[str, Any]:
        """The HIS references the commit will carry, checked now against the catalog's schema."""
        fields = {
            BusinessType.registration: ("patient_id", "schedule_id", "lock_id"),
            BusinessType.charge: ("patient_id", "bill_nos"),
            BusinessType.prepay: ("patient_id", "inpatient_no"),
        }[self.business_type]
        params = {f: getattr(self, f) for f in fields if getattr(self, f) is not None}
        probe = {
            "request_id": "probe-0000",
            "trade_no": "probe",
            "amount_fen": self.amount_fen,
            "channel": self.channel,
            "channel_trade_no": "probe",
            "paid_at": clock.utcnow(),
            **params,
        }
        op = catalog.get(COMMIT_OPERATION[self.business_type])
        assert op is not None
        try:
            op.input.model_validate(probe)
        except ValidationError as e:
            raise ValueError(f"HIS references do not fit {op.name}: {e}") from None
        return params


class RequestRefund(_Strict):
    """A partial or full refund of a paid order; several per order, never more in all than was paid."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"business_refund_no": "RF-20260105-000045", "amount_fen": 3000, "reason": "医保结算退差额"}]
        },
    )

    business_refund_no: Code
    amount_fen: PositiveFen
    reason: Annotated[str, Field(max_length=200)] | None = None
    request_id: Code | None = None


class WindowRefund(_Strict):
    """A refund the HIS has already made at its cashier window (窗口退费), forwarded by the hospital's agent."""

    business_refund_no: Code
    out_trade_no: Code
    """The payment, by the trade number the HIS recorded it under."""
    amount_fen: PositiveFen
    his_refund_no: Code
    """The HIS's own number for the refund: reconciliation matches the HIS's record by it."""
    terminal_id: TerminalId
    request_id: Code | None = None
    reason: Annotated[str, Field(max_length=200)] | None = None
