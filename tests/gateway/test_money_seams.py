"""The money seams of issue 10, each reproduced against the real bridge agent over the sandbox HIS and the
gateway's real WeChat Pay channel against the sandbox WeChat Pay server, on SQLite and PostgreSQL:

1. finance cannot pay back money whose HIS commit is pending, in doubt or done — at proposal and again at
   approval, under the order's lock;
3. a refund the HIS applied but the channel never paid is an exception finance sees (console list,
   ``GET /v1/orders?exceptions=1``) and can settle (pay it out, or undo the HIS's application);
4. a HIS step stuck beyond ``his_stuck_after_s`` escalates (exception, metric) and settles itself when done;
5. a refund's late success after failure is an exception; a refund callback that does not fit its refund is not
   applied; a payment success without an amount is not believed.
Case 2 (days crossing midnight) is in tests/gateway/recon/test_cross_day.py."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.console import actions
from gateway.his import BridgeHis
from gateway.recon import exceptions as ex
from gateway.recon import run_reconciliation
from gateway.recon.his_side import BridgeReconSource
from gateway.recon.normalize import shanghai_today
from gateway.sagas import escalation
from gateway.store.tables import orders, refunds
from sandbox.his.faults import FaultRule
from tests.gateway.saga_helpers import create, deliver_callback, get, paid_order, sandbox_paid_order, settle
from tests.support.console_rig import user
from tests.support.gateway_rig import HOSPITAL, drain, eventually, make_due
from tests.support.rig import free_port, make_client

CLERK, APPROVER = user("clerk1", "clerk"), user("approver1", "approver")


class Forgetful:
    """The HIS side of reconciliation through the bridge, minus the records of some trades (a HIS whose daily
    list misses a booking it did make: the run mislabels the payment)."""

    def __init__(self, link: BridgeHis, *hidden: str) -> None:
        self.inner = BridgeReconSource(link)
        self.hidden = set(hidden)

    async def fetch_page(self, day: dt.date, page: int, page_size: int) -> dict[str, Any]:
        answer = await self.inner.fetch_page(day, page, page_size)
        kept = [r for r in answer["records"] if r["trade_no"] not in self.hidden]
        return {**answer, "records": kept, "total": answer["total"] - (len(answer["records"]) - len(kept))}


async def reconcile(running, **kwargs: Any):
    running.gateway.cfg.recon.suspense_days = 0  # flag one-sided entries at once
    return await run_reconciliation(
        running.svc.db, running.gateway.cfg, HOSPITAL, shanghai_today(), channels=running.svc.channels, **kwargs
    )


async def exception_of(running, key: str, source: str) -> dict[str, Any]:
    rows = await ex.list_exceptions(running.svc.db, hospital=HOSPITAL, source=source, limit=1000)
    [row] = [r for r in rows if r["entry_key"] == key]
    return row


async def test_a_payment_whose_his_commit_is_pending_is_not_paid_back(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, dev_certs, db_url
):
    """The gateway cannot reach the bridge (its commit waits, retried); T+1 — through a link that works — finds
    the payment at the channel and not at the HIS. Finance may not pay it back: the commit may still land."""
    cut = BridgeHis(make_client(dev_certs, f"https://127.0.0.1:{free_port()}", retries=0))
    running = await sandbox_gateway(db_url, his=cut)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "SEAM-PENDING", amount_fen=1500)
    assert order["status"] == "paid" and order["his"]["state"] == "none"

    await reconcile(running, his=his_link)
    row = await exception_of(running, f"pay:{order['out_trade_no']}", "recon")
    assert row["class"] == "over_collection"
    async with running.svc.db.read() as conn:
        [remedy] = await actions.remedies(conn, row)
    assert remedy.action == "refund" and remedy.why == "why.his_pending"
    with pytest.raises(actions.ActionError) as refused:
        await actions.propose_refund(running.svc, CLERK, row["id"], 1500, "HIS 无记录")
    assert (refused.value.key, refused.value.params["why"]) == ("error.not_now", "why.his_pending")
    assert await sandbox_admin.refunds() == []

    # The link comes back; the commit lands. The next run finds all three sides and closes the row.
    running.svc.his[HOSPITAL] = his_link
    await cut.close()
    await make_due(running.svc.db)
    await drain(running.gateway)
    assert (await get(client, "SEAM-PENDING"))["order"]["status"] == "completed"
    await reconcile(running, his=his_link)
    row = await ex.get_exception(running.svc.db, row["id"])
    assert row is not None and row["status"] == "closed" and "auto: matched" in row["note"]
    assert his.state.application_count("CommitPrepay", order["out_trade_no"]) == 1
    assert await sandbox_admin.refunds() == []


async def test_a_payment_the_his_booked_is_not_paid_back_when_a_run_mislabels_it(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "SEAM-DONE", amount_fen=2600)
    assert order["status"] == "completed"
    await reconcile(running, source=Forgetful(his_link, order["out_trade_no"]))
    row = await exception_of(running, f"pay:{order['out_trade_no']}", "recon")
    assert row["class"] == "over_collection"
    with pytest.raises(actions.ActionError) as refused:
        await actions.propose_refund(running.svc, CLERK, row["id"], 2600, "HIS 无记录")
    assert refused.value.params["why"] == "why.his_booked"
    assert await sandbox_admin.refunds() == []


async def test_approval_rechecks_the_his_under_the_orders_lock(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    """A proposal made while the HIS had refused the payment is not carried out once the HIS holds a receipt for
    it (here written straight into the order, as a second instance's late commit would)."""
    his.faults.add(FaultRule(operation="CommitPrepay", mode="error", count=1))
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "SEAM-RACE", amount_fen=900)
    assert order["status"] == "his_rejected"
    raised = await exception_of(running, f"pay:{order['out_trade_no']}", "gateway")
    assert raised["class"] == "his_rejected"
    await actions.propose_refund(running.svc, CLERK, raised["id"], 900, "HIS 拒收，原路退回")
    async with running.svc.db.write() as conn:
        await conn.execute(
            sa.update(orders).where(orders.c.out_trade_no == order["out_trade_no"]).values(his_state="done")
        )
    with pytest.raises(actions.ActionError) as refused:
        await actions.approve(running.svc, APPROVER, raised["id"])
    assert refused.value.params["why"] == "why.his_booked"
    assert (await ex.get_exception(running.svc.db, raised["id"]))["status"] == "proposed"
    assert await sandbox_admin.refunds() == []


