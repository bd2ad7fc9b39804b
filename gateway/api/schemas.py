"""Request bodies of the business API. Strict like the bridge's catalog: integer fen only, bounded strings,
unknown fields refused, and the HIS references a commit will need checked when the order is created — not
after the patient has paid."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge import catalog, clock
from gateway.channels.base import Scene
from gateway.model import COMMIT_OPERATION, BusinessType

Code = catalog.Code
PositiveFen = catalog.PositiveFen


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateOrder(_Strict):
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
    business_refund_no: Code
    amount_fen: PositiveFen
    reason: Annotated[str, Field(max_length=200)] | None = None
