"""One interface for every payment channel (WeChat Pay v3, Alipay, UnionPay).

The gateway's sagas speak only this. A channel never decides a trade's fate on its own: ``query`` is how the
gateway asks for the channel's word before closing or failing anything, and every answer carries the
channel's own state so that a late success can be seen for what it is.
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.channels.key_info import KeyInfo


class Scene(StrEnum):
    """How the payer pays. Each channel maps these to its own products (WeChat JSAPI/Native/H5/付款码; Alipay
    app, wap, precreate QR, trade.pay)."""

    jsapi = "jsapi"
    native = "native"
    h5 = "h5"
    app = "app"
    codepay = "codepay"


class TradeState(StrEnum):
    notpay = "NOTPAY"
    userpaying = "USERPAYING"
    success = "SUCCESS"
    closed = "CLOSED"
    refund = "REFUND"
    """Paid, and at least one refund exists (WeChat's trade_state); still a success for the money taken."""
    revoked = "REVOKED"
    payerror = "PAYERROR"
    not_found = "NOT_FOUND"


class RefundState(StrEnum):
    processing = "PROCESSING"
    success = "SUCCESS"
    closed = "CLOSED"
    abnormal = "ABNORMAL"


@dataclass(frozen=True)
class PaymentRequest:
    out_trade_no: str
    amount_fen: int
    description: str
    scene: Scene
    notify_url: str
    expires_at: dt.datetime | None = None
    payer_id: str | None = None
    """WeChat openid (JSAPI) or Alipay buyer id, when the scene needs one."""
    auth_code: str | None = None
    """The payer's barcode (codepay)."""
    client_ip: str | None = None
    attach: str | None = None


@dataclass(frozen=True)
class PaymentStarted:
    out_trade_no: str
    state: TradeState
    """NOTPAY for the redirect/QR scenes; codepay may already be SUCCESS or USERPAYING."""
    pay_params: dict[str, Any] = field(default_factory=dict)
    """What the front end needs: JSAPI sign package, code_url, h5_url, Alipay page/app string."""
    channel_trade_no: str | None = None


@dataclass(frozen=True)
class TradeStatus:
    out_trade_no: str
    state: TradeState
    channel_trade_no: str | None = None
    amount_fen: int | None = None
    paid_at: dt.datetime | None = None
    payer_id: str | None = None
    merchant_id: str | None = None


@dataclass(frozen=True)
class RefundRequest:
    out_trade_no: str
    out_refund_no: str
    """The same number on every retry: the channel deduplicates on it."""
    refund_fen: int
    total_fen: int
    reason: str | None = None
    notify_url: str | None = None


@dataclass(frozen=True)
class RefundStatus:
    out_trade_no: str
    out_refund_no: str
    state: RefundState
    refund_fen: int
    channel_refund_no: str | None = None
    succeeded_at: dt.datetime | None = None
    cumulative: bool = False
    """``refund_fen`` is everything refunded on the trade so far, not this refund alone (Alipay's notification
    reports ``refund_fee`` so); the gateway then checks it covers this refund instead of equalling it."""


@dataclass(frozen=True)
class Notification:
    """A verified, decrypted callback."""

    kind: str
    """``payment`` or ``refund``."""
    notification_id: str
    trade: TradeStatus | None = None
    refund: RefundStatus | None = None


@dataclass(frozen=True)
class Acknowledgement:
    status: int
    headers: dict[str, str]
    body: bytes


class ChannelError(Exception):
    """A channel call failed. ``retryable``: nothing happened, ask again; otherwise the outcome is the
    channel's ``code`` (e.g. ORDERPAID, NOT_ENOUGH). ``in_doubt``: the request may have taken effect — query
    before anything else."""

    def __init__(self, code: str, message: str, *, retryable: bool = False, in_doubt: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.in_doubt = in_doubt


class NotificationRejected(Exception):
    """A callback that must not be believed. ``reason`` is stable: ``unknown_serial``, ``bad_signature``,
    ``stale``, ``bad_tag`` (AES-GCM), ``wrong_merchant``, ``malformed``, ``replayed``, ``expired_certificate``
    (signed with a key past its expiry), ``untrusted_certificate`` (UnionPay: a certificate outside the chain)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Channel(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    async def create(self, request: PaymentRequest) -> PaymentStarted: ...

    @abc.abstractmethod
    async def query(self, out_trade_no: str) -> TradeStatus: ...

    @abc.abstractmethod
    async def close(self, out_trade_no: str) -> None:
        """Close an unpaid trade. Raises ChannelError(ORDERPAID…) if it was paid meanwhile."""

    @abc.abstractmethod
    async def reverse(self, out_trade_no: str) -> None:
        """Cancel a codepay trade whatever its state (refunds it if the payer had paid)."""

    @abc.abstractmethod
    async def refund(self, request: RefundRequest) -> RefundStatus: ...

    @abc.abstractmethod
    async def query_refund(self, out_trade_no: str, out_refund_no: str) -> RefundStatus: ...

    @abc.abstractmethod
    def verify_notification(self, headers: dict[str, str], body: bytes, *, now: float | None = None) -> Notification:
        """Verify signature, timestamp window, merchant; decrypt; raise NotificationRejected otherwise."""

    @abc.abstractmethod
    def acknowledge(self, accepted: bool) -> Acknowledgement:
        """The answer the channel expects (WeChat: 200/204 or an error JSON; Alipay: ``success``)."""

    @abc.abstractmethod
    async def download_bill(self, day: dt.date) -> bytes:
        """The day's trade statement as delivered (gzip/zip), after its integrity check (hash, signature)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release HTTP sessions."""

    async def load_trust(self) -> None:  # noqa: B027 - optional hook
        """Take up the certificates other instances fetched (from the channel state)."""

    async def refresh_trust(self, *, force: bool = False) -> bool:
        """Fetch the channel's certificates anew (rate-limited unless ``force``); True if one became trusted.
        Called on a schedule, and when a message names a key not trusted yet."""
        return False

    def may_learn_keys(self, reason: str) -> bool:
        """Whether a callback refused for ``reason`` could verify once ``refresh_trust`` learned a new key."""
        return reason == "unknown_serial"

    def refresh_every_s(self) -> float | None:
        """How soon the channel's certificates should be fetched again (None: this channel has no schedule)."""
        return None

    def key_inventory(self, now: dt.datetime) -> list[KeyInfo]:
        """Every key this channel signs or verifies with, for ``channels keys`` and the expiry metric."""
        return []