async def test_a_payment_the_his_refused_is_paid_back_after_two_people_agree_and_its_exceptions_close(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    his.faults.add(FaultRule(operation="CommitPrepay", mode="error", count=1))
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "SEAM-BACK", amount_fen=1100)
    raised = await exception_of(running, f"pay:{order['out_trade_no']}", "gateway")
    await actions.propose_refund(running.svc, CLERK, raised["id"], 1100, "HIS 拒收，原路退回")
    await actions.approve(running.svc, APPROVER, raised["id"])
    await settle(running, sandbox_admin)
    await actions.settle(running.svc)
    assert (await ex.get_exception(running.svc.db, raised["id"]))["status"] == "closed"
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 1100
    # T+1: the payment and its refund agree on the platform and the channel, the HIS is not expected to know them;
    # the over-collection is netted (refunded in full) and the refund matches.
    await reconcile(running, his=his_link)
    rows = await ex.list_exceptions(running.svc.db, hospital=HOSPITAL, source="recon")
    assert [(r["entry_key"], r["class"], r["status"]) for r in rows] == [
        (f"pay:{order['out_trade_no']}", "over_collection", "handled")
    ]
    # A second proposal finds nothing left to refund.
    with pytest.raises(actions.ActionError):
        await actions.propose_refund(running.svc, CLERK, rows[0]["id"], 1, "again")


