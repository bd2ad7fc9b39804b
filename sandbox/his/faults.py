"""Fault injection: make the sandbox HIS slow, busy, broken or forgetful on purpose.

Rules match a SOAP operation name, for MLLP a catalog operation name (``charge.commit``) or an HL7 message type
(``DFT^P03``), or ``*``. The first matching rule, in the order added, takes the call; a rule with a ``count``
retires after that many calls. Every rule may also carry ``latency_ms``, a delay before it acts (processing time,
on the shared clock ``bridge.clock``), so "slow, then lose the reply" is one rule. A rule with a ``trade_no``
takes only the calls for that trade (SOAP: the request's ``TradeNo``), so one order's commit can be broken while
the rest of the day goes on.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_LATENCY_MS = 600_000


class FaultMode(StrEnum):
    latency = "latency"
    """Delay, then answer normally."""
    refuse = "refuse"
    """HTTP 503 without applying (the HIS is busy: safe to retry)."""
    drop_reply = "drop_reply"
    """Apply the call, then drop the connection without a byte of answer (the outcome is in doubt)."""
    error = "error"
    """Answer ``ResultCode=error_code`` without applying."""
    http_500 = "http_500"
    """Answer a SOAP fault with HTTP 500 without applying."""
    no_ack = "no_ack"
    """MLLP only: apply the message and never answer it (the connection stays open)."""
    wrong_ack_id = "wrong_ack_id"
    """MLLP only: apply the message and answer with an MSA-2 that is not its MSH-10."""


class FaultRuleError(ValueError):
    """A fault rule that does not make sense; the message says which field and why."""


@dataclass
class FaultRule:
    operation: str
    mode: FaultMode
    latency_ms: int = 0
    error_code: str = "9999"
    count: int | None = None
    trade_no: str | None = None
    id: int = 0
    hits: int = 0
    remaining: int | None = field(default=None)

    def __post_init__(self) -> None:
        self.mode = FaultMode(self.mode)
        if self.remaining is None:
            self.remaining = self.count

    @classmethod
    def from_json(cls, data: Any, operations: Iterable[str] | None = None) -> FaultRule:
        """Validate an admin request body; raises ``FaultRuleError`` with a message fit for a 400 answer."""
        if not isinstance(data, Mapping):
            raise FaultRuleError("a fault rule must be a JSON object")
        unknown = set(data) - {"operation", "mode", "latency_ms", "error_code", "count", "trade_no"}
        if unknown:
            raise FaultRuleError(f"unknown field(s): {', '.join(sorted(unknown))}")
        operation = data.get("operation")
        if not isinstance(operation, str) or not operation:
            raise FaultRuleError("operation is required: a SOAP operation name or '*'")
        known = set(operations or ())
        if known and operation != "*" and operation not in known:
            raise FaultRuleError(f"unknown operation {operation!r}; one of: *, {', '.join(sorted(known))}")
        try:
            mode = FaultMode(data.get("mode"))
        except ValueError:
            raise FaultRuleError(
                f"mode must be one of: {', '.join(m.value for m in FaultMode)} (got {data.get('mode')!r})"
            ) from None
        latency_ms = data.get("latency_ms", 0)
        if latency_ms is None:
            latency_ms = 0
        if isinstance(latency_ms, bool) or not isinstance(latency_ms, int) or not 0 <= latency_ms <= MAX_LATENCY_MS:
            raise FaultRuleError(f"latency_ms must be an integer from 0 to {MAX_LATENCY_MS}")
        error_code = data.get("error_code", "9999")
        if error_code is None:
            error_code = "9999"
        if isinstance(error_code, int) and not isinstance(error_code, bool):
            error_code = str(error_code)
        if not isinstance(error_code, str) or not error_code.isdigit() or len(error_code) > 10 or error_code == "0":
            raise FaultRuleError("error_code must be a non-zero numeric string such as '9999'")
        count = data.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise FaultRuleError("count must be null (until cleared) or an integer >= 1")
        trade_no = data.get("trade_no")
        if trade_no is not None and (not isinstance(trade_no, str) or not trade_no):
            raise FaultRuleError("trade_no must be null (any trade) or a trade number")
        return cls(
            operation=operation, mode=mode, latency_ms=latency_ms, error_code=error_code, count=count, trade_no=trade_no
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "operation": self.operation,
            "mode": self.mode.value,
            "latency_ms": self.latency_ms,
            "error_code": self.error_code,
            "count": self.count,
            "trade_no": self.trade_no,
            "remaining": self.remaining,
            "hits": self.hits,
        }


class FaultBook:
    """The active fault rules. ``take`` is atomic, so two concurrent calls never both use a ``count=1`` rule."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.fired = 0

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            rule.id = next(self._ids)
            self._rules.append(rule)
            return rule

    def clear(self) -> int:
        with self._lock:
            removed = len(self._rules)
            self._rules.clear()
            return removed

    def remove(self, rule_id: int) -> bool:
        """Retire one rule (the end of an outage), leaving the others; False if it is gone already."""
        with self._lock:
            for rule in self._rules:
                if rule.id == rule_id:
                    self._rules.remove(rule)
                    return True
            return False

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def take(self, operation: str, trade_no: str | None = None) -> FaultRule | None:
        """The rule that takes this call (for ``trade_no``, when known), if any, counted as used."""
        with self._lock:
            for rule in self._rules:
                if rule.operation in ("*", operation) and rule.trade_no in (None, trade_no):
                    rule.hits += 1
                    self.fired += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._rules.remove(rule)
                    return rule
            return None
