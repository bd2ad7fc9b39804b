"""End to end through the sandbox: real WeChat Pay wire protocol (sandbox channel server, its trade bill with
SHA-1), the real bridge agent over the sandbox HIS (``recon.fetch`` paged), the gateway's own records.

One day: a clean payment with a partial refund; a payment whose HIS commit is refused (the money is held, the
HIS has nothing); a payment whose channel notification is lost (the gateway still thinks it is being paid); a
partial refund whose HIS write-back is refused. Reconciled, the day has exactly the expected exceptions, and a
re-run keeps an approver's note and status.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from gateway.recon import exceptions as recon_exceptions
from gateway.recon import ledgers, run_reconciliation
from gateway.recon.normalize import shanghai_today
from gateway.store.recon_tables import recon_runs, statements
from sandbox.channels import start_sandbox_channels
from tests.gateway.saga_helpers import get
from tests.support.channelrig import wechat_config, wechat_settings, write_wechat_trust
from tests.support.gateway_rig import HOSPITAL, MERCHANT, eventually, order_body
from tests.support.rig import free_port


@pytest.fixture
async def wechat_sandbox(tmp_path, platform):
    channels = await start_sandbox_channels(wechat=wechat_settings(platform=platform), db_path=tmp_path / "ch.sqlite3")
    yield channels
    await channels.close()


async def _post(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> None:
    async with session.post(url, json=payload) as resp:
        assert resp.status in (200, 201), await resp.text()


async def test_a_day_with_a_refused_commit_a_lost_notification_and_partial_refunds(
    gateway_factory, api_factory, his_link, his, wechat_sandbox, tmp_path, db_url
):
    trust = write_wechat_trust(wechat_sandbox, tmp_path / "trust")
    settings = wechat_config(wechat_sandbox, trust).model_dump(mode="json", exclude={"channel"})
    running = await gateway_factory(
        db_url, his=his_link, run_workers=True, port=free_port(), merchant_settings=settings,
        workers={"retry_base_s": 0.2, "his_poll_s": 0.2, "pending_query_after_s": 3600},
    )  # fmt: skip
    cfg = running.gateway.cfg
    cfg.recon.suspense_days = 0
    client = api_factory(running)
    admin = wechat_sandbox.admin_url

    async def order(no: str, amount: int) -> str:
        status, body = await client.call("POST", "/v1/orders", order_body(no, amount_fen=amount))
        assert status == 201, body
        return body["order"]["out_trade_no"]

    async def status_of(no: str) -> str:
        return (await get(client, no))["order"]["status"]

    async def refund(no: str, refund_no: str, amount: int) -> str:
        status, body = await client.call(
            "POST",
            f"/v1/orders/{no}/refunds",
            {"business_refund_no": refund_no, "amount_fen": amount, "reason": "医保"},
        )
        assert status == 201, body
        return body["refund"]["out_refund_no"]

    async def refund_view(refund_no: str) -> dict[str, Any]:
        return (await client.call("GET", f"/v1/refunds/{refund_no}"))[1]["refund"]

    async with aiohttp.ClientSession() as session:
        clean = await order("R-CLEAN", 2000)
        await _post(session, admin + "/payer/pay", {"channel": "wechat", "out_trade_no": clean})
        await eventually(lambda: _is(status_of("R-CLEAN"), "completed"), what="clean payment completed")
        clean_refund = await refund("R-CLEAN", "R-CLEAN-r1", 500)

        async with session.post(
            his.base_url + "/_admin/faults", json={"operation": "CommitPrepay", "mode": "error", "count": 1}
        ) as resp:
            assert resp.status in (200, 201), await resp.text()
        refused = await order("R-REFUSED", 1500)
        await _post(session, admin + "/payer/pay", {"channel": "wechat", "out_trade_no": refused})
        await eventually(lambda: _is(status_of("R-REFUSED"), "his_rejected"), what="the HIS refused the commit")

        lost = await order("R-LOST", 800)
        lose = {"kind": "notify", "match": "wechat.payment", "mode": "lost", "count": 1}
        await _post(session, admin + "/faults", lose)
        await _post(session, admin + "/payer/pay", {"channel": "wechat", "out_trade_no": lost})

        unwritten = await order("R-UNWRITTEN", 3000)
        await _post(session, admin + "/payer/pay", {"channel": "wechat", "out_trade_no": unwritten})
        await eventually(lambda: _is(status_of("R-UNWRITTEN"), "completed"), what="second payment completed")
        async with session.post(
            his.base_url + "/_admin/faults", json={"operation": "WritebackRefund", "mode": "error", "count": 1}
        ) as resp:
            assert resp.status in (200, 201), await resp.text()
        unwritten_refund = await refund("R-UNWRITTEN", "R-UNWRITTEN-r1", 1000)

    async def refunds_settled() -> bool:
        a, b = await refund_view("R-CLEAN-r1"), await refund_view("R-UNWRITTEN-r1")
        return a["state"] == "completed" and b["state"] == "succeeded" and b.get("exception") == "writeback_failed"

    await eventually(refunds_settled, what="one refund written back, the other refused by the HIS")
    assert await status_of("R-LOST") == "paying"

    day = shanghai_today()
    db = running.svc.db
    summary = await run_reconciliation(db, cfg, HOSPITAL, day, channels=running.svc.channels, his=his_link)
    assert summary.exceptions == {
        "over_collection": sorted([f"pay:{lost}", f"pay:{refused}"]),
        "status_mismatch": [f"refund:{unwritten_refund}"],
    }
    assert summary.counts["matched"] == 3  # the clean payment, its refund, the second payment
    assert summary.counts["channel_count"] == 6 and summary.counts["his_count"] == 4

    rows = {r["entry_key"]: r for r in await recon_exceptions.list_exceptions(db, hospital=HOSPITAL, day=day)}
    lost_row = rows[f"pay:{lost}"]
    assert lost_row["channel_fen"] == 800 and lost_row["his_fen"] is None and lost_row["platform_fen"] == 800
    assert lost_row["platform_record"]["status"] == "paying" and "platform order paying" in lost_row["detail"]
    refused_row = rows[f"pay:{refused}"]
    assert refused_row["platform_record"]["status"] == "his_rejected" and refused_row["his_record"] is None
    assert refused_row["channel_record"]["channel_trade_no"] == refused_row["channel_trade_no"]
    unwritten_row = rows[f"refund:{unwritten_refund}"]
    # The HIS applied that refund but refused its write-back: it holds it as applied, not as paid out.
    assert (unwritten_row["channel_fen"], unwritten_row["platform_fen"], unwritten_row["his_fen"]) == (1000, 1000, 1000)
    assert unwritten_row["his_record"]["refund_state"] == "applied" and "not written back" in unwritten_row["detail"]
    assert unwritten_row["out_trade_no"] == unwritten and unwritten_row["status"] == "open"
    assert f"refund:{clean_refund}" not in rows and f"pay:{clean}" not in rows

    # The statement is kept raw with its hash, and its parsed totals.
    async with db.read() as conn:
        stored = (await conn.execute(sa.select(statements).where(statements.c.merchant_id == MERCHANT))).one()
    assert stored.status == "parsed" and stored.pay_count == 4 and stored.refund_count == 2
    assert stored.pay_fen == 2000 + 1500 + 800 + 3000 and stored.refund_fen == 1500
    # Any record of the three ledgers, not only exceptions: the clean payment as each side holds it.
    found = await ledgers.lookup(db, HOSPITAL, clean)
    assert [r["amount_fen"] for r in found.his] == [2000] and found.his[0]["receipt_no"]
    assert [r["amount_fen"] for r in found.channel] == [2000] and found.channel[0]["status"] == "success"
    assert [(r["amount_fen"], r["status"]) for r in found.platform] == [(2000, "completed")]
    assert (await ledgers.lookup(db, HOSPITAL, "NO-SUCH-TRADE")).found is False
    figures = (await recon_exceptions.latest_run(db, HOSPITAL, day))["by_channel"]["wechat"]
    assert (figures["statements"], figures["pay_count"], figures["refund_count"]) == (1, 4, 2)
    assert (figures["pay_fen"], figures["refund_fen"]) == (stored.pay_fen, stored.refund_fen)

    # Finance works one exception; a re-run (version 2) keeps what they wrote.
    await recon_exceptions.update_exception(db, unwritten_row["id"], "clerk", status="handled", note="补写退款")
    again = await run_reconciliation(db, cfg, HOSPITAL, day, channels=running.svc.channels, his=his_link)
    assert again.version == 2 and again.exceptions == summary.exceptions
    kept = await recon_exceptions.get_exception(db, unwritten_row["id"])
    assert kept is not None and kept["status"] == "handled" and kept["note"] == "补写退款"
    assert kept["first_version"] == 1 and kept["last_version"] == 2
    async with db.read() as conn:
        versions = (await conn.execute(sa.select(recon_runs.c.version, recon_runs.c.status))).all()
    assert sorted(versions) == [(1, "done"), (2, "done")]
    day_summary = await recon_exceptions.summary(db, HOSPITAL, day)
    # Open: the two over-collections, and what the sagas raised on the refused commit and the refused write-back
    # (the under-collection is handled).
    assert day_summary["run"]["version"] == 2 and day_summary["open"] == 4
    raised = {
        (r["class"], r["entry_key"])
        for r in await recon_exceptions.list_exceptions(db, hospital=HOSPITAL, statuses=["open"])
        if r["source"] == "gateway"
    }
    assert raised == {("his_rejected", f"pay:{refused}"), ("writeback_failed", f"refund:{unwritten_refund}")}


async def _is(value: Any, expected: str) -> bool:
    return (await value) == expected
