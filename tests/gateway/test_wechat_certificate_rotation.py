"""WeChat Pay rotates its platform certificate mid-day, with two gateway instances on one database: the
scheduled refresh runs on one instance (whichever claims it), the other takes up the new certificate from the
database, and every callback signed with the new certificate is accepted at its first delivery — including
one signed by a certificate WeChat switched to before any refresh found it. The public-key mode and the
certificate mode work side by side (a merchant migrating to the WeChat Pay public key trusts both)."""

from __future__ import annotations

import aiohttp
import pytest
import sqlalchemy as sa

from gateway import channel_trust
from gateway.model import utcnow
from gateway.store import channel_state
from gateway.store.channel_tables import channel_key_refresh
from sandbox.channels import start_sandbox_channels
from sandbox.channels.wechat import WechatPlatform
from tests.gateway.saga_helpers import get
from tests.support.channelrig import WECHAT_MCHID, first_answers, wechat_config, wechat_settings, write_wechat_trust
from tests.support.gateway_rig import MERCHANT, eventually, order_body
from tests.support.rig import free_port


@pytest.fixture
async def rotating_sandbox(tmp_path):
    """A platform identity of its own: this test rotates it."""
    channels = await start_sandbox_channels(
        wechat=wechat_settings(platform=WechatPlatform.generate(WECHAT_MCHID)), db_path=tmp_path / "ch.sqlite3"
    )
    yield channels
    await channels.close()


async def _admin(sandbox, path: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as http, http.post(sandbox.admin_url + path, json=body) as resp:
        data = await resp.json()
        assert resp.status < 300, data
        return data


async def _make_due(db) -> None:
    async with db.write() as conn:
        await conn.execute(sa.update(channel_key_refresh).values(due_at=utcnow()))


async def test_platform_certificate_rotated_mid_day(
    gateway_factory, api_factory, his_link, rotating_sandbox, tmp_path, db_url
):
    sandbox = rotating_sandbox
    trust = write_wechat_trust(sandbox, tmp_path / "trust")
    settings = wechat_config(sandbox, trust, mode="both").model_dump(mode="json", exclude={"channel"})
    kwargs = {"his": his_link, "merchant_settings": settings, "workers": {"retry_base_s": 0.2, "his_poll_s": 0.2}}
    first = await gateway_factory(db_url, run_workers=True, port=free_port(), **kwargs)
    second = await gateway_factory(db_url, run_workers=True, port=free_port(), **kwargs)
    await channel_state.schedule_refresh(first.svc.db, [MERCHANT])

    async def paid(running, no: str, amount: int) -> None:
        client = api_factory(running)
        status, body = await client.call("POST", "/v1/orders", order_body(no, amount_fen=amount))
        assert status == 201, body
        await _admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": body["order"]["out_trade_no"]})

        async def completed() -> bool:
            return (await get(client, no))["order"]["status"] == "completed"

        await eventually(completed, what=f"{no} completed")

    await paid(first, "ROT-1", 100)

    rotated = await _admin(sandbox, "/wechat/rotate", {})
    new_serial = next(s for s in rotated["published"] if s != rotated["signing"])
    await _make_due(first.svc.db)
    refreshed = await channel_trust.refresh_due(first.svc)
    assert refreshed == [MERCHANT]
    assert await channel_state.claim_refresh(second.svc.db, lease_s=60) == [], "not due again for the other one"
    second_channel = second.svc.channels[MERCHANT]
    assert new_serial not in second_channel.verifier.serials  # type: ignore[attr-defined]
    fetched = second_channel._last_fetch  # type: ignore[attr-defined]
    await channel_trust.reload_all(second.svc)
    assert new_serial in second_channel.verifier.serials  # type: ignore[attr-defined]
    assert second_channel._last_fetch == fetched, "taken up from the database, not downloaded"  # type: ignore[attr-defined]

    await _admin(sandbox, "/wechat/rotate", {"serial": new_serial})
    await paid(second, "ROT-2", 200)
    await paid(first, "ROT-3", 300)

    surprise = await _admin(sandbox, "/wechat/rotate", {"activate": True})
    assert surprise["signing"] not in first.svc.channels[MERCHANT].verifier.serials  # type: ignore[attr-defined]
    await paid(first, "ROT-4", 400)

    await _admin(sandbox, "/wechat/signing", {"mode": "public_key"})
    await paid(second, "ROT-5", 500)
    await _admin(sandbox, "/wechat/signing", {"mode": "certificate"})
    await paid(first, "ROT-6", 600)

    deliveries = await first_answers(sandbox, "wechat", 6)
    answers = [(s.record_id, s.status, (s.answer or b"")[:120]) for s in sandbox.notifier.sent]
    assert all((d["status"], d["attempts"]) == ("delivered", 1) for d in deliveries), answers
