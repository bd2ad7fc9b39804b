"""The refund saga against a real bridge agent and the sandbox HIS: the HIS first, then the money, then the
write-back; partial refunds add up to at most the payment; each failing step ends in a defined state."""

from __future__ import annotations

from gateway.channels.base import RefundState
from gateway.his import BridgeHis
from sandbox.his.faults import FaultRule
from tests.gateway.saga_helpers import deliver_callback, get, paid_order
from tests.support.databases import free_port
from tests.support.gateway_rig import HOSPITAL, drain, make_due, order_body
from tests.support.rig import make_client


async def _refund(client, order_no: str, refund_no: str, amount_fen: int) -> tuple[int, dict]:
    status, body = await client.call(
        "POST", f"/v1/orders/{order_no}/refunds", {"business_refund_no": refund_no, "amount_fen": amount_fen}
    )
    return status, body.get("refund", body)


async def test_partial_refunds_go_through_his_channel_and_writeback(
    gateway_factory, api_factory, channel, his_link, his, db_url
):
    running = await gateway_factory(db_url, channel=channel, his=his_link)
    client = api_factory(running)
    order = await paid_order(running, client, channel, "RF-1", amount_fen=1000)
    status, first = await _refund(client, "RF-1", "RF-1-a", 300)
    assert status == 201 and first["state"] == "completed", first
    assert first["his"]["refundable_fen"] == 1000 and first["his"]["receipt_no"]
    status, second = await _refund(client, "RF-1", "RF-1-b", 700)
    assert second["state"] == "completed" and second["his"]["refundable_fen"] == 700
    status, third = await _refund(client, "RF-1", "RF-1-c", 1)
    assert third["state"] == "rejected" and "exceeds" in third["last_error"]
    assert his.state.application_count("ApplyRefund") == 2
    assert his.state.application_count("WritebackRefund") == 2
    assert channel.refunded_fen(order["out_trade_no"]) == 1000
    view = await get(client, "RF-1")
    assert view["order"]["refunded_fen"] == 1000
    status, again = await _refund(client, "RF-1", "RF-1-a", 300)
    assert status == 200 and again["out_refund_no"] == first["out_refund_no"]
    status, _conflict = await _refund(client, "RF-1", "RF-1-a", 301)
    assert status == 409


async def test_his_refusing_the_refund_moves_no_money(gateway_factory, api_factory, channel, his_link, his, sqlite_url):
    running = await gateway_factory(sqlite_url, channel=channel, his=his_link)
    client = api_factory(running)
    order = await paid_order(running, client, channel, "RF-HIS-NO", amount_fen=1000)
    his.state._db.execute("UPDATE inpatients SET balance_fen = 10 WHERE inpatient_no = 'Z0001'")
    _status, refund = await _refund(client, "RF-HIS-NO", "RF-HIS-NO-a", 500)
    assert refund["state"] == "rejected" and "3002" in refund["last_error"]
    assert channel.refunded_fen(order["out_trade_no"]) == 0 and channel.calls["refund"] == 0


async def test_channel_down_keeps_the_reservation_and_retries(
    gateway_factory, api_factory, channel, his_link, his, db_url
):
    running = await gateway_factory(db_url, channel=channel, his=his_link)
    client = api_factory(running)
    order = await paid_order(running, client, channel, "RF-CH-DOWN", amount_fen=1000)
    channel.down.add("refund")
    _, refund = await _refund(client, "RF-CH-DOWN", "RF-CH-DOWN-a", 600)
    assert refund["state"] == "reserved"
    _, over = await _refund(client, "RF-CH-DOWN", "RF-CH-DOWN-b", 500)
    assert over["state"] == "rejected"
    channel.down.clear()
    await make_due(running.svc.db)
    await drain(running.gateway)
    _status, body = await client.call("GET", "/v1/refunds/RF-CH-DOWN-a")
    assert body["refund"]["state"] == "completed"
    assert channel.refunded_fen(order["out_trade_no"]) == 600


async def test_a_refund_lost_in_transit_is_queried_not_doubled(
    gateway_factory, api_factory, channel, his_link, his, db_url
):
    running = await gateway_factory(db_url, channel=channel, his=his_link)
    client = api_factory(running)
    order = await paid_order(running, client, channel, "RF-DOUBT", amount_fen=1000)
    channel.in_doubt.add("refund")
    _, refund = await _refund(client, "RF-DOUBT", "RF-DOUBT-a", 400)
    assert refund["state"] == "refunding"
    channel.in_doubt.clear()
    await make_due(running.svc.db)
    await drain(running.gateway)
    _status, body = await client.call("GET", "/v1/refunds/RF-DOUBT-a")
    assert body["refund"]["state"] == "completed"
    assert channel.calls["refund"] == 1 and channel.refunded_fen(order["out_trade_no"]) == 400


async def test_channel_refusal_is_an_exception_and_releases_the_reservation(
    gateway_factory, api_factory, channel, his_link, his, sqlite_url
):
    running = await gateway_factory(sqlite_url, channel=channel, his=his_link)
    client = api_factory(running)
    await paid_order(running, client, channel, "RF-CH-NO", amount_fen=1000)
    channel.refuse_refund = "NOT_ENOUGH"
    _, refund = await _refund(client, "RF-CH-NO", "RF-CH-NO-a", 1000)
    assert refund["state"] == "failed" and refund["exception"] == "his_refund_not_paid"
    channel.refuse_refund = None
    _, retry = await _refund(client, "RF-CH-NO", "RF-CH-NO-b", 100)
    assert retry["state"] in ("completed", "rejected")
    _, events = await client.call("GET", "/v1/events")
    assert "refund.failed" in [e["type"] for e in events["events"]]


