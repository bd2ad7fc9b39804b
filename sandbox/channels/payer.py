"""The payer on the other side of a 付款码 (barcode): scripted per auth code through the admin API."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

OUTCOMES = ("paid", "userpaying", "error")
THEN = ("paid", "payerror", "wait")


@dataclass
class CodepayScript:
    """``paid``: pays at once. ``userpaying``: has to enter a password; after ``after_queries`` queries and
    ``after_s`` seconds (a slow payer) the trade becomes ``then`` (paid, payerror, or wait = never decides).
    ``error``: the channel refuses the barcode with ``status``/``code``/``message`` (an expired code)."""

    outcome: str = "paid"
    then: str = "paid"
    after_queries: int = 1
    after_s: float = 0.0
    status: int = 403
    code: str = "TRADE_ERROR"
    message: str = "交易错误"

    def decided(self, trade: Mapping[str, Any], now: dt.datetime) -> bool:
        """Has the payer finished entering the password by this query?"""
        elapsed = (now - dt.datetime.fromisoformat(str(trade["created_at"]))).total_seconds()
        return int(trade["queries"]) >= self.after_queries and elapsed >= self.after_s

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CodepayScript:
        script = cls(**{k: data[k] for k in asdict(cls()) if k in data})
        if script.outcome not in OUTCOMES or script.then not in THEN:
            raise ValueError(f"outcome is one of {OUTCOMES}, then one of {THEN}")
        if not isinstance(script.after_queries, int) or script.after_queries < 0:
            raise ValueError("after_queries is a non-negative integer")
        if not isinstance(script.after_s, int | float) or not 0 <= script.after_s <= 600:
            raise ValueError("after_s is a number of seconds, 0 to 600")
        return script