async def _true(value: bool) -> bool:
    return value


async def _refund(client, order_no: str, refund_no: str, amount_fen: int) -> dict[str, Any]:
    status, body = await client.call(
        "POST", f"/v1/orders/{order_no}/refunds", {"business_refund_no": refund_no, "amount_fen": amount_fen}
    )
    assert status in (200, 201), body
    return body["refund"]


async def _refund_view(client, refund_no: str) -> dict[str, Any]:
    return (await client.call("GET", f"/v1/refunds/{refund_no}"))[1]["refund"]


async def test_a_refund_the_his_applied_but_the_channel_refused_is_finances_to_see_and_settle(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "SEAM-UNPAID", amount_fen=3000)
    await sandbox_admin.fault("wechat.refund", "error", status=403, code="NOT_ENOUGH", count=1)
    refund = await _refund(client, "SEAM-UNPAID", "SEAM-UNPAID-r1", 1200)
    await settle(running, sandbox_admin)
    refund = await _refund_view(client, "SEAM-UNPAID-r1")
    assert refund["state"] == "failed" and refund["exception"] == "his_refund_not_paid"
    assert his.state.application_count("ApplyRefund") == 1 and await sandbox_admin.refunds() == []

    # Finance sees it: in the console's list, and as the app sees its orders with exceptions.
    row = await exception_of(running, f"refund:{refund['out_refund_no']}", "gateway")
    assert row["class"] == "his_refund_not_paid" and row["status"] == "open"
    assert row["out_trade_no"] == order["out_trade_no"]
    _, listed = await client.call("GET", "/v1/orders?exceptions=1")
    [flagged] = listed["orders"]
    assert flagged["business_order_no"] == "SEAM-UNPAID"
    assert [(e["class"], e["entry_key"]) for e in flagged["exceptions"]] == [
        ("his_refund_not_paid", f"refund:{refund['out_refund_no']}")
    ]
    # The channel refused it, so it cannot simply be sent again: finance may undo the application at the HIS.
    async with running.svc.db.read() as conn:
        options = {r.action: r for r in await actions.remedies(conn, row)}
    assert not options["pay_refund"].allowed and options["cancel_his_refund"].allowed
    balance_after_apply = his.state.balance("Z0001")

    # Two people agree to undo the application at the HIS: the deposit comes back, the exception closes, and the
    # next reconciliation finds nothing owed either way.
    await actions.propose(running.svc, CLERK, row["id"], "cancel_his_refund", None, "渠道拒绝，撤销 HIS 退费申请")
    await actions.approve(running.svc, APPROVER, row["id"])
    await settle(running, sandbox_admin, due=True)
    await actions.settle(running.svc)
    cancelled = await _refund_view(client, "SEAM-UNPAID-r1")
    assert cancelled["state"] == "cancelled"
    assert his.state.application_count("CancelRefund") == 1
    assert his.state.balance("Z0001") == balance_after_apply + 1200
    assert (await ex.get_exception(running.svc.db, row["id"]))["status"] == "closed"
    await reconcile(running, his=his_link)
    rows = await ex.list_exceptions(running.svc.db, hospital=HOSPITAL, source="recon")
    assert [r for r in rows if r["status"] in ("open", "proposed")] == []
    _, listed = await client.call("GET", "/v1/orders?exceptions=1")
    assert listed["orders"] == []


