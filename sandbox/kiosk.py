"""``his-sandbox kiosk``: a self-service kiosk (自助机) and a cashier window (收费窗口) on the hospital LAN, paying
and refunding through the agent's intranet listener as real terminals would.

The payer's side comes from the channel sandboxes: each 付款码 the kiosk "scans" is issued by the sandbox's
admin API with the payer's behaviour attached — one who pays at once, one who takes 20 s to enter a password,
one whose code has expired — and a QR shown on the kiosk screen is paid there too. The window plays the HIS's
own cashier: it books the refund in the sandbox HIS first (窗口退费), then asks for the money back through the
agent, then records the channel's refund serial in the HIS.

Speaks the terminal envelope (``bridge.terminal_protocol``) and nothing else of ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bridge import terminal_protocol

SCENARIOS = ("codepay", "slow", "expired", "qr", "refund")
FINAL_PAYMENT = frozenset({"paid", "failed", "closed"})
FINAL_REFUND = frozenset({"succeeded", "rejected", "failed"})


class KioskError(Exception):
    pass


def new_request_id(prefix: str = "K") -> str:
    return f"{prefix}{time.strftime('%Y%m%d%H%M%S')}{secrets.token_hex(4)}"


class TerminalClient:
    """One terminal: signs every request with its HMAC key (or presents its certificate) and believes only
    answers the agent signed for that request."""

    def __init__(
        self,
        base_url: str,
        terminal_id: str,
        key: bytes | None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 90,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.terminal_id = terminal_id
        self.key = key
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TerminalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False, limit=100)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self.send("POST", f"/v1/terminal/{operation}", body)

    async def send(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        raw = json.dumps(body, ensure_ascii=False).encode() if body is not None else b""
        signed = dict(headers) if headers is not None else self.sign(method, path, raw)
        async with self._get_session().request(
            method, self.base_url + path, data=raw, headers={**signed, "Content-Type": "application/json"}
        ) as resp:
            data = await resp.read()
            if self.key is not None and terminal_protocol.HEADER_NONCE in signed:
                terminal_protocol.verify_response(
                    self.key, resp.status, signed[terminal_protocol.HEADER_NONCE], resp.headers, data
                )
            return resp.status, json.loads(data)

    def sign(self, method: str, path: str, raw: bytes) -> dict[str, str]:
        if self.key is None:
            return {}
        return terminal_protocol.sign_request(self.terminal_id, self.key, method, path, raw)

    async def follow(self, operation: str, request_id: str, final: frozenset[str], *, within_s: float = 90) -> Any:
        """Ask about a request until its answer is final (the counter's "please wait")."""
        deadline = time.monotonic() + within_s
        while True:
            status, answer = await self.call(operation, {"request_id": request_id})
            if answer.get("status") in final or time.monotonic() > deadline:
                return status, answer
            await asyncio.sleep(0.5)


@dataclass
class Outcome:
    scenario: str
    ok: bool
    detail: str
    answer: dict[str, Any] = field(default_factory=dict)


class SandboxPayer:
    """The payer's phone, as the channel sandbox's admin API plays it."""

    def __init__(self, admin_url: str, session: aiohttp.ClientSession) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.session = session

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.admin_url + path, json=body) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status >= 400:
                raise KioskError(f"channel sandbox {path}: HTTP {resp.status} {data}")
            return data

    async def code(self, channel: str, payer: str, **extra: Any) -> str:
        return str((await self._post("/codes", {"channel": channel, "payer": payer, **extra}))["auth_code"])

    async def pay_qr(self, channel: str, out_trade_no: str) -> None:
        if channel == "alipay":
            await self._post("/payer/scan", {"channel": channel, "out_trade_no": out_trade_no})
        await self._post("/payer/pay", {"channel": channel, "out_trade_no": out_trade_no})


class HisWindow:
    """The HIS's cashier window books its own refund (the sandbox HIS's admin API stands in for the HIS UI)."""

    def __init__(self, his_url: str, session: aiohttp.ClientSession) -> None:
        self.his_url = his_url.rstrip("/")
        self.session = session

    async def book_refund(self, trade_no: str, refund_no: str, amount_fen: int, reason: str) -> dict[str, Any]:
        body = {"trade_no": trade_no, "refund_no": refund_no, "amount_fen": amount_fen, "reason": reason}
        async with self.session.post(self.his_url + "/_admin/window/refunds", json=body) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status >= 400:
                raise KioskError(f"HIS refused the window refund: {data}")
            return data

    async def record_paid(self, trade_no: str, refund_no: str, amount_fen: int, channel_refund_no: str) -> None:
        body = {"trade_no": trade_no, "amount_fen": amount_fen, "channel_refund_no": channel_refund_no}
        async with self.session.post(f"{self.his_url}/_admin/window/refunds/{refund_no}/paid", json=body) as resp:
            if resp.status >= 400:
                raise KioskError(f"HIS refused the refund serial: {await resp.text()}")


