"""Tenants changed through the CLI and the console while two ``his-gateway serve`` processes on one PostgreSQL
serve an app's traffic: a hospital, merchant and app added from nothing start working on both instances
without a restart; a key rotated in the console works beside the old one, which works until the retirement
time the CLI gave it and not after; a disabled app is refused on both, and enabled again; a disabled merchant
takes no new orders. Every change is in the audit log under who made it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
import sqlalchemy as sa

from bridge import protocol
from gateway.store.db import Database
from gateway.store.tables import audit_log
from tests.support.channelrig import wechat_config, write_wechat_trust
from tests.support.console_rig import ConsoleClient
from tests.support.gateway_rig import ApiClient, eventually, order_body
from tests.support.platform_rig import cli, spawn_gateways

PASSWORD = "an admin's long passphrase"


class Traffic:
    """An app paying on both instances the whole time: every answer is kept, and none may be a 5xx."""

    def __init__(self, clients: list[ApiClient]) -> None:
        self.clients = clients
        self.statuses: list[tuple[int, str]] = []
        self.n = 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for client in self.clients:
                self.n += 1
                status, body = await client.call("POST", "/v1/orders", order_body(f"T-{self.n:05d}"))
                self.statuses.append((status, body.get("error", {}).get("code", "")))
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def statuses(clients: list[ApiClient], no: str) -> list[tuple[int, str]]:
    out = []
    for i, client in enumerate(clients):
        status, body = await client.call("POST", "/v1/orders", order_body(f"{no}-{i}"))
        out.append((status, body.get("error", {}).get("code", "")))
    return out


async def test_tenants_change_on_two_live_instances(tmp_path, keys, pg_url, wechat_sandbox):
    trust = write_wechat_trust(wechat_sandbox, tmp_path / "trust")
    settings = tmp_path / "wx1.json"
    settings.write_text(json.dumps(wechat_config(wechat_sandbox, trust).model_dump(mode="json", exclude={"channel"})))
    old = protocol.generate_ed25519("app-1")
    new = protocol.generate_ed25519("app-1")
    (tmp_path / "old.pub").write_bytes(old.public().public_pem())
    (tmp_path / "new.pub").write_bytes(new.public().public_pem())
    (tmp_path / "admin.pw").write_text(PASSWORD + "\n")
    gateways = spawn_gateways(tmp_path, 2, db_url=pg_url, signing_key=keys.gateway_key_path)
    config = gateways[0].config
    traffic: Traffic | None = None
    console = None
    clients: list[ApiClient] = []
    db = Database(pg_url)
    try:
        for g in gateways:
            await g.ready()
        await cli(config, "hospitals", "add", "H001", "--name", "测试医院")
        await cli(config, "merchants", "add", "wx1", "--hospital", "H001", "--channel", "wechat",
                  "--settings", str(settings))  # fmt: skip
        await cli(config, "apps", "add", "app-1", "--hospital", "H001", "--public-key", str(tmp_path / "old.pub"),
                  "--allow", "orders,refunds")  # fmt: skip
        await cli(config, "users", "add", "--username", "admin1", "--role", "admin",
                  "--password-file", str(tmp_path / "admin.pw"))  # fmt: skip

        gw_key = keys.gateway.public()
        with_old = [ApiClient(g.url, old, gw_key) for g in gateways]
        with_new = [ApiClient(g.url, new, gw_key) for g in gateways]
        clients = [*with_old, *with_new]

        async def both_take_orders() -> bool:
            return await statuses(with_old, f"UP-{dt.datetime.now().timestamp()}") == [(201, "")] * 2

        await eventually(both_take_orders, timeout_s=30, what="both instances built the new merchant's channel")
        traffic = Traffic(with_old)
        traffic.start()

        # The console rotates the key: both keys work on both instances.
        console = ConsoleClient(gateways[0].url)
        assert await console.login("admin1", PASSWORD) == 200
        status, page, _ = await console.post(
            "/admin/apps/app-1/keys", {"public_key": new.public().public_pem().decode(), "overlap_days": "7"}
        )
        assert status == 200 and 'id="flash"' in page, page[-2000:]
        assert await statuses(with_new, "NEW-1") == [(201, "")] * 2
        assert await statuses(with_old, "OLD-1") == [(201, "")] * 2

        # The CLI retires the old key a few seconds from now: it works until then, and not after.
        shown = json.loads((await cli(config, "apps", "show", "app-1", "--json")).out)
        old_name = next(k["name"] for k in shown["keys"] if k["retire_at"] is not None)
        retire_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
        await cli(config, "apps", "retire-key", "app-1", old_name, "--at", retire_at.isoformat())
        assert await statuses(with_old, "OLD-2") == [(201, "")] * 2
        assert dt.datetime.now(dt.UTC) < retire_at, "the old key was still before its retirement just now"
        await asyncio.sleep(max(0.0, (retire_at - dt.datetime.now(dt.UTC)).total_seconds()) + 0.2)
        assert await statuses(with_old, "OLD-3") == [(401, "key_not_valid")] * 2
        assert await statuses(with_new, "NEW-2") == [(201, "")] * 2
        await traffic.stop()
        seen = list(traffic.statuses)
        traffic = Traffic(with_new)
        traffic.start()

        # Disabled in the console: refused on both at once; enabled by the CLI: back on both.
        status, page, _ = await console.post("/admin/apps/app-1/enabled", {"enabled": "0"})
        assert status == 200 and 'id="state"' in page
        assert await statuses(with_new, "OFF-1") == [(403, "app_disabled")] * 2
        await cli(config, "apps", "enable", "app-1")
        assert await statuses(with_new, "ON-1") == [(201, "")] * 2

        # A disabled merchant takes no new orders on either instance.
        await cli(config, "merchants", "disable", "wx1")
        assert await statuses(with_new, "NOMERCH") == [(422, "no_merchant")] * 2
        await traffic.stop()
        seen += traffic.statuses
        traffic = None
        assert len(seen) > 20 and all(s < 500 for s, _ in seen), "no instance failed a request"
        assert {code for s, code in seen if s >= 400} <= {"key_not_valid", "app_disabled", "no_merchant"}

        async with db.read() as conn:
            rows = (await conn.execute(sa.select(audit_log.c.actor, audit_log.c.action).order_by(audit_log.c.id))).all()
        changes = [
            (a.split(":")[0], action) for a, action in rows if action.split(".")[0] in ("hospital", "app", "merchant")
        ]
        assert changes == [
            ("cli", "hospital.add"), ("cli", "merchant.add"), ("cli", "app.add"), ("console", "app.key_added"),
            ("cli", "app.key_retired"), ("console", "app.disable"), ("cli", "app.enable"), ("cli", "merchant.disable"),
        ]  # fmt: skip
        for g in gateways:
            assert "tenants_reloaded" in g.tail(200_000)
    finally:
        if traffic is not None:
            await traffic.stop()
        if console is not None:
            await console.close()
        await db.close()
        for client in clients:
            await client.close()
        for g in gateways:
            g.stop()