async def test_a_refund_the_gateway_could_not_reserve_is_paid_out_after_two_people_agree(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, db_url
):
    """The HIS applied a refund that the payment did not cover at the time (another refund was in flight);
    finance pays it out once the room is back, two people, and it is written back to the HIS."""
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "SEAM-ROOM", amount_fen=1000)
    slow = his.faults.add(FaultRule(operation="ApplyRefund", mode="latency", latency_ms=5000, count=1))
    asking = asyncio.create_task(_refund(client, "SEAM-ROOM", "SEAM-ROOM-r1", 500))
    await eventually(lambda: _true(slow.hits == 1), what="the HIS is applying the refund")
    async with running.svc.db.write() as conn:  # meanwhile another refund in flight takes 800 fen of the payment
        await conn.execute(
            sa.insert(refunds).values(
                order_id=sa.select(orders.c.id).where(orders.c.out_trade_no == order["out_trade_no"]).scalar_subquery(),
                hospital_id=HOSPITAL, channel="wechat", out_refund_no="R-HOLDING", amount_fen=800, origin="business",
                state="refunding", created_at=dt.datetime.now(dt.UTC), updated_at=dt.datetime.now(dt.UTC),
            )
        )  # fmt: skip
    refund = await asking
    if refund["state"] == "his_applying":  # the agent answered "pending" before the slow HIS did
        await his_link.client.wait_for(f"{refund['out_refund_no']}-apply", timeout_s=30, poll_s=0.1)
        await make_due(running.svc.db)
        await drain(running.gateway)
        refund = await _refund_view(client, "SEAM-ROOM-r1")
    assert refund["state"] == "rejected" and refund["exception"] == "his_refund_not_paid"
    row = await exception_of(running, f"refund:{refund['out_refund_no']}", "gateway")
    async with running.svc.db.read() as conn:
        options = {r.action: r for r in await actions.remedies(conn, row)}
    assert options["pay_refund"].why == "the payment covers only 200 fen more"
    async with running.svc.db.write() as conn:  # the refund in flight fails at the channel: room is back
        await conn.execute(sa.update(refunds).where(refunds.c.out_refund_no == "R-HOLDING").values(state="failed"))
    await actions.propose(running.svc, CLERK, row["id"], "pay_refund", None, "医保结算后退费")
    await actions.approve(running.svc, APPROVER, row["id"])
    await settle(running, sandbox_admin, due=True)
    await actions.settle(running.svc)
    paid = await _refund_view(client, "SEAM-ROOM-r1")
    assert paid["state"] == "completed" and paid["his"]["receipt_no"]
    assert (await ex.get_exception(running.svc.db, row["id"]))["status"] == "closed"
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 500
    assert his.state.application_count("ApplyRefund") == 1 and his.state.application_count("WritebackRefund") == 1


async def test_a_stuck_his_step_escalates_and_settles_itself(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, dev_certs, db_url
):
    cut = BridgeHis(make_client(dev_certs, f"https://127.0.0.1:{free_port()}", retries=0))
    running = await sandbox_gateway(db_url, his=cut, workers={"his_stuck_after_s": 60})
    client = api_factory(running)
    order = await sandbox_paid_order(running, client, sandbox_admin, "SEAM-STUCK", amount_fen=700)
    assert order["status"] == "paid"
    assert await escalation.escalate(running.svc) == escalation.Stuck(0, 0), "not stuck yet"
    paid_at = dt.datetime.fromisoformat(order["paid_at"])
    async with running.svc.db.write() as conn:  # an hour passes
        await conn.execute(
            sa.update(orders)
            .where(orders.c.out_trade_no == order["out_trade_no"])
            .values(paid_at=paid_at - dt.timedelta(hours=1))
        )
    assert await escalation.escalate(running.svc) == escalation.Stuck(1, 0)
    assert await escalation.escalate(running.svc) == escalation.Stuck(0, 0), "flagged once"
    row = await exception_of(running, f"pay:{order['out_trade_no']}", "gateway")
    assert row["class"] == "his_stuck" and "has waited 60 min" in row["detail"]
    await running.svc.metrics.refresh(running.svc.db, 60)
    assert running.svc.metrics.his_stuck.labels("order")._value.get() == 1
    assert running.svc.metrics.his_oldest_wait.labels("order")._value.get() >= 3600
    assert running.svc.metrics.exceptions_open.labels("gateway", "his_stuck")._value.get() == 1
    _, listed = await client.call("GET", "/v1/orders?exceptions=1")
    assert [o["exceptions"][0]["class"] for o in listed["orders"]] == ["his_stuck"]

    running.svc.his[HOSPITAL] = his_link  # the link is back; finance does not wait for the backoff
    await cut.close()
    step = await actions.redrive(running.svc, CLERK, row["id"], "HIS 已恢复")
    assert step == "commit"
    await drain(running.gateway)
    assert (await get(client, "SEAM-STUCK"))["order"]["status"] == "completed"
    row = await ex.get_exception(running.svc.db, row["id"])
    assert row is not None and row["status"] == "closed" and "the HIS booked the payment" in row["note"]
    await running.svc.metrics.refresh(running.svc.db, 60)
    assert running.svc.metrics.his_stuck.labels("order")._value.get() == 0
    _, listed = await client.call("GET", "/v1/orders?exceptions=1")
    assert listed["orders"] == []
    assert his.state.application_count("CommitPrepay", order["out_trade_no"]) == 1


