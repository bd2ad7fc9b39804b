"""What the business API answers, as models: the OpenAPI document publishes them (``gateway.api.openapi``), a
generated client can read them, and the fuzzing tests hold every real answer to them. The shapes are the ones
``gateway.representations`` builds, field for field."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.channels.base import Scene
from gateway.model import BusinessType, HisState, OrderOrigin, OrderStatus, RefundOrigin, RefundState

Fen = Annotated[int, Field(ge=0, description="amount in fen (1/100 yuan)")]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderHis(_Answer):
    """Where the HIS stands on this payment."""

    state: HisState
    receipt_no: str | None = Field(description="the HIS's receipt once the commit is done")
    error: dict[str, Any] | None = Field(description="the bridge's error when the HIS refused or failed")


class OrderException(_Answer):
    """An exception finance has not closed, about the payment or one of its refunds."""

    source: str = Field(description="recon (found by reconciliation) or gateway (raised by the payment process)")
    entry_key: str = Field(description="pay:<out_trade_no> or refund:<out_refund_no>")
    class_: str = Field(alias="class", description="his_stuck, his_refund_not_paid, over_collection, …")
    status: str = Field(description="open, proposed or approved")
    detail: str | None
    day: dt.date


class Order(_Answer):
    business_order_no: str
    out_trade_no: str = Field(description="our trade number at the channel")
    hospital_id: str
    channel: str
    merchant_id: str
    business_type: BusinessType
    scene: Scene
    subject: str
    amount_fen: Fen
    status: OrderStatus
    paid_fen: Fen | None
    refunded_fen: Fen
    channel_trade_no: str | None
    paid_at: dt.datetime | None
    his: OrderHis
    exception: str | None = Field(description="what finance must look at: his_rejected, paid_after_close, …")
    exception_detail: str | None
    close_requested: bool
    last_error: str | None = Field(description="the last failure on the way (a channel or bridge error)")
    origin: OrderOrigin = Field(description="who started it: an app, a kiosk (terminal) or a cashier window")
    terminal_id: str | None = Field(description="the kiosk or window, for payments that came through the agent")
    request_id: str | None = Field(description="the caller's own request id, when it gave one")
    expires_at: dt.datetime | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    pay_params: dict[str, Any] | None = Field(
        default=None, description="what the front end needs to pay (code_url, JSAPI parameters, …); single orders"
    )
    exceptions: list[OrderException] | None = Field(
        default=None, description="with exceptions=1 only: the order's exceptions finance has not closed"
    )


class RefundHis(_Answer):
    refundable_fen: Fen | None
    refund_id: str | None
    receipt_no: str | None


class Refund(_Answer):
    business_refund_no: str | None = Field(description="null for refunds the gateway started (policy, finance)")
    out_refund_no: str
    business_order_no: str
    out_trade_no: str
    amount_fen: Fen
    reason: str | None
    origin: RefundOrigin
    terminal_id: str | None = Field(description="the window that started it, for window refunds")
    request_id: str | None = Field(description="the caller's own request id, when it gave one")
    state: RefundState
    channel_refund_no: str | None
    refunded_at: dt.datetime | None
    his: RefundHis
    exception: str | None
    exception_detail: str | None
    last_error: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None


class OrderAnswer(_Answer):
    order: Order


class OrderWithRefunds(_Answer):
    order: Order
    refunds: list[Refund]


class ByRequestId(_Answer):
    """What the caller created under its own request id: an order with its refunds, or a refund."""

    order: Order | None = None
    refunds: list[Refund] | None = None
    refund: Refund | None = None


class ChannelTotals(_Answer):
    paid_count: int
    paid_fen: Fen
    refund_count: int
    refund_fen: Fen


class DayTotals(_Answer):
    paid_count: int
    paid_fen: Fen
    refund_count: int
    refund_fen: Fen
    net_fen: int
    by_channel: dict[str, ChannelTotals]


class Transactions(_Answer):
    """A terminal's (or the calling app's) payments and refunds of one day, for the end-of-shift count (日结)."""

    date: dt.date
    terminal_id: str | None
    orders: list[Order]
    refunds: list[Refund]
    totals: DayTotals
    truncated: bool = Field(description="more than 5000 orders or refunds: the lists stop there, the totals too")


class OrderPage(_Answer):
    orders: list[Order] = Field(description="newest first; without pay_params")
    page: Annotated[int, Field(ge=1)]
    page_size: Annotated[int, Field(ge=1)]
    total: Annotated[int, Field(ge=0)]


class RefundAnswer(_Answer):
    refund: Refund


class Event(_Answer):
    id: int = Field(description="treat events idempotently by id")
    type: str = Field(description="order.completed, order.his_rejected, …, refund.failed")
    created_at: dt.datetime
    state: str = Field(description="pending, delivered or dead (push delivery)")
    attempts: Annotated[int, Field(ge=0)]
    data: dict[str, Any] = Field(description="the order or refund, as in the answers above")


class EventPage(_Answer):
    events: list[Event]
    next_after: int = Field(description="pass as ?after= for the next page")


class ErrorDetail(_Answer):
    code: str = Field(description="stable and machine-readable: branch on it")
    message: str


class Error(BaseModel):
    """A refusal or an error. Some carry more: ``details`` (the fields of a schema violation) or ``order`` (the
    order as it stands, with ``channel_unavailable`` and ``order_paid``)."""

    model_config = ConfigDict(extra="allow")

    error: ErrorDetail
    details: list[dict[str, Any]] | None = None
    order: Order | None = None
