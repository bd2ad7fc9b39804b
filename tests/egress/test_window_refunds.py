"""窗口退费: a patient who paid on the phone gets money back at the HIS's cashier window. The HIS has refunded
already, so the gateway does not ask it (no ``refund.apply``, no ``refund.writeback``), but still caps the refund
by paid − refunded: a partial and a full refund go through, one over the cap is refused — and, because the HIS
has booked it, it is an exception for finance. Reconciliation matches the window's refunds by the HIS's own
refund numbers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.recon import platform_side, run_reconciliation
from gateway.recon.normalize import shanghai_today
from sandbox.kiosk import until_recorded
from tests.support.egress_rig import HOSPITAL, KIOSK, WINDOW, pay_body, until

FINAL = {"succeeded", "rejected", "failed"}


def gateway_his_calls(his: Any) -> list[str]:
    return [a["operation"] for a in his.state.applications() if a["operation"] in ("ApplyRefund", "WritebackRefund")]


async def phone_payment(rig: Any, order_no: str, amount_fen: int) -> str:
    """A WeChat mini-program payment through the business API, paid by the payer and committed to the HIS."""
    app = rig.phone_app()
    body = {
        "business_order_no": order_no,
        "business_type": "prepay",
        "scene": "jsapi",
        "channel": "wechat",
        "amount_fen": amount_fen,
        "subject": "住院预交金",
        "patient_id": "P0003",
        "inpatient_no": "Z0001",
        "payer_id": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
    }
    status, answer = await app.call("POST", "/v1/orders", body)
    assert status == 201, answer
    out_trade_no = answer["order"]["out_trade_no"]
    await rig.admin.pay_qr("wechat", out_trade_no)

    async def completed() -> bool:
        return (await app.call("GET", f"/v1/orders/{order_no}"))[1]["order"]["status"] == "completed"

    await until(completed, what="the phone payment committed to the HIS")
    return out_trade_no


async def window_refund(rig: Any, window: Any, out_trade_no: str, request_id: str, amount: int) -> dict[str, Any]:
    his_refund_no = f"TF{request_id[-6:]}"
    rig.his.state.apply_refund(out_trade_no, his_refund_no, amount, "窗口退费")  # the HIS's own 退费 comes first
    body = {
        "request_id": request_id,
        "out_trade_no": out_trade_no,
        "amount_fen": amount,
        "his_refund_no": his_refund_no,
        "reason": "窗口退费",
    }
    _, answer = await window.call("refund", body)
    if answer["status"] not in FINAL:

        async def final() -> dict[str, Any] | None:
            _, now = await window.call("refund.query", {"request_id": request_id})
            return now if now["status"] in FINAL else None

        answer = await until(final, what=f"window refund {request_id}")
    if answer["status"] == "succeeded":
        rig.his.state.writeback_refund(
            out_trade_no, his_refund_no, amount, answer["channel_refund_no"], dt.datetime.now(dt.UTC)
        )
    return {**answer, "his_refund_no": his_refund_no}


async def test_partial_then_full_window_refund_of_a_phone_payment_and_one_over_the_cap(rig):
    window = rig.terminal(WINDOW)
    out_trade_no = await phone_payment(rig, "MP-0001", 10_000)
    before = gateway_his_calls(rig.his)

    partial = await window_refund(rig, window, out_trade_no, "WREF-000001", 3_000)
    assert partial["status"] == "succeeded", partial
    full = await window_refund(rig, window, out_trade_no, "WREF-000002", 7_000)
    assert full["status"] == "succeeded", full

    over = (
        await window.call(
            "refund",
            {"request_id": "WREF-000003", "out_trade_no": out_trade_no, "amount_fen": 1, "his_refund_no": "TF999"},
        )
    )[1]
    assert over["status"] == "rejected" and over["error"]["code"] == "refund_rejected", over
    assert "exceeds" in over["error"]["message"]

    refunds = {r["out_refund_no"]: r for r in await rig.admin.refunds()}
    assert sum(r["amount_fen"] for r in refunds.values() if r["state"] == "SUCCESS") == 10_000
    assert set(refunds) == {partial["out_refund_no"], full["out_refund_no"]}
    window_calls = ["ApplyRefund", "ApplyRefund", "WritebackRefund", "WritebackRefund"]
    assert sorted(gateway_his_calls(rig.his)) == sorted(before + window_calls), "the gateway asked the HIS nothing"

    rows = {r.request_id: r for r in await rig.gateway_rows("refunds")}
    for rid, his_no in (("WREF-000001", partial["his_refund_no"]), ("WREF-000002", full["his_refund_no"])):
        row = rows[f"{WINDOW}:{rid}"]
        assert (row.origin, row.terminal_id, row.state, row.his_refund_id) == ("window", WINDOW, "completed", his_no)
        assert row.app_id == "agent-H001" and row.exception is None
    refused = rows[f"{WINDOW}:WREF-000003"]
    assert (refused.state, refused.exception) == ("rejected", "his_refund_not_paid")
    (order,) = await rig.gateway_rows("orders")
    assert (order.refunded_fen, order.paid_fen, order.origin) == (10_000, 10_000, "app")

    rig.gateway.gateway.cfg.recon.cross_day_window_min = 0
    summary = await run_reconciliation(
        rig.gateway.svc.db,
        rig.gateway.gateway.cfg,
        HOSPITAL,
        shanghai_today(),
        channels=rig.gateway.svc.channels,
        his=rig.gateway.svc.his[HOSPITAL],
    )
    assert summary.status == "done", summary.error
    assert summary.exceptions == {}, summary.exceptions
    assert summary.counts["matched"] == 3, summary.counts  # the payment and the two window refunds
    shown = {
        key: record
        for key, _, _, _, record in await platform_side.lookup(
            rig.gateway.svc.db, HOSPITAL, [f"refund:{partial['out_refund_no']}", f"pay:{out_trade_no}"]
        )
    }
    refund_record = shown[f"refund:{partial['out_refund_no']}"]
    assert (refund_record["origin"], refund_record["terminal_id"]) == ("window", WINDOW), "finance sees the origin"
    assert shown[f"pay:{out_trade_no}"]["origin"] == "app"


async def test_a_repeated_window_refund_is_the_same_refund(rig):
    window = rig.terminal(WINDOW)
    kiosk = rig.terminal(KIOSK)
    code = await rig.admin.code("wechat", "pays")
    _, paid = await kiosk.call("pay.codepay", pay_body("KP-0000001", amount_fen=5_000, auth_code=code))
    assert paid["status"] == "paid"
    assert (await until_recorded(kiosk, paid))["his"]["state"] == "done", "the HIS has the payment it will refund"
    first = await window_refund(rig, window, paid["out_trade_no"], "WREF-AGAIN1", 2_000)
    body = {
        "request_id": "WREF-AGAIN1",
        "out_trade_no": paid["out_trade_no"],
        "amount_fen": 2_000,
        "his_refund_no": first["his_refund_no"],
        "reason": "窗口退费",
    }
    _, again = await window.call("refund", body)
    assert again["status"] == "succeeded" and again["out_refund_no"] == first["out_refund_no"]
    assert len(await rig.admin.refunds()) == 1
    _, day = await window.call("transactions", {"date": shanghai_today().isoformat()})
    assert day["totals"]["refund_fen"] == 2_000 and [r["request_id"] for r in day["refunds"]] == [
        f"{WINDOW}:WREF-AGAIN1"
    ]
    _, kiosk_day = await kiosk.call("transactions", {"date": shanghai_today().isoformat()})
    assert kiosk_day["totals"]["paid_fen"] == 5_000 and kiosk_day["totals"]["refund_fen"] == 0