async def test_a_refund_paid_after_it_failed_is_counted_and_told(
    gateway_factory, api_factory, channel, his_link, his, db_url
):
    running = await gateway_factory(db_url, channel=channel, his=his_link)
    client = api_factory(running)
    await paid_order(running, client, channel, "SEAM-LATE", amount_fen=2000)
    channel.in_doubt.add("refund")
    refund = await _refund(client, "SEAM-LATE", "SEAM-LATE-r1", 600)
    channel.in_doubt.clear()
    assert await deliver_callback(running, *channel.settle_refund(refund["out_refund_no"], state="CLOSED")) == 200
    await drain(running.gateway)
    assert (await _refund_view(client, "SEAM-LATE-r1"))["state"] == "failed"
    # The channel changes its mind: the money did go back.
    assert await deliver_callback(running, *channel.settle_refund(refund["out_refund_no"])) == 200
    await make_due(running.svc.db)
    await drain(running.gateway)
    late = await _refund_view(client, "SEAM-LATE-r1")
    assert late["state"] == "completed" and late["exception"] == "refund_late_success"
    assert (await get(client, "SEAM-LATE"))["order"]["refunded_fen"] == 600
    row = await exception_of(running, f"refund:{refund['out_refund_no']}", "gateway")
    assert row["class"] == "refund_late_success" and "counted as refunded" in row["detail"]
    assert his.state.application_count("WritebackRefund") == 1


async def test_a_refund_callback_that_does_not_fit_its_refund_is_not_applied(
    gateway_factory, api_factory, channel, his_link, db_url
):
    running = await gateway_factory(db_url, channel=channel, his=his_link)
    client = api_factory(running)
    await paid_order(running, client, channel, "SEAM-FIT", amount_fen=2000)
    channel.in_doubt.add("refund")
    refund = await _refund(client, "SEAM-FIT", "SEAM-FIT-r1", 600)
    channel.in_doubt.clear()
    channel.refunds[refund["out_refund_no"]]["amount"] = 6000  # a success that names ten times the amount
    assert await deliver_callback(running, *channel.settle_refund(refund["out_refund_no"])) == 200
    await drain(running.gateway, skip=("outbox", "refunds"))
    view = await _refund_view(client, "SEAM-FIT-r1")
    assert view["state"] == "refunding" and view["exception"] == "amount_mismatch"
    assert (await get(client, "SEAM-FIT"))["order"]["refunded_fen"] == 0
    row = await exception_of(running, f"refund:{refund['out_refund_no']}", "gateway")
    assert row["class"] == "amount_mismatch" and "6000 fen refunded" in row["detail"]


