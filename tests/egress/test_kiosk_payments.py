"""Kiosk → agent → gateway → sandbox WeChat Pay and Alipay → callback → HIS commit, for a QR on the kiosk's
screen and for the payer's 付款码: a payer who pays at once, one who takes 20 s to enter a password, one whose
code has expired. Each paid payment is committed to the HIS exactly once; a refused one is not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.egress_rig import KIOSK, WINDOW, pay_body, until


def commits(his: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for app in his.state.applications():
        if app["operation"] == "CommitPrepay":
            out[app["trade_no"]] = out.get(app["trade_no"], 0) + app["count"]
    return out


async def committed(rig: Any, kiosk: Any, request_id: str) -> dict[str, Any]:
    """Ask as the kiosk until the gateway has told the HIS (the receipt is in the answer)."""

    async def receipt() -> dict[str, Any] | None:
        _, answer = await kiosk.call("pay.query", {"request_id": request_id})
        return answer if (answer.get("his") or {}).get("receipt_no") else None

    return await until(receipt, timeout_s=30, what=f"the HIS commit of {request_id}")


@pytest.mark.parametrize("channel", ["wechat", "alipay"])
async def test_qr_on_the_kiosk_screen_paid_by_callback_and_committed_once(rig, channel):
    kiosk = rig.terminal(KIOSK)
    status, answer = await kiosk.call("pay.qr", {**pay_body(f"QR-{channel}-01", amount_fen=2500), "channel": channel})
    assert (status, answer["status"]) == (202, "waiting"), answer
    assert answer["qr_code"], "the kiosk has a code to show"
    out_trade_no = answer["out_trade_no"]
    status, answer = await kiosk.call("pay.query", {"request_id": f"QR-{channel}-01"})
    assert (status, answer["status"]) == (202, "waiting")

    await rig.admin.pay_qr(channel, out_trade_no)
    final = await committed(rig, kiosk, f"QR-{channel}-01")
    assert final["status"] == "paid" and final["paid_fen"] == 2500
    assert final["his"]["state"] == "done"
    assert commits(rig.his) == {out_trade_no: 1}
    (order,) = await rig.gateway_rows("orders")
    assert (order.origin, order.terminal_id, order.request_id) == ("terminal", KIOSK, f"{KIOSK}:QR-{channel}-01")
    assert order.app_id == "agent-H001" and order.status == "completed"


async def test_an_unpaid_qr_is_closed_by_the_kiosk(rig):
    kiosk = rig.terminal(KIOSK)
    _, answer = await kiosk.call("pay.qr", {**pay_body("QR-CLOSE-01"), "channel": "wechat"})
    assert answer["status"] == "waiting"
    status, answer = await kiosk.call("pay.close", {"request_id": "QR-CLOSE-01"})
    assert (status, answer["status"]) == (200, "closed"), answer
    (trade,) = await rig.admin.trades()
    assert trade["state"] == "CLOSED"
    assert commits(rig.his) == {}


@pytest.mark.parametrize("channel", ["wechat", "alipay"])
async def test_codepay_paid_at_once_and_an_expired_code_refused(rig, channel):
    kiosk = rig.terminal(KIOSK)
    code = await rig.admin.code(channel, "pays")
    status, answer = await kiosk.call("pay.codepay", pay_body("CODE-PAYS-1", amount_fen=1200, auth_code=code))
    assert (status, answer["status"], answer["channel"]) == (200, "paid", channel), answer
    await committed(rig, kiosk, "CODE-PAYS-1")

    expired = await rig.admin.code(channel, "expired")
    status, answer = await kiosk.call("pay.codepay", pay_body("CODE-EXPD-1", amount_fen=1200, auth_code=expired))
    assert (status, answer["status"]) == (200, "failed"), answer
    want = {"wechat": "AUTHCODEEXPIRE", "alipay": "ACQ.PAYMENT_AUTH_CODE_INVALID"}[channel]
    assert answer["error"]["code"] == want, answer
    paid = {o.request_id: o.status for o in await rig.gateway_rows("orders")}
    assert paid == {f"{KIOSK}:CODE-PAYS-1": "completed", f"{KIOSK}:CODE-EXPD-1": "failed"}
    assert list(commits(rig.his).values()) == [1]
    status, again = await kiosk.call("pay.codepay", pay_body("CODE-EXPD-1", amount_fen=1200, auth_code=expired))
    assert again == answer, "a repeated request id answers the stored outcome"


async def test_payers_who_take_20_seconds_to_enter_their_password(rig):
    """Both wallets at once, from a kiosk and a window: each counter waits with its payer and gets `paid`."""
    kiosk, window = rig.terminal(KIOSK), rig.terminal(WINDOW)

    async def slow(terminal: Any, channel: str, request_id: str) -> tuple[float, dict[str, Any]]:
        code = await rig.admin.code(channel, "slow", after_s=20)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, answer = await terminal.call("pay.codepay", pay_body(request_id, amount_fen=8800, auth_code=code))
        assert status == 200, answer
        return loop.time() - started, answer

    (took_w, wechat), (took_a, alipay) = await asyncio.gather(
        slow(kiosk, "wechat", "SLOW-WX-01"), slow(window, "alipay", "SLOW-ALI-1")
    )
    assert wechat["status"] == alipay["status"] == "paid", (wechat, alipay)
    assert min(took_w, took_a) >= 19, "the answer came when the payer had paid, not before"
    await committed(rig, kiosk, "SLOW-WX-01")
    await committed(rig, window, "SLOW-ALI-1")
    trades = {t["out_trade_no"]: t for t in await rig.admin.trades()}
    assert {trades[a["out_trade_no"]]["state"] for a in (wechat, alipay)} == {"SUCCESS"}
    assert sorted(commits(rig.his).values()) == [1, 1]
    origins = {o.terminal_id: o.origin for o in await rig.gateway_rows("orders")}
    assert origins == {KIOSK: "terminal", WINDOW: "window"}
