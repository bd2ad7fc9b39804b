"""The payment saga against a real bridge agent and the sandbox HIS, and the gateway's real WeChat Pay channel
against the sandbox WeChat Pay server (failures injected through its admin API): pay first, then the HIS; every
failure ends in a defined state visible through the API, and the HIS records each payment exactly once."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from gateway.his import BridgeHis
from gateway.store.tables import orders
from sandbox.his.faults import FaultRule
from tests.gateway.saga_helpers import create, get, sandbox_paid_order, settle
from tests.support.gateway_rig import HOSPITAL, drain, eventually, make_due, order_body
from tests.support.rig import free_port, make_client


async def test_paid_order_is_committed_to_the_his_once_and_announced(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "PAY-1", amount_fen=500)
    assert order["status"] == "completed" and order["paid_fen"] == 500
    assert order["his"]["state"] == "done" and order["his"]["receipt_no"]
    assert his.state.receipts_for(order["out_trade_no"]) == [order["his"]["receipt_no"]]
    _status, events = await client.call("GET", "/v1/events")
    assert [e["type"] for e in events["events"]] == ["order.completed"]
    assert events["events"][0]["data"]["his"]["receipt_no"] == order["his"]["receipt_no"]


async def test_duplicate_callbacks_have_one_effect(sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await create(client, "PAY-DUP")
    await sandbox_admin.fault("wechat.payment", "duplicate", kind="notify", count=1)
    await sandbox_admin.pay(order["out_trade_no"])
    (record,) = await sandbox_admin.notifications("payment")
    await sandbox_admin.call("POST", f"/notifications/{record['id']}/resend")
    await sandbox_admin.quiet()
    await drain(running.gateway)
    await sandbox_admin.call("POST", f"/notifications/{record['id']}/resend")
    await settle(running, sandbox_admin)
    sent = [s for s in sandbox_admin.sandbox.notifier.sent if s.kind == "payment"]
    assert len(sent) == 4 and all(s.status is not None and 200 <= s.status < 300 for s in sent)
    assert (await get(client, "PAY-DUP"))["order"]["status"] == "completed"
    assert his.state.application_count("CommitPrepay", order["out_trade_no"]) == 1
    _, events = await client.call("GET", "/v1/events")
    assert [e["type"] for e in events["events"]] == ["order.completed"]


async def test_a_forged_callback_is_refused_and_changes_nothing(
    sandbox_gateway, api_factory, sandbox_admin, his_link, sqlite_url
):
    running = await sandbox_gateway(sqlite_url, his=his_link)
    client = api_factory(running)
    order = await create(client, "PAY-FORGED")
    await sandbox_admin.fault("wechat.payment", "bad_signature", kind="notify", count=1)
    await sandbox_admin.pay(order["out_trade_no"])

    async def refused() -> bool:
        records = await sandbox_admin.notifications("payment")
        return bool(records) and records[0]["attempts"] >= 1

    await eventually(refused, timeout_s=20, what="the forged callback delivered")
    (record,) = await sandbox_admin.notifications("payment")
    assert record["status"] == "pending" and record["last_status"] == 500
    await drain(running.gateway, skip=("outbox", "orders"))
    assert (await get(client, "PAY-FORGED"))["order"]["status"] == "paying"


async def test_bridge_down_leaves_the_order_paid_until_the_bridge_answers(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, dev_certs, db_url
):
    dead = BridgeHis(make_client(dev_certs, f"https://127.0.0.1:{free_port()}", retries=0))
    running = await sandbox_gateway(db_url, his=dead)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "PAY-BRIDGE-DOWN")
    assert order["status"] == "paid" and order["his"]["state"] == "none"
    assert his.state.application_count() == 0
    running.svc.his[HOSPITAL] = his_link
    await dead.close()
    await make_due(running.svc.db)
    await drain(running.gateway)
    order = (await get(client, "PAY-BRIDGE-DOWN"))["order"]
    assert order["status"] == "completed" and his.state.application_count("CommitPrepay") == 1


async def test_his_in_doubt_is_resolved_by_the_bridge_without_a_second_commit(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    his.faults.add(FaultRule(operation="CommitPrepay", mode="drop_reply", count=1))
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "PAY-DOUBT")
    for _ in range(20):
        if order["status"] == "completed":
            break
        await his_link.client.wait_for(f"{order['out_trade_no']}-commit", timeout_s=10, poll_s=0.1)
        await make_due(running.svc.db)
        await drain(running.gateway)
        order = (await get(client, "PAY-DOUBT"))["order"]
    assert order["status"] == "completed"
    assert his.state.receipts_for(order["out_trade_no"]) == [order["his"]["receipt_no"]]


async def test_a_pending_commit_is_polled_until_done(
    sandbox_gateway, api_factory, sandbox_admin, bridge_factory, his, dev_certs, sqlite_url
):
    agent = await bridge_factory(dispatch={"sync_deadline_s": 0.1})
    link = BridgeHis(make_client(dev_certs, agent.api_url))
    his.faults.add(FaultRule(operation="CommitPrepay", mode="latency", latency_ms=800, count=1))
    try:
        running = await sandbox_gateway(sqlite_url, his=link)
        client = api_factory(running)
        order = await sandbox_paid_order(running, client, sandbox_admin, "PAY-PENDING")
        assert order["status"] == "paid" and order["his"]["state"] == "pending"
        await link.client.wait_for(f"{order['out_trade_no']}-commit", timeout_s=30, poll_s=0.1)
        await make_due(running.svc.db)
        await drain(running.gateway)
        order = (await get(client, "PAY-PENDING"))["order"]
        assert order["status"] == "completed" and his.state.application_count("CommitPrepay") == 1
    finally:
        await link.close()


async def test_his_refusal_is_held_for_finance_by_default(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(
        running, client, sandbox_admin, "PAY-REFUSED", business_type="charge", bill_nos=["B0005"], amount_fen=1
    )
    assert order["status"] == "his_rejected" and order["exception"] == "his_rejected"
    assert order["his"]["error"]["code"] == "2003"
    assert (await get(client, "PAY-REFUSED"))["refunds"] == []
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 0
    _, listed = await client.call("GET", "/v1/orders?exceptions=1")
    assert [o["business_order_no"] for o in listed["orders"]] == ["PAY-REFUSED"]


async def test_his_refusal_is_refunded_at_once_under_auto_refund(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link, refund_policy="auto_refund")
    client = api_factory(running)
    order = await sandbox_paid_order(
        running, client, sandbox_admin, "PAY-AUTO", business_type="charge", bill_nos=["B0005"], amount_fen=1
    )
    assert order["status"] == "his_rejected"
    refunds = (await get(client, "PAY-AUTO"))["refunds"]
    assert [(r["origin"], r["state"], r["amount_fen"]) for r in refunds] == [("policy", "completed", 1)]
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 1
    assert [r["state"] for r in await sandbox_admin.refunds(order["out_trade_no"])] == ["SUCCESS"]
    assert his.state.application_count("ApplyRefund") == 0
    assert (await get(client, "PAY-AUTO"))["order"]["refunded_fen"] == 1


async def test_channel_down_at_create_is_retried_with_the_same_order(
    sandbox_gateway, api_factory, sandbox_admin, sqlite_url
):
    running = await sandbox_gateway(sqlite_url)
    client = api_factory(running)
    await sandbox_admin.fault("wechat.create.native", "error", status=500, code="SYSTEM_ERROR")
    status, body = await client.call("POST", "/v1/orders", order_body("PAY-CH-DOWN"))
    assert status == 503 and body["error"]["code"] == "channel_unavailable"
    assert body["order"]["status"] == "created"
    await sandbox_admin.clear_faults()
    status, body = await client.call("POST", "/v1/orders", order_body("PAY-CH-DOWN"))
    assert status == 200 and body["order"]["status"] == "paying" and body["order"]["pay_params"]
    assert [t["out_trade_no"] for t in await sandbox_admin.trades()] == [body["order"]["out_trade_no"]]


async def test_compensation_finds_a_payment_whose_callback_never_came(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await create(client, "PAY-NO-CALLBACK")
    await sandbox_admin.fault("wechat.payment", "lost", kind="notify", count=1)
    await sandbox_admin.pay(order["out_trade_no"])
    assert [n["status"] for n in await sandbox_admin.notifications("payment")] == ["lost"]
    await make_due(running.svc.db)
    await drain(running.gateway)
    order = (await get(client, "PAY-NO-CALLBACK"))["order"]
    assert order["status"] == "completed" and his.state.application_count("CommitPrepay") == 1


async def test_an_expired_order_is_closed_only_on_the_channels_word(
    sandbox_gateway, api_factory, sandbox_admin, db_url
):
    running = await sandbox_gateway(db_url)
    client = api_factory(running)
    order = await create(client, "PAY-EXPIRE", expire_s=60)
    await sandbox_admin.fault("wechat.close", "error", status=500, code="SYSTEM_ERROR")
    await _expire(running, order["out_trade_no"])
    await drain(running.gateway)
    assert (await get(client, "PAY-EXPIRE"))["order"]["status"] == "paying"
    assert (await sandbox_admin.trade(order["out_trade_no"]))["state"] == "NOTPAY"
    await sandbox_admin.clear_faults()
    await make_due(running.svc.db)
    await drain(running.gateway)
    assert (await get(client, "PAY-EXPIRE"))["order"]["status"] == "closed"
    assert (await sandbox_admin.trade(order["out_trade_no"]))["state"] == "CLOSED"
    _, events = await client.call("GET", "/v1/events")
    assert [e["type"] for e in events["events"]] == ["order.closed"]


async def test_closing_a_paid_trade_makes_it_paid_not_closed(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, sqlite_url
):
    running = await sandbox_gateway(sqlite_url, his=his_link)
    client = api_factory(running)
    order = await create(client, "PAY-CLOSE-RACE")
    await sandbox_admin.fault("wechat.payment", "lost", kind="notify", count=1)
    await sandbox_admin.pay(order["out_trade_no"])
    status, body = await client.call("POST", "/v1/orders/PAY-CLOSE-RACE/close")
    assert status == 200 and body["order"]["status"] == "paid"
    await drain(running.gateway)
    assert (await get(client, "PAY-CLOSE-RACE"))["order"]["status"] == "completed"
    assert (await sandbox_admin.trade(order["out_trade_no"]))["state"] == "SUCCESS"


async def test_a_success_after_close_is_an_exception_not_a_loss(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link, refund_policy="auto_refund")
    client = api_factory(running)
    order = await create(client, "PAY-LATE")
    _status, body = await client.call("POST", "/v1/orders/PAY-LATE/close")
    assert body["order"]["status"] == "closed"
    assert (await sandbox_admin.trade(order["out_trade_no"]))["state"] == "CLOSED"
    await sandbox_admin.pay(order["out_trade_no"], force=True)
    await settle(running, sandbox_admin)
    view = await get(client, "PAY-LATE")
    assert view["order"]["status"] == "closed" and view["order"]["exception"] == "paid_after_close"
    assert view["order"]["paid_fen"] == 100 and view["order"]["his"]["state"] == "held"
    assert [(r["origin"], r["state"]) for r in view["refunds"]] == [("policy", "completed")]
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 100
    assert his.state.application_count() == 0
    _, events = await client.call("GET", "/v1/events")
    assert [e["type"] for e in events["events"]] == ["order.closed", "order.exception", "refund.succeeded"]


async def _expire(running, out_trade_no: str) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    async with running.svc.db.write() as conn:
        await conn.execute(
            sa.update(orders).where(orders.c.out_trade_no == out_trade_no).values(expires_at=past, due_at=past)
        )


async def test_a_create_lost_in_transit_is_found_by_querying(sandbox_gateway, api_factory, sandbox_admin, sqlite_url):
    running = await sandbox_gateway(sqlite_url)
    client = api_factory(running)
    await sandbox_admin.fault("wechat.create.native", "drop_after", count=1)
    status, body = await client.call("POST", "/v1/orders", order_body("PAY-CREATE-DOUBT"))
    assert status == 503 and body["order"]["status"] == "created"
    assert [t["state"] for t in await sandbox_admin.trades()] == ["NOTPAY"]
    await make_due(running.svc.db)
    await drain(running.gateway)
    assert (await get(client, "PAY-CREATE-DOUBT"))["order"]["status"] == "paying"
    status, body = await client.call("POST", "/v1/orders", order_body("PAY-CREATE-DOUBT"))
    assert status == 200 and body["order"]["pay_params"]["code_url"].startswith("weixin://")
    assert len(await sandbox_admin.trades()) == 1