def payment_body(request_id: str, amount_fen: int, patient: str, inpatient: str) -> dict[str, Any]:
    """An inpatient deposit top-up (住院预交金), the kiosk's simplest payment."""
    return {
        "request_id": request_id,
        "business_type": "prepay",
        "amount_fen": amount_fen,
        "subject": "住院预交金",
        "patient_id": patient,
        "inpatient_no": inpatient,
    }


async def pay_by_code(
    kiosk: TerminalClient, payer: SandboxPayer, channel: str, behaviour: str, body: dict[str, Any]
) -> dict[str, Any]:
    code = await payer.code(channel, behaviour)
    _, answer = await kiosk.call("pay.codepay", {**body, "auth_code": code})
    if answer.get("status") in ("pending",):
        _, answer = await kiosk.follow("pay.query", body["request_id"], FINAL_PAYMENT)
    return await until_recorded(kiosk, answer)


async def until_recorded(kiosk: TerminalClient, answer: dict[str, Any], within_s: float = 30) -> dict[str, Any]:
    """A paid payment is printed once the HIS has it (the gateway tells it, unless the kiosk does it itself)."""
    deadline = time.monotonic() + within_s
    while answer.get("status") == "paid" and (answer.get("his") or {}).get("state") in ("none", "pending"):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
        _, answer = await kiosk.call("pay.query", {"request_id": answer["request_id"]})
    return answer


async def window_refund(
    window: TerminalClient, his: HisWindow, out_trade_no: str, amount_fen: int, reason: str
) -> dict[str, Any]:
    his_refund_no = "TF" + secrets.token_hex(6).upper()
    await his.book_refund(out_trade_no, his_refund_no, amount_fen, reason)
    request_id = new_request_id("W")
    body = {
        "request_id": request_id,
        "out_trade_no": out_trade_no,
        "amount_fen": amount_fen,
        "his_refund_no": his_refund_no,
        "reason": reason,
    }
    _, answer = await window.call("refund", body)
    if answer.get("status") not in FINAL_REFUND:
        _, answer = await window.follow("refund.query", request_id, FINAL_REFUND)
    if answer.get("status") == "succeeded":
        await his.record_paid(out_trade_no, his_refund_no, amount_fen, str(answer.get("channel_refund_no")))
    return {**answer, "his_refund_no": his_refund_no}


async def run(args: argparse.Namespace) -> list[Outcome]:
    kiosk_key = terminal_protocol.parse_key(args.key_file.read_text()) if args.key_file else None
    ctx = _ssl_context(args)
    outcomes: list[Outcome] = []
    async with (
        aiohttp.ClientSession() as session,
        TerminalClient(args.agent, args.terminal, kiosk_key, ssl_context=ctx) as kiosk,
    ):
        payer = SandboxPayer(args.channels_admin, session)
        paid: dict[str, Any] | None = None
        for scenario in args.scenario:
            body = payment_body(new_request_id(), args.amount, args.patient, args.inpatient)
            if scenario == "codepay":
                answer = await pay_by_code(kiosk, payer, args.channel, "pays", body)
                paid = answer if answer.get("status") == "paid" else paid
                outcomes.append(Outcome(scenario, answer.get("status") == "paid", _describe(answer), answer))
            elif scenario == "slow":
                started = time.monotonic()
                answer = await pay_by_code(kiosk, payer, args.channel, "slow", body)
                took = f" after {time.monotonic() - started:.0f} s"
                outcomes.append(Outcome(scenario, answer.get("status") == "paid", _describe(answer) + took, answer))
            elif scenario == "expired":
                answer = await pay_by_code(kiosk, payer, args.channel, "expired", body)
                ok = answer.get("status") == "failed"
                outcomes.append(Outcome(scenario, ok, _describe(answer), answer))
            elif scenario == "qr":
                _, answer = await kiosk.call("pay.qr", {**body, "channel": args.channel})
                if answer.get("status") == "waiting":
                    await payer.pay_qr(args.channel, str(answer["out_trade_no"]))
                    _, answer = await kiosk.follow("pay.query", body["request_id"], FINAL_PAYMENT)
                    answer = await until_recorded(kiosk, answer)
                paid = answer if answer.get("status") == "paid" else paid
                outcomes.append(Outcome(scenario, answer.get("status") == "paid", _describe(answer), answer))
            elif scenario == "refund":
                outcomes.append(await _refund_scenario(args, session, ctx, paid))
    return outcomes


