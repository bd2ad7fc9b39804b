"""End to end on real wire protocols: the gateway's WeChat Pay channel (built from the config) against the
sandbox WeChat Pay server, whose notifier calls the gateway back; the real bridge agent over the sandbox HIS.
A patient pays a deposit, the HIS records it once, a partial refund goes HIS → WeChat → write-back."""

from __future__ import annotations

import aiohttp
import pytest

from sandbox.channels import start_sandbox_channels
from sandbox.channels.wechat import WechatPlatform
from tests.gateway.saga_helpers import get
from tests.support.channelrig import wechat_config, wechat_settings, write_wechat_trust
from tests.support.gateway_rig import eventually, order_body
from tests.support.rig import free_port


@pytest.fixture(scope="module")
def platform():
    return WechatPlatform.generate("1230000109")


@pytest.fixture
async def wechat_sandbox(tmp_path, platform):
    channels = await start_sandbox_channels(wechat=wechat_settings(platform=platform), db_path=tmp_path / "ch.sqlite3")
    yield channels
    await channels.close()


async def test_pay_commit_refund_writeback_over_the_wechat_sandbox(
    gateway_factory, api_factory, his_link, his, wechat_sandbox, tmp_path, db_url
):
    trust = write_wechat_trust(wechat_sandbox, tmp_path / "trust")
    settings = wechat_config(wechat_sandbox, trust).model_dump(mode="json", exclude={"channel"})
    running = await gateway_factory(
        db_url, his=his_link, run_workers=True, port=free_port(), merchant_settings=settings,
        workers={"retry_base_s": 0.2, "his_poll_s": 0.2},
    )  # fmt: skip
    client = api_factory(running)
    status, body = await client.call("POST", "/v1/orders", order_body("E2E-1", amount_fen=2000))
    assert status == 201 and body["order"]["pay_params"]["code_url"].startswith("weixin://")
    out_trade_no = body["order"]["out_trade_no"]

    async with aiohttp.ClientSession() as session:
        payload = {"channel": "wechat", "out_trade_no": out_trade_no}
        async with session.post(wechat_sandbox.admin_url + "/payer/pay", json=payload) as resp:
            assert resp.status == 201, await resp.text()

    async def completed() -> bool:
        return (await get(client, "E2E-1"))["order"]["status"] == "completed"

    await eventually(completed, what="the order completed through the callback and the HIS")
    order = (await get(client, "E2E-1"))["order"]
    assert order["paid_fen"] == 2000 and his.state.receipts_for(out_trade_no) == [order["his"]["receipt_no"]]

    status, body = await client.call(
        "POST", "/v1/orders/E2E-1/refunds", {"business_refund_no": "E2E-1-r1", "amount_fen": 500, "reason": "医保"}
    )
    assert status == 201 and body["refund"]["state"] in ("refunding", "succeeded", "completed")

    async def refunded() -> bool:
        _, body = await client.call("GET", "/v1/refunds/E2E-1-r1")
        return body["refund"]["state"] == "completed"

    await eventually(refunded, what="the refund written back to the HIS")
    assert his.state.application_count("WritebackRefund") == 1
    assert (await get(client, "E2E-1"))["order"]["refunded_fen"] == 500