async def test_processing_refund_completes_on_the_channel_callback(
    gateway_factory, api_factory, channel, his_link, his, db_url
):
    running = await gateway_factory(db_url, channel=channel, his=his_link)
    client = api_factory(running)
    await paid_order(running, client, channel, "RF-CB", amount_fen=1000)
    channel.refund_outcome = RefundState.processing
    _, refund = await _refund(client, "RF-CB", "RF-CB-a", 250)
    assert refund["state"] == "refunding"
    callback = channel.settle_refund(refund["out_refund_no"])
    assert await deliver_callback(running, *callback) == 200
    assert await deliver_callback(running, *callback) == 200
    await drain(running.gateway)
    _status, body = await client.call("GET", "/v1/refunds/RF-CB-a")
    assert body["refund"]["state"] == "completed"
    assert his.state.application_count("WritebackRefund") == 1
    assert (await get(client, "RF-CB"))["order"]["refunded_fen"] == 250


async def test_bridge_down_at_writeback_completes_later(
    gateway_factory, api_factory, channel, his_link, his, dev_certs, db_url
):
    running = await gateway_factory(db_url, channel=channel, his=his_link)
    client = api_factory(running)
    await paid_order(running, client, channel, "RF-WB", amount_fen=1000)
    channel.refund_outcome = RefundState.processing
    _, refund = await _refund(client, "RF-WB", "RF-WB-a", 100)
    dead = BridgeHis(make_client(dev_certs, f"https://127.0.0.1:{free_port()}", retries=0))
    running.svc.his[HOSPITAL] = dead
    channel.settle_refund(refund["out_refund_no"])
    await make_due(running.svc.db)
    await drain(running.gateway)
    _, body = await client.call("GET", "/v1/refunds/RF-WB-a")
    assert body["refund"]["state"] == "succeeded" and "bridge" in body["refund"]["last_error"]
    running.svc.his[HOSPITAL] = his_link
    await dead.close()
    await make_due(running.svc.db)
    await drain(running.gateway)
    _status, body = await client.call("GET", "/v1/refunds/RF-WB-a")
    assert body["refund"]["state"] == "completed" and body["refund"]["his"]["receipt_no"]
    assert his.state.application_count("WritebackRefund") == 1


async def test_an_unpaid_order_is_not_refundable(gateway_factory, api_factory, channel, sqlite_url):
    running = await gateway_factory(sqlite_url, channel=channel)
    client = api_factory(running)
    await client.call("POST", "/v1/orders", order_body("RF-UNPAID"))
    status, body = await _refund(client, "RF-UNPAID", "RF-UNPAID-a", 1)
    assert status == 409 and body["error"]["code"] == "not_refundable"


async def test_bridge_down_at_apply_waits_then_applies_once(
    gateway_factory, api_factory, channel, his_link, his, dev_certs, db_url
):
    running = await gateway_factory(db_url, channel=channel, his=his_link)
    client = api_factory(running)
    order = await paid_order(running, client, channel, "RF-APPLY-DOWN", amount_fen=1000)
    dead = BridgeHis(make_client(dev_certs, f"https://127.0.0.1:{free_port()}", retries=0))
    running.svc.his[HOSPITAL] = dead
    _, refund = await _refund(client, "RF-APPLY-DOWN", "RF-APPLY-DOWN-a", 400)
    assert refund["state"] == "his_applying" and "bridge" in refund["last_error"]
    assert channel.calls["refund"] == 0
    running.svc.his[HOSPITAL] = his_link
    await dead.close()
    await make_due(running.svc.db)
    await drain(running.gateway)
    _, body = await client.call("GET", "/v1/refunds/RF-APPLY-DOWN-a")
    assert body["refund"]["state"] == "completed"
    assert his.state.application_count("ApplyRefund", order["out_trade_no"]) == 1
    assert channel.refunded_fen(order["out_trade_no"]) == 400


async def test_his_in_doubt_at_apply_is_settled_by_the_bridge(
    gateway_factory, api_factory, channel, his_link, his, db_url
):
    running = await gateway_factory(db_url, channel=channel, his=his_link)
    client = api_factory(running)
    order = await paid_order(running, client, channel, "RF-APPLY-DOUBT", amount_fen=1000)
    his.faults.add(FaultRule(operation="ApplyRefund", mode="drop_reply", count=1))
    _, refund = await _refund(client, "RF-APPLY-DOUBT", "RF-APPLY-DOUBT-a", 300)
    for _ in range(20):
        if refund["state"] == "completed":
            break
        await his_link.client.wait_for(f"{refund['out_refund_no']}-apply", timeout_s=10, poll_s=0.1)
        await make_due(running.svc.db)
        await drain(running.gateway)
        _, body = await client.call("GET", "/v1/refunds/RF-APPLY-DOUBT-a")
        refund = body["refund"]
    assert refund["state"] == "completed"
    assert channel.refunded_fen(order["out_trade_no"]) == 300
    assert his.state.application_count("WritebackRefund", order["out_trade_no"]) == 1