async def _refund_scenario(
    args: argparse.Namespace, session: aiohttp.ClientSession, ctx: ssl.SSLContext | None, paid: dict[str, Any] | None
) -> Outcome:
    trade = args.refund_trade or (paid or {}).get("out_trade_no")
    if not (args.window and args.window_key_file and args.his):
        return Outcome("refund", False, "needs --window, --window-key-file and --his")
    if not trade:
        return Outcome("refund", False, "nothing to refund: pay first (codepay or qr) or give --refund-trade")
    amount = args.refund_amount or max(1, int((paid or {}).get("paid_fen") or args.amount) // 2)
    key = terminal_protocol.parse_key(args.window_key_file.read_text())
    async with TerminalClient(args.agent, args.window, key, ssl_context=ctx) as window:
        answer = await window_refund(window, HisWindow(args.his, session), str(trade), amount, "窗口退费")
    ok = answer.get("status") == "succeeded"
    detail = f"{_describe(answer)}; HIS refund {answer['his_refund_no']}"
    return Outcome("refund", ok, detail, answer)


def _describe(answer: dict[str, Any]) -> str:
    status = answer.get("status")
    error = answer.get("error") or {}
    parts = [str(status)]
    for name in ("out_trade_no", "out_refund_no", "amount_fen", "channel_trade_no", "channel_refund_no"):
        if answer.get(name):
            parts.append(f"{name}={answer[name]}")
    if (answer.get("his") or {}).get("receipt_no"):
        parts.append(f"HIS receipt {answer['his']['receipt_no']}")
    if error:
        parts.append(f"error={error.get('code')}: {error.get('message')}")
    return " ".join(parts)


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.agent.startswith("https://"):
        return None
    ctx = ssl.create_default_context(cafile=str(args.cacert) if args.cacert else None)
    if args.cert:
        ctx.load_cert_chain(str(args.cert), str(args.key) if args.key else None)
    return ctx


def add_parser(commands: Any) -> None:
    p = commands.add_parser("kiosk", help="play a kiosk and a cashier window against the agent's intranet listener")
    p.add_argument("--agent", required=True, metavar="URL", help="the agent's intranet listener, http(s)://HOST:PORT")
    p.add_argument("--terminal", required=True, metavar="ID", help="the kiosk's terminal id")
    p.add_argument("--key-file", type=Path, metavar="FILE", help="the kiosk's HMAC key (omit for a certificate)")
    p.add_argument("--cert", type=Path, metavar="PEM", help="the kiosk's certificate from the hospital CA")
    p.add_argument("--key", type=Path, metavar="PEM", help="its private key")
    p.add_argument("--cacert", type=Path, metavar="PEM", help="the CA of the agent's intranet certificate")
    p.add_argument("--window", metavar="ID", help="the cashier window's terminal id")
    p.add_argument("--window-key-file", type=Path, metavar="FILE", help="the window's HMAC key")
    p.add_argument("--channels-admin", required=True, metavar="URL", help="the channel sandbox's admin API")
    p.add_argument("--his", metavar="URL", help="the sandbox HIS (the window books its refunds there)")
    p.add_argument("--channel", choices=("wechat", "alipay"), default="wechat")
    p.add_argument("--patient", default="P0003")
    p.add_argument("--inpatient", default="Z0001")
    p.add_argument("--amount", type=int, default=10000, metavar="FEN", help="each payment, in fen (default 10000)")
    p.add_argument("--refund-trade", metavar="OUT_TRADE_NO", help="refund this payment (e.g. a phone payment)")
    p.add_argument("--refund-amount", type=int, metavar="FEN", help="default: half of what was paid")
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="repeatable, in order; default: codepay slow expired qr refund",
    )
    p.add_argument("--json", action="store_true", help="print the outcomes as one JSON line at the end")


async def serve(args: argparse.Namespace) -> int:
    args.scenario = args.scenario or list(SCENARIOS)
    try:
        outcomes = await run(args)
    except (KioskError, aiohttp.ClientError, terminal_protocol.EnvelopeError) as e:
        print(f"his-sandbox kiosk: {e}", file=sys.stderr)
        return 1
    for o in outcomes:
        print(f"{'OK  ' if o.ok else 'FAIL'} {o.scenario:<8} {o.detail}", flush=True)
    if args.json:
        print(json.dumps([o.__dict__ for o in outcomes], ensure_ascii=False), flush=True)
    return 0 if all(o.ok for o in outcomes) else 1
