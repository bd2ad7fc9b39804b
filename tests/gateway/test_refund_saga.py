"""The refund saga against a real bridge agent and the sandbox HIS, and the gateway's real WeChat Pay channel
against the sandbox WeChat Pay server (refunds paid out asynchronously, failures injected through its admin API):
the HIS first, then the money, then the write-back; partial refunds add up to at most the payment; each failing
step ends in a defined state."""

from __future__ import annotations

from gateway.his import BridgeHis
from sandbox.his.faults import FaultRule
from tests.gateway.saga_helpers import get, sandbox_paid_order, settle
from tests.support.gateway_rig import HOSPITAL, order_body
from tests.support.rig import free_port, make_client


async def _refund(client, order_no: str, refund_no: str, amount_fen: int) -> tuple[int, dict]:
    status, body = await client.call(
        "POST", f"/v1/orders/{order_no}/refunds", {"business_refund_no": refund_no, "amount_fen": amount_fen}
    )
    return status, body.get("refund", body)


async def _refund_view(client, refund_no: str) -> dict:
    status, body = await client.call("GET", f"/v1/refunds/{refund_no}")
    assert status == 200, body
    return body["refund"]


async def test_partial_refunds_go_through_his_channel_and_writeback(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "RF-1", amount_fen=1000)
    status, first = await _refund(client, "RF-1", "RF-1-a", 300)
    assert status == 201 and first["state"] in ("refunding", "completed"), first
    await settle(running, sandbox_admin)
    first = await _refund_view(client, "RF-1-a")
    assert first["state"] == "completed", first
    assert first["his"]["refundable_fen"] == 1000 and first["his"]["receipt_no"]
    status, second = await _refund(client, "RF-1", "RF-1-b", 700)
    await settle(running, sandbox_admin)
    second = await _refund_view(client, "RF-1-b")
    assert second["state"] == "completed" and second["his"]["refundable_fen"] == 700
    status, third = await _refund(client, "RF-1", "RF-1-c", 1)
    assert third["state"] == "rejected" and "exceeds" in third["last_error"]
    assert his.state.application_count("ApplyRefund") == 2
    assert his.state.application_count("WritebackRefund") == 2
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 1000
    assert sorted(r["amount_fen"] for r in await sandbox_admin.refunds(order["out_trade_no"])) == [300, 700]
    view = await get(client, "RF-1")
    assert view["order"]["refunded_fen"] == 1000
    status, again = await _refund(client, "RF-1", "RF-1-a", 300)
    assert status == 200 and again["out_refund_no"] == first["out_refund_no"]
    status, _conflict = await _refund(client, "RF-1", "RF-1-a", 301)
    assert status == 409


async def test_his_refusing_the_refund_moves_no_money(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, sqlite_url
):
    running = await sandbox_gateway(sqlite_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "RF-HIS-NO", amount_fen=1000)
    his.state._db.execute("UPDATE inpatients SET balance_fen = 10 WHERE inpatient_no = 'Z0001'")
    _status, refund = await _refund(client, "RF-HIS-NO", "RF-HIS-NO-a", 500)
    assert refund["state"] == "rejected" and "3002" in refund["last_error"]
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 0
    assert await sandbox_admin.refunds() == []


async def test_channel_down_keeps_the_reservation_and_retries(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "RF-CH-DOWN", amount_fen=1000)
    await sandbox_admin.fault("wechat.refund", "error", status=429, code="FREQUENCY_LIMITED")
    _, refund = await _refund(client, "RF-CH-DOWN", "RF-CH-DOWN-a", 600)
    assert refund["state"] == "reserved"
    _, over = await _refund(client, "RF-CH-DOWN", "RF-CH-DOWN-b", 500)
    assert over["state"] == "rejected"
    assert await sandbox_admin.refunds() == []
    await sandbox_admin.clear_faults()
    await settle(running, sandbox_admin, due=True)
    assert (await _refund_view(client, "RF-CH-DOWN-a"))["state"] == "completed"
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 600


async def test_a_refund_lost_in_transit_is_queried_not_doubled(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "RF-DOUBT", amount_fen=1000)
    await sandbox_admin.fault("wechat.refund", "drop_after", count=1)
    _, refund = await _refund(client, "RF-DOUBT", "RF-DOUBT-a", 400)
    assert refund["state"] == "refunding"
    tripwire = await sandbox_admin.fault("wechat.refund", "error", status=403, code="NOT_ENOUGH")
    await settle(running, sandbox_admin, due=True)
    assert (await _refund_view(client, "RF-DOUBT-a"))["state"] == "completed"
    assert await sandbox_admin.fault_hits(tripwire["id"]) == 0, "the refund was sent again instead of queried"
    assert [r["amount_fen"] for r in await sandbox_admin.refunds(order["out_trade_no"])] == [400]
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 400


