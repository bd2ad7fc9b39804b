"""End to end through the sandbox: the gateway's WeChat Pay channel against the sandbox WeChat Pay server, the
real bridge agent over the sandbox HIS. The HIS refuses a paid commit, so the money is held and the HIS has
no record; the day's reconciliation finds the over-collection; in the console a clerk proposes to refund it,
an approver approves, the money goes back through the sandbox channel the payment came in on, and the
exception closes with the refund's number as its reference."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from gateway.recon import exceptions as recon
from gateway.recon import run_reconciliation
from gateway.recon.normalize import shanghai_today
from sandbox.channels import start_sandbox_channels
from sandbox.channels.wechat import WechatPlatform
from tests.gateway.saga_helpers import get
from tests.support.channelrig import wechat_config, wechat_settings, write_wechat_trust
from tests.support.console_rig import ConsoleClient, add_staff
from tests.support.gateway_rig import HOSPITAL, eventually, order_body
from tests.support.rig import free_port


@pytest.fixture(scope="module")
def platform():
    return WechatPlatform.generate("1230000109")


@pytest.fixture
async def wechat_sandbox(tmp_path, platform):
    channels = await start_sandbox_channels(wechat=wechat_settings(platform=platform), db_path=tmp_path / "ch.sqlite3")
    yield channels
    await channels.close()


async def _admin(session: aiohttp.ClientSession, method: str, url: str, payload: Any = None) -> Any:
    async with session.request(method, url, json=payload) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def test_over_collection_refunded_through_the_sandbox_channel_after_two_people_agree(
    gateway_factory, api_factory, his_link, his, wechat_sandbox, tmp_path, db_url
):
    trust = write_wechat_trust(wechat_sandbox, tmp_path / "trust")
    settings = wechat_config(wechat_sandbox, trust).model_dump(mode="json", exclude={"channel"})
    running = await gateway_factory(
        db_url, his=his_link, run_workers=True, port=free_port(), merchant_settings=settings,
        workers={"retry_base_s": 0.2, "his_poll_s": 0.2, "pending_query_after_s": 3600},
    )  # fmt: skip
    running.gateway.cfg.recon.suspense_days = 0
    await add_staff(running.svc.db)
    client = api_factory(running)
    admin = wechat_sandbox.admin_url

    async with aiohttp.ClientSession() as session:
        await _admin(
            session, "POST", his.base_url + "/_admin/faults", {"operation": "CommitPrepay", "mode": "error", "count": 1}
        )
        status, body = await client.call("POST", "/v1/orders", order_body("C-HELD", amount_fen=1500))
        assert status == 201, body
        out_trade_no = body["order"]["out_trade_no"]
        await _admin(session, "POST", admin + "/payer/pay", {"channel": "wechat", "out_trade_no": out_trade_no})

        async def refused() -> bool:
            return (await get(client, "C-HELD"))["order"]["status"] == "his_rejected"

        await eventually(refused, what="the HIS refused the commit; the money is held for finance")

        day = shanghai_today()
        db = running.svc.db
        await run_reconciliation(db, running.gateway.cfg, HOSPITAL, day, channels=running.svc.channels, his=his_link)
        [exc] = await recon.list_exceptions(db, hospital=HOSPITAL, day=day, source="recon")
        [raised] = await recon.list_exceptions(db, hospital=HOSPITAL, day=day, source="gateway")
        assert raised["class"] == "his_rejected" and raised["entry_key"] == exc["entry_key"]
        assert exc["class"] == "over_collection" and exc["out_trade_no"] == out_trade_no and exc["status"] == "open"
        assert (exc["his_fen"], exc["platform_fen"], exc["channel_fen"]) == (None, 1500, 1500)

        clerk, approver = ConsoleClient(running.url), ConsoleClient(running.url)
        try:
            assert await clerk.login("clerk1") == 200
            status, page = await clerk.get(f"/exceptions/{exc['id']}")
            assert 'value="15.00"' in page, "the whole over-collection is suggested"
            status, page = await clerk.get(f"/records?q={out_trade_no}")
            assert status == 200 and 'id="ledgers"' in page
            assert '<section class="record his absent"' in page and '<section class="record channel"' in page
            status, page, _ = await clerk.post(
                f"/exceptions/{exc['id']}/propose", {"amount": "15.00", "reason": "HIS 拒收，原路退回"}
            )
            assert status == 200 and 'data-status="proposed"' in page
            status, page, _ = await clerk.post(f"/exceptions/{exc['id']}/approve", {})
            assert status == 403, "the clerk cannot approve (nor could anyone their own proposal)"
            assert await _admin(session, "GET", admin + "/refunds") == {"refunds": []}

            assert await approver.login("approver1") == 200
            await approver.get(f"/exceptions/{exc['id']}")
            status, page, _ = await approver.post(f"/exceptions/{exc['id']}/approve", {"note": "同意"})
            assert status == 200, page

            async def closed() -> bool:
                await approver.get(f"/exceptions/{exc['id']}")
                return (await recon.get_exception(db, exc["id"]))["status"] == "closed"

            await eventually(closed, what="the refund confirmed by the channel and the exception closed")
        finally:
            await clerk.close()
            await approver.close()

        [refund] = (await _admin(session, "GET", admin + "/refunds"))["refunds"]
        assert refund["out_trade_no"] == out_trade_no and refund["amount_fen"] == 1500
        assert refund["state"] == "SUCCESS" and refund["channel"] == "wechat"
        closed_row = await recon.get_exception(db, exc["id"])
        assert closed_row["reference"] == refund["out_refund_no"] and closed_row["handled_by"] == "console"
        order = (await get(client, "C-HELD"))["order"]
        assert order["refunded_fen"] == 1500
        assert his.state.application_count("ApplyRefund") == his.state.application_count("WritebackRefund") == 0
        assert re.match(r"F\d{12}", refund["out_refund_no"])
