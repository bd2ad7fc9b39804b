"""A payment channel in memory that keeps the ``Channel`` contract: trades and refunds with the channel's own
states, deduplication on out_trade_no / out_refund_no, ORDERPAID on closing a paid trade, signed callbacks that
``verify_notification`` checks. Faults are switched on per call kind, so a test can make each saga step fail."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter
from typing import Any

from gateway.channels.base import (
    Acknowledgement,
    Channel,
    ChannelError,
    Notification,
    NotificationRejected,
    PaymentRequest,
    PaymentStarted,
    RefundRequest,
    RefundState,
    RefundStatus,
    TradeState,
    TradeStatus,
)

WINDOW_S = 300


class MemoryChannel(Channel):
    def __init__(self, name: str = "wechat", merchant_id: str = "MCH1") -> None:
        self.name = name
        self.merchant_id = merchant_id
        self.secret = secrets.token_bytes(16)
        self.trades: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.down: set[str] = set()
        """Call kinds (create, query, close, refund, query_refund…) that fail: nothing happens, retryable."""
        self.in_doubt: set[str] = set()
        """Call kinds that take effect, then fail as if the answer was lost."""
        self.refuse_refund: str | None = None
        self.refund_outcome = RefundState.success
        self.calls: Counter[str] = Counter()
        self.query_delay_s = 0.0
        self.querying: Counter[str] = Counter()
        self.queried: Counter[str] = Counter()
        self.max_concurrent_queries = 0

    def _enter(self, kind: str) -> None:
        self.calls[kind] += 1
        if kind in self.down:
            raise ChannelError("SYSTEM_ERROR", f"{kind}: channel unavailable", retryable=True)

    def _doubt(self, kind: str) -> None:
        if kind in self.in_doubt:
            raise ChannelError("TIMEOUT", f"{kind}: no answer", retryable=True, in_doubt=True)

    async def create(self, request: PaymentRequest) -> PaymentStarted:
        self._enter("create")
        trade = self.trades.setdefault(
            request.out_trade_no,
            {"state": TradeState.notpay, "amount": request.amount_fen, "channel_trade_no": None, "paid_at": None},
        )
        self._doubt("create")
        return PaymentStarted(request.out_trade_no, trade["state"], {"code_url": f"mem://{request.out_trade_no}"})

    def pay(self, out_trade_no: str, amount_fen: int | None = None) -> tuple[dict[str, str], bytes]:
        """The payer pays; returns the callback the channel would send."""
        trade = self.trades[out_trade_no]
        if trade["state"] == TradeState.notpay:
            trade.update(
                state=TradeState.success,
                channel_trade_no=f"42{secrets.token_hex(8)}",
                paid_at=dt.datetime.now(dt.UTC),
                amount=amount_fen if amount_fen is not None else trade["amount"],
            )
        return self.payment_callback(out_trade_no)

    def _status(self, out_trade_no: str) -> TradeStatus:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            return TradeStatus(out_trade_no, TradeState.not_found)
        return TradeStatus(
            out_trade_no,
            trade["state"],
            trade["channel_trade_no"],
            trade["amount"],
            trade["paid_at"],
            merchant_id=self.merchant_id,
        )

    async def query(self, out_trade_no: str) -> TradeStatus:
        self._enter("query")
        self.queried[out_trade_no] += 1
        self.querying[out_trade_no] += 1
        self.max_concurrent_queries = max(self.max_concurrent_queries, self.querying[out_trade_no])
        try:
            if self.query_delay_s:
                await asyncio.sleep(self.query_delay_s)
            return self._status(out_trade_no)
        finally:
            self.querying[out_trade_no] -= 1

    async def close(self, out_trade_no: str) -> None:
        self._enter("close")
        trade = self.trades.get(out_trade_no)
        if trade is None:
            raise ChannelError("ORDER_NOT_EXIST", "no such trade")
        if trade["state"] in (TradeState.success, TradeState.refund):
            raise ChannelError("ORDERPAID", "the trade is paid")
        trade["state"] = TradeState.closed

    async def reverse(self, out_trade_no: str) -> None:
        self._enter("reverse")
        trade = self.trades.get(out_trade_no)
        if trade is not None:
            trade["state"] = TradeState.revoked

    def refunded_fen(self, out_trade_no: str) -> int:
        return sum(
            r["amount"]
            for r in self.refunds.values()
            if r["out_trade_no"] == out_trade_no and r["state"] != RefundState.closed
        )

    async def refund(self, request: RefundRequest) -> RefundStatus:
        self._enter("refund")
        if self.refuse_refund:
            raise ChannelError(self.refuse_refund, "refused")
        existing = self.refunds.get(request.out_refund_no)
        if existing is None:
            trade = self.trades.get(request.out_trade_no)
            if trade is None or trade["state"] not in (TradeState.success, TradeState.refund):
                raise ChannelError("TRADE_NOT_PAID", "nothing to refund")
            if self.refunded_fen(request.out_trade_no) + request.refund_fen > trade["amount"]:
                raise ChannelError("REFUND_EXCEED", "refunds would exceed the payment")
            existing = self.refunds[request.out_refund_no] = {
                "out_trade_no": request.out_trade_no,
                "amount": request.refund_fen,
                "state": self.refund_outcome,
                "channel_refund_no": f"50{secrets.token_hex(8)}",
            }
            trade["state"] = TradeState.refund
        self._doubt("refund")
        return self._refund_status(request.out_refund_no)

    def _refund_status(self, out_refund_no: str) -> RefundStatus:
        r = self.refunds[out_refund_no]
        return RefundStatus(
            r["out_trade_no"],
            out_refund_no,
            r["state"],
            r["amount"],
            r["channel_refund_no"],
            dt.datetime.now(dt.UTC) if r["state"] == RefundState.success else None,
        )

    async def query_refund(self, out_trade_no: str, out_refund_no: str) -> RefundStatus:
        self._enter("query_refund")
        if out_refund_no not in self.refunds:
            raise ChannelError("RESOURCE_NOT_EXISTS", "no such refund")
        return self._refund_status(out_refund_no)

    def settle_refund(
        self, out_refund_no: str, state: RefundState = RefundState.success
    ) -> tuple[dict[str, str], bytes]:
        self.refunds[out_refund_no]["state"] = state
        return self._signed({"kind": "refund", "id": secrets.token_hex(8), "out_refund_no": out_refund_no})

    def payment_callback(self, out_trade_no: str, notification_id: str | None = None) -> tuple[dict[str, str], bytes]:
        return self._signed(
            {"kind": "payment", "id": notification_id or secrets.token_hex(8), "out_trade_no": out_trade_no}
        )

    def _signed(self, event: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        if event["kind"] == "payment":
            event["trade"] = _plain(self._status(event["out_trade_no"]).__dict__)
        else:
            event["refund"] = _plain(self._refund_status(event["out_refund_no"]).__dict__)
        body = json.dumps(event).encode()
        ts = str(int(time.time()))
        sig = hmac.new(self.secret, ts.encode() + b"\n" + body, hashlib.sha256).hexdigest()
        return {"X-Mem-Timestamp": ts, "X-Mem-Signature": sig, "Content-Type": "application/json"}, body

    def verify_notification(self, headers: dict[str, str], body: bytes, *, now: float | None = None) -> Notification:
        h = {k.lower(): v for k, v in headers.items()}
        ts, sig = h.get("x-mem-timestamp", ""), h.get("x-mem-signature", "")
        expected = hmac.new(self.secret, ts.encode() + b"\n" + body, hashlib.sha256).hexdigest()
        if not sig or not hmac.compare_digest(sig, expected):
            raise NotificationRejected("bad_signature", "signature does not match")
        if abs((now or time.time()) - int(ts)) > WINDOW_S:
            raise NotificationRejected("stale", "timestamp outside the window")
        event = json.loads(body)
        if event["kind"] == "payment":
            t = event["trade"]
            if t.get("merchant_id") not in (None, self.merchant_id):
                raise NotificationRejected("wrong_merchant", "not our merchant")
            trade = TradeStatus(
                t["out_trade_no"], TradeState(t["state"]), t["channel_trade_no"], t["amount_fen"],
                dt.datetime.fromisoformat(t["paid_at"]) if t["paid_at"] else None, merchant_id=t.get("merchant_id"),
            )  # fmt: skip
            return Notification("payment", event["id"], trade=trade)
        r = event["refund"]
        refund = RefundStatus(
            r["out_trade_no"], r["out_refund_no"], RefundState(r["state"]), r["refund_fen"], r["channel_refund_no"],
            dt.datetime.fromisoformat(r["succeeded_at"]) if r["succeeded_at"] else None,
        )  # fmt: skip
        return Notification("refund", event["id"], refund=refund)

    def acknowledge(self, accepted: bool) -> Acknowledgement:
        if accepted:
            return Acknowledgement(200, {"Content-Type": "application/json"}, b'{"code":"SUCCESS"}')
        return Acknowledgement(500, {"Content-Type": "application/json"}, b'{"code":"FAIL"}')

    async def download_bill(self, day: dt.date) -> bytes:
        return b""


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in values.items()}