async def test_channel_refusal_is_an_exception_and_releases_the_reservation(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, sqlite_url
):
    running = await sandbox_gateway(sqlite_url, his=his_link)
    client = api_factory(running)
    await sandbox_paid_order(running, client, sandbox_admin, "RF-CH-NO", amount_fen=1000)
    await sandbox_admin.fault("wechat.refund", "error", status=403, code="NOT_ENOUGH", message="余额不足", count=1)
    _, refund = await _refund(client, "RF-CH-NO", "RF-CH-NO-a", 1000)
    assert refund["state"] == "failed" and refund["exception"] == "his_refund_not_paid"
    await _refund(client, "RF-CH-NO", "RF-CH-NO-b", 100)
    await settle(running, sandbox_admin)
    assert (await _refund_view(client, "RF-CH-NO-b"))["state"] in ("completed", "rejected")
    _, events = await client.call("GET", "/v1/events")
    assert "refund.failed" in [e["type"] for e in events["events"]]


async def test_processing_refund_completes_on_the_channel_callback(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    await sandbox_paid_order(running, client, sandbox_admin, "RF-CB", amount_fen=1000)
    await sandbox_admin.hold_refunds(1)
    _, refund = await _refund(client, "RF-CB", "RF-CB-a", 250)
    assert refund["state"] == "refunding"
    await sandbox_admin.fault("wechat.refund", "duplicate", kind="notify", count=1)
    assert await sandbox_admin.release_refunds(refund["out_refund_no"]) == [refund["out_refund_no"]]
    await settle(running, sandbox_admin)
    sent = [s for s in sandbox_admin.sandbox.notifier.sent if s.kind == "refund"]
    assert len(sent) == 2 and all(s.status is not None and 200 <= s.status < 300 for s in sent)
    assert (await _refund_view(client, "RF-CB-a"))["state"] == "completed"
    assert his.state.application_count("WritebackRefund") == 1
    assert (await get(client, "RF-CB"))["order"]["refunded_fen"] == 250


async def test_bridge_down_at_writeback_completes_later(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, dev_certs, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    await sandbox_paid_order(running, client, sandbox_admin, "RF-WB", amount_fen=1000)
    await sandbox_admin.hold_refunds(1)
    _, refund = await _refund(client, "RF-WB", "RF-WB-a", 100)
    dead = BridgeHis(make_client(dev_certs, f"https://127.0.0.1:{free_port()}", retries=0))
    running.svc.his[HOSPITAL] = dead
    await sandbox_admin.release_refunds(refund["out_refund_no"])
    await settle(running, sandbox_admin, due=True)
    body = await _refund_view(client, "RF-WB-a")
    assert body["state"] == "succeeded" and "bridge" in body["last_error"]
    running.svc.his[HOSPITAL] = his_link
    await dead.close()
    await settle(running, sandbox_admin, due=True)
    body = await _refund_view(client, "RF-WB-a")
    assert body["state"] == "completed" and body["his"]["receipt_no"]
    assert his.state.application_count("WritebackRefund") == 1


async def test_an_unpaid_order_is_not_refundable(sandbox_gateway, api_factory, sqlite_url):
    running = await sandbox_gateway(sqlite_url)
    client = api_factory(running)
    await client.call("POST", "/v1/orders", order_body("RF-UNPAID"))
    status, body = await _refund(client, "RF-UNPAID", "RF-UNPAID-a", 1)
    assert status == 409 and body["error"]["code"] == "not_refundable"


async def test_bridge_down_at_apply_waits_then_applies_once(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, dev_certs, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "RF-APPLY-DOWN", amount_fen=1000)
    dead = BridgeHis(make_client(dev_certs, f"https://127.0.0.1:{free_port()}", retries=0))
    running.svc.his[HOSPITAL] = dead
    _, refund = await _refund(client, "RF-APPLY-DOWN", "RF-APPLY-DOWN-a", 400)
    assert refund["state"] == "his_applying" and "bridge" in refund["last_error"]
    assert await sandbox_admin.refunds() == []
    running.svc.his[HOSPITAL] = his_link
    await dead.close()
    await settle(running, sandbox_admin, due=True)
    assert (await _refund_view(client, "RF-APPLY-DOWN-a"))["state"] == "completed"
    assert his.state.application_count("ApplyRefund", order["out_trade_no"]) == 1
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 400


async def test_his_in_doubt_at_apply_is_settled_by_the_bridge(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "RF-APPLY-DOUBT", amount_fen=1000)
    his.faults.add(FaultRule(operation="ApplyRefund", mode="drop_reply", count=1))
    _, refund = await _refund(client, "RF-APPLY-DOUBT", "RF-APPLY-DOUBT-a", 300)
    for _ in range(20):
        if refund["state"] == "completed":
            break
        await his_link.client.wait_for(f"{refund['out_refund_no']}-apply", timeout_s=10, poll_s=0.1)
        await settle(running, sandbox_admin, due=True)
        refund = await _refund_view(client, "RF-APPLY-DOUBT-a")
    assert refund["state"] == "completed"
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 300
    assert his.state.application_count("WritebackRefund", order["out_trade_no"]) == 1