async def test_a_payment_success_without_an_amount_is_not_believed(gateway_factory, api_factory, channel, db_url):
    running = await gateway_factory(db_url, channel=channel)
    client = api_factory(running)
    order = await create(client, "SEAM-NOAMOUNT", amount_fen=800)
    channel.pay(order["out_trade_no"])
    channel.trades[order["out_trade_no"]]["amount"] = None  # the callback says SUCCESS and nothing about money
    assert await deliver_callback(running, *channel.payment_callback(order["out_trade_no"])) == 200
    await drain(running.gateway, skip=("outbox", "orders"))
    assert (await get(client, "SEAM-NOAMOUNT"))["order"]["status"] == "paying"
    # The channel's query tells the amount: then it is paid.
    channel.trades[order["out_trade_no"]]["amount"] = 800
    await make_due(running.svc.db)
    await drain(running.gateway)
    view = (await get(client, "SEAM-NOAMOUNT"))["order"]
    assert view["status"] in ("paid", "completed") and view["paid_fen"] == 800


async def test_insurance_settlement_refunds_the_insured_share_written_back_after_the_first_reconciliation(
    sandbox_gateway, api_factory, sandbox_admin, his_link, his, dev_certs, db_url
):
    """The patient pays the whole bill on the phone (B0003 + B0004, 303.80); the kiosk settles with medical
    insurance, which covers 260.00, and the insured share goes back to the phone by a partial refund. Its
    write-back reaches the HIS only after the first reconciliation has run (the link is cut at 23:00 and back
    after midnight): the first run lets it wait, nothing offers to pay it out again, and the rerun matches it."""
    running = await sandbox_gateway(db_url, his=his_link)
    client = api_factory(running)
    order = await sandbox_paid_order(
        running, client, sandbox_admin, "INS-1", amount_fen=30380, business_type="charge", patient_id="P0002",
        bill_nos=["B0003", "B0004"], subject="门诊缴费",
    )  # fmt: skip
    assert order["status"] == "completed"

    cut = BridgeHis(make_client(dev_certs, f"https://127.0.0.1:{free_port()}", retries=0))
    refund = await _refund(client, "INS-1", "INS-1-yb", 26000)  # the HIS applies it, then the link is cut
    running.svc.his[HOSPITAL] = cut
    await settle(running, sandbox_admin)
    refund = await _refund_view(client, "INS-1-yb")
    assert refund["state"] == "succeeded" and await sandbox_admin.refunded_fen(order["out_trade_no"]) == 26000
    assert his.state.application_count("WritebackRefund") == 0

    running.gateway.cfg.recon.suspense_days = 3
    day = shanghai_today()
    first = await run_reconciliation(
        running.svc.db, running.gateway.cfg, HOSPITAL, day, channels=running.svc.channels, his=his_link
    )
    assert first.exceptions == {"cross_day": [f"refund:{refund['out_refund_no']}"]}
    row = await exception_of(running, f"refund:{refund['out_refund_no']}", "recon")
    assert row["his_record"]["refund_state"] == "applied"
    async with running.svc.db.read() as conn:
        assert [r for r in await actions.remedies(conn, row) if r.allowed] == [], "no second payout"

    running.svc.his[HOSPITAL] = his_link  # after midnight the link is back; the write-back goes through
    await cut.close()
    await settle(running, sandbox_admin, due=True)
    assert (await _refund_view(client, "INS-1-yb"))["state"] == "completed"
    assert his.state.application_count("WritebackRefund") == 1
    again = await run_reconciliation(
        running.svc.db, running.gateway.cfg, HOSPITAL, day, channels=running.svc.channels, his=his_link
    )
    assert again.exceptions == {} and again.cleared == [f"refund:{refund['out_refund_no']}"]
    view = await get(client, "INS-1")
    assert view["order"]["refunded_fen"] == 26000 and view["order"]["paid_fen"] == 30380
    assert await sandbox_admin.refunded_fen(order["out_trade_no"]) == 26000
    assert his.state.application_count("ApplyRefund") == 1
