"""The daily reconciliation spread over ``his-gateway serve`` processes on one PostgreSQL, 50 hospitals each with
its merchant at the sandbox WeChat Pay and its agent link to a real agent over the sandbox HIS, all due at
once (as at 11:30): every hospital-day is run exactly once, the work is shared; and with three instances, one
killed with SIGKILL in the middle of its runs, the days it held are taken over once their leases run out —
the abandoned runs marked so — and still each day is done exactly once."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from gateway.config import BridgeLink, HospitalConfig, MerchantConfig
from gateway.recon.normalize import shanghai_today
from gateway.store import tenants as store
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from gateway.store.platform_tables import job_leases
from gateway.store.recon_tables import recon_runs
from tests.support.channelrig import wechat_config, write_wechat_trust
from tests.support.gateway_rig import eventually
from tests.support.platform_rig import GatewayProcess, spawn_gateways

HOSPITALS = 50


async def register(db: Database, dev_certs, bridge_url: str, settings: dict) -> list[str]:
    link = BridgeLink(
        url=bridge_url, ca=dev_certs.ca_cert, client_cert=dev_certs.client_cert, client_key=dev_certs.client_key,
        signing_key=dev_certs.platform_signing_key, bridge_key_id="bridge-H001",
        bridge_public_key=dev_certs.bridge_signing_pub, timeout_s=30, retries=0,
    )  # fmt: skip
    ids = [f"H{i:03d}" for i in range(1, HOSPITALS + 1)]
    for hospital in ids:
        await store.put_hospital(db, HospitalConfig(id=hospital, name=f"医院{hospital}", bridge=link), actor="test",
                                 source="import")  # fmt: skip
        merchant = MerchantConfig.model_validate(
            {**settings, "id": f"wx-{hospital}", "channel": "wechat", "hospital": hospital}
        )
        await store.put_merchant(db, merchant, actor="test", source="import")
    return ids


async def platform(tmp_path: Path, pg_url: str, dev_certs, bridge, wechat_sandbox) -> tuple[Database, list[str]]:
    trust = write_wechat_trust(wechat_sandbox, tmp_path / "trust")
    settings = json.loads(wechat_config(wechat_sandbox, trust).model_dump_json(exclude={"channel"}))
    db = Database(pg_url)
    await upgrade(db)
    return db, await register(db, dev_certs, bridge.api_url, settings)


def recon_section(*, concurrency: int, lease_s: float) -> str:
    return f"""
[recon]
at = "00:00"
concurrency = {concurrency}
lease_s = {lease_s}
retry_s = 2
"""


async def instance_id(g: GatewayProcess) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{g.url}/healthz") as resp:
        return str((await resp.json())["instance"])


async def runs(db: Database) -> list[sa.Row]:
    async with db.read() as conn:
        return list((await conn.execute(sa.select(recon_runs).where(recon_runs.c.trigger == "schedule"))).all())


async def leases_of(db: Database) -> list[sa.Row]:
    async with db.read() as conn:
        return list((await conn.execute(sa.select(job_leases).where(job_leases.c.job == "recon"))).all())


async def all_done(db: Database, hospitals: list[str]) -> bool:
    rows = await leases_of(db)
    return len(rows) == len(hospitals) and all(r.state == "done" for r in rows)


def assert_each_day_done_once(rows: list[sa.Row], hospitals: list[str], day: dt.date) -> None:
    done = Counter(r.hospital_id for r in rows if r.status == "done")
    assert done == Counter(hospitals), f"days run more or less than once: {done - Counter(hospitals)}"
    assert {r.day for r in rows} == {day}
    assert all(r.status == "done" or "abandoned" in (r.error or "") for r in rows), [
        (r.hospital_id, r.status, r.error) for r in rows if r.status != "done"
    ]


async def test_two_instances_run_every_hospital_day_once(tmp_path, keys, pg_url, dev_certs, bridge, wechat_sandbox):
    db, hospitals = await platform(tmp_path, pg_url, dev_certs, bridge, wechat_sandbox)
    gateways = spawn_gateways(
        tmp_path, 2, db_url=pg_url, signing_key=keys.gateway_key_path, extra=recon_section(concurrency=4, lease_s=20)
    )
    try:
        for g in gateways:
            await g.ready()
        ids = {await instance_id(g) for g in gateways}
        await eventually(lambda: all_done(db, hospitals), timeout_s=120, what="every hospital-day reconciled")
        yesterday = shanghai_today() - dt.timedelta(days=1)
        rows = await runs(db)
        assert_each_day_done_once(rows, hospitals, yesterday)
        assert len(rows) == HOSPITALS, "no run was abandoned or repeated"
        by_instance = Counter(r.instance for r in await leases_of(db))
        assert set(by_instance) == ids and all(n > 0 for n in by_instance.values()), by_instance
    finally:
        for g in gateways:
            g.stop()
        await db.close()


async def test_a_killed_instance_is_replaced_after_its_lease(
    tmp_path, keys, pg_url, dev_certs, his, bridge, wechat_sandbox
):
    db, hospitals = await platform(tmp_path, pg_url, dev_certs, bridge, wechat_sandbox)
    async with aiohttp.ClientSession() as admin:
        rule = {"operation": "FetchRecon", "mode": "latency", "latency_ms": 1500}
        async with admin.post(f"{his.base_url}/_admin/faults", json=rule) as resp:
            assert resp.status in (200, 201), await resp.text()
    lease_s = 4.0
    gateways = spawn_gateways(
        tmp_path, 3, db_url=pg_url, signing_key=keys.gateway_key_path,
        extra=recon_section(concurrency=3, lease_s=lease_s),
    )  # fmt: skip
    try:
        for g in gateways:
            await g.ready()
        victim = gateways[0]
        victim_id = await instance_id(victim)

        async def victim_mid_run() -> bool:
            held = [r for r in await leases_of(db) if r.instance == victim_id and r.state == "running"]
            return any(r.run_id is not None for r in held)

        await eventually(victim_mid_run, timeout_s=60, what="the victim holding days with runs under way")
        victim.kill()
        expiry = {
            r.hospital_id: r.lease_until
            for r in await leases_of(db)
            if r.instance == victim_id and r.state == "running"
        }
        held = set(expiry)
        assert held

        await eventually(lambda: all_done(db, hospitals), timeout_s=180, what="every hospital-day reconciled")
        yesterday = shanghai_today() - dt.timedelta(days=1)
        rows = await runs(db)
        assert_each_day_done_once(rows, hospitals, yesterday)
        abandoned = [r for r in rows if r.status == "failed"]
        assert {r.hospital_id for r in abandoned} == held
        assert all(f"instance {victim_id} lost its lease" in r.error for r in abandoned)
        final = {r.hospital_id: r for r in await leases_of(db)}
        for hospital in held:
            assert final[hospital].instance != victim_id and final[hospital].attempts == 2
            taken = next(r for r in rows if r.hospital_id == hospital and r.status == "done")
            assert taken.started_at >= expiry[hospital], "taken over once the lease ran out, not before"
        assert "recon_taken_over" in "".join(g.tail(1_000_000) for g in gateways[1:])
    finally:
        for g in gateways:
            g.stop()
        await db.close()
