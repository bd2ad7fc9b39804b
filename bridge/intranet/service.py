"""The intranet side of the agent as one object: the terminals, the forwarder and the checks between them.

A request is checked in this order, and refused at the first failure with its own error code, before anything
is journaled or forwarded: the address is one some terminal may call from; the terminal is known (its
certificate, or the id it names); the address is this terminal's; it is enabled; its HMAC, timestamp and
nonce hold (HMAC terminals); it may call the operation; the body fits the operation's schema; the amount is
within its per-payment limit; and — in the same transaction that journals it — within its daily limit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from bridge import clock
from bridge.egress import answers
from bridge.egress.config import EgressConfig
from bridge.egress.forwarder import Forwarder, Submission
from bridge.egress.journal import OverDailyLimit, TerminalRequest
from bridge.egress.metrics import EgressMetrics
from bridge.intranet.config import IntranetConfig, TerminalKind, TerminalOperation
from bridge.intranet.terminals import Terminal, TerminalRefused, TerminalRegistry

HOSPITAL_TZ = ZoneInfo("Asia/Shanghai")
WRITES = frozenset({TerminalOperation.pay_codepay, TerminalOperation.pay_qr, TerminalOperation.refund})
SCENE = {TerminalOperation.pay_codepay: "codepay", TerminalOperation.pay_qr: "native"}


def today() -> str:
    return clock.utcnow().astimezone(HOSPITAL_TZ).date().isoformat()


def canonical_digest(operation: str, params: dict[str, Any]) -> str:
    text = json.dumps([operation, params], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Accepted:
    entry: TerminalRequest
    created: bool


class Intranet:
    def __init__(self, cfg: IntranetConfig, egress: EgressConfig, metrics: EgressMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.terminals = TerminalRegistry.load(cfg, egress)
        self.forwarder = Forwarder(egress, metrics)
        self.listening = False
        """Set once the intranet listener accepts connections (``/readyz`` waits for it)."""

    async def start(self) -> None:
        await self.forwarder.start()

    async def stop(self) -> None:
        await self.forwarder.stop()

    def nonce_expiry(self, timestamp: int) -> float:
        return timestamp + self.cfg.timestamp_window_s + 60

    # --- payments and refunds ------------------------------------------------------------------------------

    def submission(
        self,
        terminal: Terminal,
        operation: TerminalOperation,
        body: BaseModel,
        client_ip: str | None,
        nonce: tuple[str, str, float] | None,
    ) -> Submission:
        """Check the terminal's limits and build what is journaled and forwarded."""
        params = body.model_dump(mode="json", exclude_none=True)
        gateway_id = f"{terminal.id}:{params['request_id']}"
        amount = int(params["amount_fen"])
        t = terminal.cfg
        if operation is TerminalOperation.refund:
            kind, limit = "refund", t.max_refund_fen or t.max_payment_fen
            daily = t.max_daily_refund_fen or t.max_daily_fen
            forward = {
                "request_id": gateway_id,
                "business_refund_no": gateway_id,
                "terminal_id": terminal.id,
                "out_trade_no": params["out_trade_no"],
                "amount_fen": amount,
                "his_refund_no": params["his_refund_no"],
                **({"reason": params["reason"]} if "reason" in params else {}),
            }
        else:
            kind, limit, daily = "pay", t.max_payment_fen, t.max_daily_fen
            references: dict[str, Any] = {
                k: params[k] for k in ("schedule_id", "lock_id", "bill_nos", "inpatient_no") if k in params
            }
            forward = {
                "business_order_no": gateway_id,
                "request_id": gateway_id,
                "terminal_id": terminal.id,
                "origin": "window" if t.kind is TerminalKind.window else "terminal",
                "business_type": params["business_type"],
                "scene": SCENE[operation],
                "channel": params["channel"],
                "amount_fen": amount,
                "subject": params["subject"],
                "patient_id": params["patient_id"],
                **references,
                **({"auth_code": params["auth_code"]} if "auth_code" in params else {}),
                **({"expire_s": params["expire_s"]} if "expire_s" in params else {}),
                **({"client_ip": client_ip} if client_ip else {}),
            }
        if amount > limit:
            what = "payment" if kind == "pay" else "refund"
            raise TerminalRefused(
                422, f"over_{what}_limit", f"{amount} fen is over this terminal's limit of {limit} fen per {what}"
            )
        return Submission(
            terminal_id=terminal.id,
            app=terminal.app,
            kind=kind,
            operation=operation.value,
            request_id=params["request_id"],
            body_sha256=canonical_digest(operation.value, params),
            forward=forward,
            amount_fen=amount,
            day=today(),
            daily_limit_fen=daily,
            nonce=nonce,
        )

    async def accept(self, sub: Submission) -> Accepted:
        try:
            entry, created = await self.forwarder.submit(sub)
        except OverDailyLimit as e:
            what = "payments" if sub.kind == "pay" else "refunds"
            raise TerminalRefused(
                422,
                "over_daily_limit",
                f"{sub.amount_fen} fen would take this terminal's {what} today past its limit of {e.limit_fen} fen"
                f" ({e.used_fen} fen so far)",
            ) from None
        return Accepted(entry, created)

    async def answer(self, entry: TerminalRequest, *, wait: bool, just_forwarded: bool = False) -> dict[str, Any]:
        """The terminal's answer: after waiting up to the deadline for a forward in flight, if asked to. An answer
        the gateway has just given is the freshest there is; anything older is asked about again if it may have
        changed."""
        if wait:
            entry = await self.forwarder.wait(entry.seq, self.cfg.answer_deadline_s) or entry
        if just_forwarded and entry.answer is not None and entry.state.value in ("done", "failed"):
            return entry.answer
        return await self.forwarder.current(entry)

    # --- reads --------------------------------------------------------------------------------------------

    async def own_request(self, terminal: Terminal, request_id: str, kind: str | None) -> TerminalRequest:
        entry = await self.forwarder.journal.get(terminal.id, request_id)
        if entry is None or (kind is not None and entry.kind != kind):
            what = {"pay": "payment", "refund": "refund"}.get(kind or "", "request")
            raise TerminalRefused(404, "not_found", f"this terminal has no {what} with request_id {request_id!r}")
        return entry

    async def transactions(self, terminal: Terminal, day: dt.date) -> dict[str, Any]:
        path = f"/v1/transactions?terminal_id={terminal.id}&date={day.isoformat()}"
        answer = await self.forwarder.read(terminal.app, path)
        if answer.status != 200:
            raise TerminalRefused(502, "gateway_error", f"gateway: {answer.code} {answer.message}")
        return answer.body


def http_status(answer: dict[str, Any]) -> int:
    error = answer.get("error") or {}
    if error.get("code") == "cloud_unreachable" and answer.get("status") in answers.NO_MONEY:
        return 503
    return 202 if answer.get("status") in answers.WAITING else 200


OPERATIONS = {op.value: op for op in TerminalOperation}
