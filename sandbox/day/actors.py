"""The people and machines around the stack during a simulated day, each speaking only the interfaces they would
really use: the hospital app (the gateway's signed business API, and the notify endpoint the gateway calls), the
kiosk (the HIS's SOAP service, to lock a slot), the payer and the channel operator (the channel sandbox's admin
API), and whoever breaks the HIS on purpose (the HIS sandbox's admin API)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from lxml import etree

from bridge import protocol

RETRY_STATUSES = frozenset({500, 502, 503, 504})
"""Answers after which the app sends the same request again: creating an order or a refund, and closing an order,
are idempotent on their business numbers, so a resend after a server error is what a careful app does."""
SAFE_XML = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


class ActorError(Exception):
    pass


class HospitalApp:
    """The business API as a hospital app calls it, spread over the gateway instances: every request signed with
    the app's key, every answer checked against the gateway's key before it is believed. A request that got no
    usable answer is sent again as it was (creating an order or a refund is idempotent on its business number)."""

    def __init__(self, base_urls: list[str], key: protocol.SigningKey, gateway_key: protocol.VerifyKey) -> None:
        self.base_urls = base_urls
        self.key = key
        self.gateway_key = gateway_key
        self._next = itertools.cycle(range(len(base_urls)))
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.resent: Counter[str] = Counter()
        """Requests sent again, by what the first answer was (an HTTP status, or ``no answer``)."""

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        raw = json.dumps(body, ensure_ascii=False).encode() if body is not None else b""
        for attempt in range(6):
            headers = protocol.sign_request(self.key, method, path, raw)
            headers["Content-Type"] = "application/json"
            url = self.base_urls[next(self._next)] + path
            try:
                async with self.session.request(method, url, data=raw, headers=headers) as resp:
                    data, status, answer_headers = await resp.read(), resp.status, resp.headers
            except (aiohttp.ClientError, TimeoutError):
                self.resent["no answer"] += 1
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            protocol.verify_response(self.gateway_key, status, headers[protocol.HEADER_NONCE], answer_headers, data)
            if status in RETRY_STATUSES and attempt < 5:
                self.resent[f"HTTP {status}"] += 1
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            return status, json.loads(data)
        raise ActorError(f"{method} {path}: no answer from the gateway after 6 attempts")


class NotifyReceiver:
    """The hospital app's notify endpoint: takes only what the gateway signed, and keeps events by id (a
    redelivered event is the same event)."""

    def __init__(self, gateway_key: protocol.VerifyKey) -> None:
        self.gateway_key = gateway_key
        self.events: dict[int, dict[str, Any]] = {}
        self.deliveries = 0
        self.refused = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> NotifyReceiver:
        app = web.Application()
        app.router.add_post("/pay/notify", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/pay/notify"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            protocol.verify_request(
                {self.gateway_key.key_id: self.gateway_key}, request.method, request.path_qs, request.headers, body
            )
        except protocol.EnvelopeError:
            self.refused += 1
            return web.Response(status=401)
        event = json.loads(body)
        self.deliveries += 1
        self.events.setdefault(int(event["id"]), event)
        return web.Response(text="ok")


class AdminApi:
    """A sandbox's JSON admin API."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session

    async def call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201)) -> Any:
        async with self.session.request(method, self.base_url + path, json=body) as resp:
            answer = await resp.json(content_type=None)
            if resp.status not in ok:
                raise ActorError(f"{method} {self.base_url + path}: HTTP {resp.status} {answer}")
            return answer


class Payer(AdminApi):
    """The payer's side of each trade, and the channel operator's levers (the channel sandbox's admin API)."""

    async def pay(self, channel: str, out_trade_no: str, *, scanned: bool = False) -> dict[str, Any]:
        if channel == "alipay" and not scanned:
            await self.call("POST", "/payer/scan", {"channel": channel, "out_trade_no": out_trade_no})
        answer: dict[str, Any] = await self.call(
            "POST", "/payer/pay", {"channel": channel, "out_trade_no": out_trade_no}
        )
        return answer

    async def barcode(self, channel: str, auth_code: str, *, userpaying: bool) -> None:
        script = {"outcome": "userpaying", "then": "paid", "after_queries": 1} if userpaying else {"outcome": "paid"}
        await self.call("POST", "/codepay", {"channel": channel, "auth_code": auth_code, **script})

    async def fault(self, **rule: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await self.call("POST", "/faults", rule)
        return answer

    async def hold_refund(self, channel: str, out_trade_no: str) -> None:
        await self.call("POST", "/refunds/hold", {"channel": channel, "out_trade_no": out_trade_no})

    async def release_refunds(self, channel: str, out_refund_no: str, state: str = "SUCCESS") -> list[str]:
        answer = await self.call(
            "POST", "/refunds/release", {"channel": channel, "out_refund_no": out_refund_no, "state": state}
        )
        return list(answer["released"])

    async def trades(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", "/trades"))["trades"])

    async def refunds(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", "/refunds"))["refunds"])

    async def notifications(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", "/notifications"))["notifications"])


class HisOperator(AdminApi):
    """The HIS sandbox's admin API: its fixtures, its books, and its faults."""

    async def load(self, fixtures: dict[str, list[dict[str, Any]]], chunk: int = 2000) -> None:
        """In chunks, patients first (bills and inpatients name them)."""
        for kind in ("patients", "schedules", "bills", "inpatients"):
            rows = fixtures.get(kind, [])
            for start in range(0, len(rows), chunk):
                await self.call("POST", "/fixtures", {kind: rows[start : start + chunk]})

    async def fault(self, **rule: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await self.call("POST", "/faults", rule)
        return answer

    async def faults(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", "/faults"))["faults"])

    async def clear(self) -> int:
        return int((await self.call("DELETE", "/faults"))["cleared"])

    async def ledger(self) -> dict[str, list[dict[str, Any]]]:
        answer: dict[str, list[dict[str, Any]]] = await self.call("GET", "/ledger")
        return answer

    async def applications(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", "/applications"))["applications"])


class Kiosk:
    """A self-service kiosk on the hospital's intranet, which locks a registration slot at the HIS itself (the
    SOAP service's ``LockRegistration``) before the patient pays through the platform."""

    def __init__(self, soap_url: str, session: aiohttp.ClientSession) -> None:
        self.soap_url = soap_url
        self.session = session

    async def lock(self, trade_no: str, patient_id: str, schedule_id: str) -> str:
        inner = (
            f"<Request><TradeNo>{escape(trade_no)}</TradeNo><PatientId>{escape(patient_id)}</PatientId>"
            f"<ScheduleId>{escape(schedule_id)}</ScheduleId></Request>"
        )
        envelope = (
            '<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
            f'<soap:Body><LockRegistration xmlns="http://tempuri.org/"><inXml>{escape(inner)}</inXml>'
            "</LockRegistration></soap:Body></soap:Envelope>"
        )
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"http://tempuri.org/LockRegistration"'}
        async with self.session.post(self.soap_url, data=envelope.encode(), headers=headers) as resp:
            body = await resp.read()
        try:
            result = etree.fromstring(body, SAFE_XML).findtext(".//{http://tempuri.org/}LockRegistrationResult") or ""
            answer = etree.fromstring(result.encode(), SAFE_XML)
        except etree.XMLSyntaxError as exc:
            raise ActorError(f"the HIS answered LockRegistration with something that is not XML: {exc}") from None
        if answer.findtext("ResultCode") != "0":
            raise ActorError(f"the HIS refused to lock {schedule_id} for {patient_id}: {answer.findtext('ResultMsg')}")
        return answer.findtext("LockId") or ""
