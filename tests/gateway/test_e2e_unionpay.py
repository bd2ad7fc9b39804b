"""UnionPay end to end on real wire protocols: the gateway's UnionPay channel (built from the config, its order
times in the gateway's database) against the sandbox UnionPay, whose back-notifications call the gateway; the
real bridge agent over the sandbox HIS; T+1 reconciliation of the day against the sandbox's reconciliation file.

A patient pays a deposit by QR, gets two partial refunds (insurance) and then the rest; a second payment is
refunded in full the same day (a consume cancel); a captured notification replayed changes nothing; a tampered
one is refused; the day reconciles with no exception."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
import sqlalchemy as sa

from gateway.recon import run_reconciliation
from gateway.recon.normalize import SHANGHAI
from gateway.store.channel_tables import channel_order_times
from gateway.store.tables import channel_events
from sandbox.channels import start_sandbox_channels
from sandbox.channels.unionpay import UnionPayIdentity
from tests.gateway.saga_helpers import get
from tests.support.channelrig import unionpay_config, unionpay_key, unionpay_settings, write_unionpay_trust
from tests.support.gateway_rig import HOSPITAL, MERCHANT, eventually, order_body
from tests.support.rig import free_port


def channel_now() -> dt.datetime:
    """UnionPay's clock (the sandbox's and our client's): now, or two hours earlier after 22:00 Beijing time, so
    that no payment of the test falls after UnionPay's 23:00 settlement cut-off (or the 22:30 cancel limit) on
    another day than the HIS records it, whenever the test runs."""
    now = dt.datetime.now(SHANGHAI)
    return now - dt.timedelta(hours=2) if now.hour >= 22 else now


@pytest.fixture(scope="module")
def identity():
    return UnionPayIdentity.generate()


@pytest.fixture
async def up_sandbox(tmp_path, identity):
    key = unionpay_key(identity, tmp_path / "keys")
    channels = await start_sandbox_channels(
        unionpay=unionpay_settings(identity, [key]),
        db_path=tmp_path / "ch.sqlite3",
        refund_delay_s=0.01,
        clock=channel_now,
    )
    channels.test_key = key  # type: ignore[attr-defined]
    yield channels
    await channels.close()


async def _post(session: aiohttp.ClientSession, url: str, payload: dict) -> None:
    async with session.post(url, json=payload) as resp:
        assert resp.status in (200, 201), await resp.text()


async def _events(db) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(channel_events))).scalar_one())


async def test_a_unionpay_day(gateway_factory, api_factory, his_link, his, up_sandbox, tmp_path, db_url):
    trust = write_unionpay_trust(up_sandbox, tmp_path / "trust")
    settings = unionpay_config(up_sandbox, trust, [up_sandbox.test_key]).model_dump(mode="json", exclude={"channel"})
    running = await gateway_factory(
        db_url, his=his_link, run_workers=True, port=free_port(), merchant_settings=settings, channel_name="unionpay",
        workers={"retry_base_s": 0.2, "his_poll_s": 0.2, "pending_query_after_s": 3600},
    )  # fmt: skip
    channel = running.svc.channels[MERCHANT]
    channel.clock = channel_now  # type: ignore[attr-defined]
    client = api_factory(running)
    db = running.svc.db

    async def status_of(no: str) -> str:
        return (await get(client, no))["order"]["status"]

    async def pay(no: str, amount: int) -> str:
        status, body = await client.call("POST", "/v1/orders", order_body(no, amount_fen=amount, channel="unionpay"))
        assert status == 201, body
        assert body["order"]["pay_params"]["qr_code"].startswith("https://qr.95516.com/")
        out_trade_no = body["order"]["out_trade_no"]
        async with aiohttp.ClientSession() as session:
            await _post(
                session, up_sandbox.admin_url + "/payer/pay", {"channel": "unionpay", "out_trade_no": out_trade_no}
            )

        async def completed() -> bool:
            return await status_of(no) == "completed"

        await eventually(completed, what=f"{no} paid and recorded by the HIS")
        return out_trade_no

    async def refund(no: str, refund_no: str, amount: int) -> dict:
        status, body = await client.call(
            "POST",
            f"/v1/orders/{no}/refunds",
            {"business_refund_no": refund_no, "amount_fen": amount, "reason": "医保"},
        )
        assert status == 201, body

        async def written_back() -> bool:
            return (await client.call("GET", f"/v1/refunds/{refund_no}"))[1]["refund"]["state"] == "completed"

        await eventually(written_back, what=f"refund {refund_no} paid back and written to the HIS")
        return (await client.call("GET", f"/v1/refunds/{refund_no}"))[1]["refund"]

    deposit = await pay("UP-DEP-1", 3000)
    order = (await get(client, "UP-DEP-1"))["order"]
    assert order["paid_fen"] == 3000 and his.state.receipts_for(deposit) == [order["his"]["receipt_no"]]
    first = await refund("UP-DEP-1", "UP-DEP-1-r1", 1000)
    await refund("UP-DEP-1", "UP-DEP-1-r2", 500)
    await refund("UP-DEP-1", "UP-DEP-1-r3", 1500)
    assert (await get(client, "UP-DEP-1"))["order"]["refunded_fen"] == 3000
    assert his.state.application_count("WritebackRefund") == 3
    status, body = await client.call(
        "POST", "/v1/orders/UP-DEP-1/refunds", {"business_refund_no": "UP-DEP-1-r4", "amount_fen": 1}
    )
    assert status == 201, body

    async def refused() -> bool:
        return (await client.call("GET", "/v1/refunds/UP-DEP-1-r4"))[1]["refund"]["state"] == "rejected"

    await eventually(refused, what="a refund beyond what was paid refused")

    charge = await pay("UP-CHG-2", 800)
    cancel = await refund("UP-CHG-2", "UP-CHG-2-r1", 800)
    async with db.read() as conn:
        kinds = dict((await conn.execute(sa.select(channel_order_times.c.order_id, channel_order_times.c.kind))).all())
    assert kinds[charge] == "consume" and kinds[cancel["out_refund_no"]] == "cancel"
    assert kinds[first["out_refund_no"]] == "refund"

    sent = [
        s
        for s in up_sandbox.notifier.sent
        if s.kind == "payment" and dict(parse_qsl(s.body.decode()))["orderId"] == deposit
    ]
    captured = sent[0]
    before = await _events(db)
    async with aiohttp.ClientSession() as session:
        async with session.post(captured.url, data=captured.body, headers=captured.headers) as resp:
            assert resp.status == 200, "a replayed notification is acknowledged (UnionPay re-sends the same one)"
        fields = dict(parse_qsl(captured.body.decode()))
        tampered = urlencode(dict(fields, txnAmt="300000")).encode()
        async with session.post(captured.url, data=tampered, headers=captured.headers) as resp:
            assert resp.status != 200, "a tampered notification is refused"
    assert await _events(db) == before
    assert (await get(client, "UP-DEP-1"))["order"]["refunded_fen"] == 3000
    assert his.state.receipts_for(deposit) == [order["his"]["receipt_no"]]

    day = channel_now().date()
    summary = await run_reconciliation(
        db, running.gateway.cfg, HOSPITAL, day, channels=running.svc.channels, his=his_link
    )
    assert summary.exceptions == {}
    assert summary.counts["channel_count"] == 6 and summary.counts["matched"] == 6
