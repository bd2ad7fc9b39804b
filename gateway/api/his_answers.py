"""What the business API answers about the HIS (``gateway.api.his``), as models the OpenAPI document publishes
and the fuzzing tests hold every answer to. The shapes are the ones ``gateway.api.his`` builds."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge import catalog
from gateway.store.platform_tables import LOCK_STATES

Fen = Annotated[int, Field(ge=0, description="amount in fen (1/100 yuan)")]
Source = Literal["his", "cache"]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Patient(_Answer):
    patient_id: str
    name: str | None = None
    gender: Literal["M", "F", "U"] | None = None
    birth_date: dt.date | None = None
    card_no: str | None = None
    phone: str | None = None


class PatientAnswer(_Answer):
    found: bool
    patient: Patient | None = Field(description="null when the HIS has no such patient")
    source: Source = Field(description="his: asked now; cache: an answer the HIS gave within the hospital's limit")
    age_s: Annotated[float, Field(ge=0, description="how old the answer is (0 when asked now)")]


class BillsAnswer(_Answer):
    patient_id: str
    bills: list[catalog.Bill]
    source: Source
    age_s: Annotated[float, Field(ge=0)]


class Lock(_Answer):
    lock_no: str = Field(description="the app's own number for this hold")
    state: Literal[LOCK_STATES] = Field(  # type: ignore[valid-type]
        description="locking (ask again), locked (the HIS holds the slot), failed (the HIS would not), used (its "
        "order paid), releasing, released"
    )
    lock_id: str | None = Field(description="the HIS's lock id: give it as the registration order's lock_id")
    amount_fen: Fen | None = Field(description="the registration fee the HIS asks for this slot")
    expires_at: dt.datetime | None = Field(description="when the HIS lets the slot go by itself")
    patient_id: str
    schedule_id: str
    order_business_no: str | None = Field(description="the one order that may pay for this slot")
    release_reason: str | None
    his_error: dict[str, Any] | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None


class LockAnswer(_Answer):
    lock: Lock
