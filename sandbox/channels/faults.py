"""Faults the sandbox channels inject on demand: broken calls, and lost, duplicated or late callbacks.

Call rules match an API name (``wechat.refund``, ``alipay.trade.refund``), a prefix pattern (``wechat.*``) or
``*``; callback rules match a channel and a kind (``payment``/``refund``), and with ``ref`` only the callbacks of
one trade or refund (its ``out_trade_no`` / ``out_refund_no``). The first matching rule, in the order added,
takes the event; a rule with a ``count`` retires after that many.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class CallFault(StrEnum):
    error = "error"
    """Answer ``status`` with the channel's error ``code`` without applying the call."""
    timeout = "timeout"
    """Wait ``latency_ms``, then drop the connection without applying (the client's timeout fires first)."""
    drop_after = "drop_after"
    """Apply the call, then drop the connection without a byte of answer: the outcome is in doubt."""
    latency = "latency"
    """Wait ``latency_ms``, then answer normally."""
    bad_signature = "bad_signature"
    """Apply the call and answer with a signature that does not verify."""
    tamper = "tamper"
    """Serve a statement file altered after its hash was announced (bill downloads only)."""


class NotifyFault(StrEnum):
    lost = "lost"
    """Never send this callback (the gateway must find out by querying)."""
    duplicate = "duplicate"
    """Send it twice (each signed anew, as the channel's own retries are)."""
    late = "late"
    """Send it ``delay_s`` seconds late (of the shared clock, which a simulated day moves forward)."""
    bad_signature = "bad_signature"
    """Send it with its body altered after signing (every retry too), so its signature does not verify: a forgery
    or a callback spoiled in transit, which the merchant must refuse."""


class FaultError(ValueError):
    pass


@dataclass
class RefundHolds:
    """Refunds that stay PROCESSING until released: the next ``count`` of any trade, and the next of each trade
    in ``trades`` (so that one patient's refund can be stuck while the rest of the day goes on)."""

    count: int = 0
    trades: set[str] = field(default_factory=set)

    def take(self, out_trade_no: str) -> bool:
        if out_trade_no in self.trades:
            self.trades.discard(out_trade_no)
            return True
        if self.count > 0:
            self.count -= 1
            return True
        return False


@dataclass
class Rule:
    kind: str
    """``call`` or ``notify``."""
    mode: str
    match: str
    status: int = 500
    code: str = "SYSTEM_ERROR"
    message: str = "sandbox fault"
    latency_ms: int = 0
    delay_s: float = 0.0
    count: int | None = None
    ref: str | None = None
    """Callbacks only: the ``out_trade_no`` (payment) or ``out_refund_no`` (refund) the rule is for."""
    id: int = 0
    hits: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _matches(pattern: str, name: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return pattern == name


class FaultBook:
    def __init__(self) -> None:
        self._rules: list[Rule] = []
        self._ids = itertools.count(1)

    def add(self, data: Mapping[str, Any]) -> Rule:
        allowed = {"kind", "mode", "match", "status", "code", "message", "latency_ms", "delay_s", "count", "ref"}
        unknown = set(data) - allowed
        if unknown:
            raise FaultError(f"unknown field(s): {', '.join(sorted(unknown))}")
        kind = data.get("kind", "call")
        modes = {"call": CallFault, "notify": NotifyFault}.get(kind)
        if modes is None:
            raise FaultError("kind is call or notify")
        try:
            mode = modes(data.get("mode"))
        except ValueError:
            raise FaultError(f"mode must be one of: {', '.join(m.value for m in modes)}") from None
        match = data.get("match", "*")
        if not isinstance(match, str) or not match:
            raise FaultError("match is an API name (wechat.refund), a prefix with * or *; for notify: wechat.payment")
        count = data.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise FaultError("count is a positive integer")
        ref = data.get("ref")
        if ref is not None and (kind != "notify" or not isinstance(ref, str) or not ref):
            raise FaultError("ref names one trade's or refund's callbacks (out_trade_no / out_refund_no), notify only")
        try:
            rule = Rule(
                kind=kind,
                mode=mode.value,
                match=match,
                status=int(data.get("status", 500)),
                code=str(data.get("code", "SYSTEM_ERROR")),
                message=str(data.get("message", "sandbox fault")),
                latency_ms=int(data.get("latency_ms", 0)),
                delay_s=float(data.get("delay_s", 0.0)),
                count=count,
                ref=ref,
                id=next(self._ids),
            )
        except (TypeError, ValueError) as exc:
            raise FaultError(str(exc)) from None
        if rule.latency_ms < 0 or rule.delay_s < 0:
            raise FaultError("latency_ms and delay_s are not negative")
        self._rules.append(rule)
        return rule

    def take(self, kind: str, name: str, ref: str | None = None) -> Rule | None:
        for rule in self._rules:
            if rule.kind == kind and _matches(rule.match, name) and rule.ref in (None, ref):
                rule.hits += 1
                if rule.count is not None and rule.hits >= rule.count:
                    self._rules.remove(rule)
                return rule
        return None

    def rules(self) -> list[Rule]:
        return list(self._rules)

    def clear(self) -> int:
        count = len(self._rules)
        self._rules.clear()
        return count
