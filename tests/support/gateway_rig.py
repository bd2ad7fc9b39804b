"""Building blocks for gateway tests and benchmarks: keys, a config, a signed API client, and a way to run the
workers to quiescence without sleeping."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa

from bridge import protocol
from gateway.client import GatewayClient
from gateway.config import GatewayConfig, parse_config
from gateway.runtime import Gateway
from gateway.store.db import Database
from gateway.store.tables import channel_events, notifications, orders, refunds

HOSPITAL = "H001"
APP_ID = "kiosk-1"
MERCHANT = "wx1"


@dataclass(frozen=True)
class GatewayKeys:
    gateway: protocol.SigningKey
    app: protocol.SigningKey
    gateway_key_path: Path
    app_pub_path: Path


def make_keys(directory: Path) -> GatewayKeys:
    directory.mkdir(parents=True, exist_ok=True)
    gateway = protocol.generate_ed25519("gateway")
    app = protocol.generate_ed25519(APP_ID)
    (directory / "gateway.pem").write_bytes(protocol.private_pem(gateway))
    (directory / "app.pub").write_bytes(app.public().public_pem())
    return GatewayKeys(gateway, app, directory / "gateway.pem", directory / "app.pub")


def gateway_config(
    directory: Path,
    keys: GatewayKeys,
    db_url: str,
    *,
    refund_policy: str = "finance",
    notify_url: str | None = None,
    workers: dict[str, Any] | None = None,
    notifications_cfg: dict[str, Any] | None = None,
    port: int = 0,
    merchant_settings: dict[str, Any] | None = None,
    channel_name: str = "wechat",
    server: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    app: dict[str, Any] | None = None,
    console: dict[str, Any] | None = None,
) -> GatewayConfig:
    """A one-hospital config; ``merchant_settings`` are the channel's own keys (built by ``build_channel``);
    ``server``, ``metrics`` and ``app`` replace keys of those sections (of the app: its entry)."""
    raw: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port or 1}", **(server or {})},
        "database": {"url": db_url},
        "signing": {"key_id": "gateway", "key": str(keys.gateway_key_path)},
        "workers": {"poll_interval_s": 0.05, "pending_query_after_s": 0, **(workers or {})},
        # the test receivers and scrapers are on loopback, which a real gateway refuses unless told
        "notifications": {"timeout_s": 5, "allow_addresses": ["127.0.0.0/8"], **(notifications_cfg or {})},
        "metrics": metrics if metrics is not None else {"allow": ["127.0.0.1/32"]},
        "hospitals": [
            {
                "id": HOSPITAL,
                "name": "Test hospital",
                "refund_policy": refund_policy,
                "apps": [
                    {"app_id": APP_ID, "public_key": str(keys.app_pub_path), "notify_url": notify_url, **(app or {})}
                ],
            }
        ],
        "merchants": [{"id": MERCHANT, "channel": channel_name, "hospital": HOSPITAL, **(merchant_settings or {})}],
        "logging": {"level": "warning"},
        "recon": {"enabled": False},
    }
    if console is not None:
        raw["console"] = console
    return parse_config(raw, base=directory)


class ApiClient:
    """A hospital app, as the tests play one: ``GatewayClient`` (signs every request with its key, refuses answers
    the gateway did not sign), answering every status instead of raising, and taking headers made by hand for the
    tests of the envelope itself."""

    def __init__(self, base_url: str, key: protocol.SigningKey, gateway_key: protocol.VerifyKey) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.gateway_key = gateway_key
        self.client = GatewayClient(self.base_url, app_key=key, gateway_key=gateway_key, retries=0)
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.client.close()
        await self.session.close()

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        if headers is None:
            return await self.client.send(method, path, body)
        raw = json.dumps(body).encode() if body is not None else b""
        async with self.session.request(
            method, self.base_url + path, data=raw, headers={**headers, "Content-Type": "application/json"}
        ) as resp:
            data = await resp.read()
            protocol.verify_response(self.gateway_key, resp.status, headers[protocol.HEADER_NONCE], resp.headers, data)
            return resp.status, json.loads(data)


def order_body(no: str, *, amount_fen: int = 100, business_type: str = "prepay", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "business_order_no": no,
        "business_type": business_type,
        "scene": "native",
        "channel": "wechat",
        "amount_fen": amount_fen,
        "subject": "住院预交金",
        "patient_id": "P0003",
    }
    if business_type == "prepay":
        body["inpatient_no"] = "Z0001"
    body.update(extra)
    return body


async def make_due(db: Database) -> None:
    """Bring every scheduled step forward to now (instead of sleeping through a backoff)."""
    now = dt.datetime.now(dt.UTC)
    async with db.write() as conn:
        for table in (orders, refunds, channel_events, notifications):
            values: dict[str, Any] = {"due_at": now}
            if "leased_until" in table.c:
                values["leased_until"] = None
            await conn.execute(sa.update(table).where(table.c.due_at.is_not(None)).values(**values))


async def drain(gateway: Gateway, *, rounds: int = 50, skip: tuple[str, ...] = ("outbox",)) -> None:
    """Run the workers until a whole pass claims nothing. Only what is due now runs; the outbox is left alone
    unless asked for (most tests read it, not deliver it)."""
    for _ in range(rounds):
        claimed = 0
        for worker in gateway.workers:
            if worker.name not in skip:
                claimed += await worker.run_once()
        if not claimed:
            return
    raise AssertionError(f"workers still busy after {rounds} passes")


def new_no(prefix: str = "B") -> str:
    return f"{prefix}{secrets.token_hex(6)}"


class ApprovingHis:
    """A HIS that records every write and approves every refund in full: with it, only the gateway's own check
    stands between concurrent refunds and an over-refund."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []

    async def write(self, operation: str, params: dict[str, Any]) -> Any:
        from gateway.his import HisAnswer

        self.writes.append((operation, params))
        if operation == "refund.apply":
            return HisAnswer("done", {"refundable_fen": 10**9, "his_refund_id": f"HR-{len(self.writes)}"})
        if operation == "registration.lock":
            return HisAnswer("done", {"lock_id": f"LK-{len(self.writes)}", "amount_fen": 1000})
        if operation == "registration.unlock":
            return HisAnswer("done", {"unlocked": True})
        return HisAnswer("done", {"receipt_no": f"RC-{len(self.writes)}"})

    async def read(self, operation: str, params: dict[str, Any]) -> Any:
        from gateway.his import HisAnswer

        return HisAnswer("done", {"found": False} if operation == "patient.query" else {"bills": []})

    async def status(self, request_id: str) -> Any:
        return None

    async def close(self) -> None:
        return None


class NotifyReceiver:
    """A business system's notify endpoint: verifies the gateway's signature, counts every event id, and
    answers ``fail_status`` while it is set."""

    def __init__(self, gateway_key: protocol.VerifyKey, *, delay_s: float = 0.0) -> None:
        self.gateway_key = gateway_key
        self.delay_s = delay_s
        self.received: list[int] = []
        self.bad_signatures = 0
        self.fail_status: int | None = None
        self.url = ""
        self._runner: Any = None

    async def start(self) -> NotifyReceiver:
        import asyncio

        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            try:
                protocol.verify_request(
                    {self.gateway_key.key_id: self.gateway_key}, "POST", request.path_qs, request.headers, body
                )
            except protocol.EnvelopeError:
                self.bad_signatures += 1
                return web.Response(status=401)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.fail_status is not None:
                return web.Response(status=self.fail_status)
            self.received.append(json.loads(body)["id"])
            return web.Response(text="success")

        app = web.Application()
        app.router.add_post("/his/notify", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/his/notify?app=kiosk-1"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def eventually(check: Any, *, timeout_s: float = 60, what: str = "condition") -> None:
    """Wait for an async ``check`` to become true: polls, and fails with ``what`` after ``timeout_s``."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
