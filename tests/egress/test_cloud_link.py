"""The hospital's line to the cloud is cut (a real TCP link between the agent and the gateway, closed and
refused): payments are refused at once with a clear error and nothing is charged; refunds the HIS has already
made are kept and complete when the line returns; a payment on the wire when the line went down is settled
by asking the gateway, not by paying again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from sandbox.kiosk import until_recorded
from tests.support.egress_rig import KIOSK, WINDOW, Ports, egress_rig, pay_body, until
from tests.support.rig import free_port
from tests.support.tcp_link import TcpLink

pytestmark = pytest.mark.system


@pytest.fixture
async def linked(tmp_path, dev_certs, channel_keys, his):
    ports = Ports()
    ports.egress_target = free_port()
    link = TcpLink(ports.egress_target, ports.gateway_mtls)
    await link.restore()
    try:
        async with egress_rig(tmp_path, dev_certs, channel_keys, his, ports=ports) as rig:
            yield rig, link
    finally:
        await link.cut()


async def his_bridge_egress(rig: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's read of the outbound journal, beside the running agent."""
    argv = [sys.executable, "-m", "bridge.cli", "egress", "--config", str(rig.work / "agent.toml"), *args]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60)


async def metric(rig: Any, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{rig.ports.agent_ops}/metrics") as r:
        text = await r.text()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values)


async def test_payments_refused_at_once_refunds_queued_then_completed(linked):
    rig, link = linked
    kiosk, window = rig.terminal(KIOSK), rig.terminal(WINDOW)
    code = await rig.admin.code("wechat", "pays")
    _, paid = await kiosk.call("pay.codepay", pay_body("LINK-PAY-1", amount_fen=6_000, auth_code=code))
    assert paid["status"] == "paid"
    assert (await until_recorded(kiosk, paid))["his"]["state"] == "done"

    await link.cut()
    refused = {}
    for request_id in ("LINK-PAY-2", "LINK-PAY-3"):
        refused[request_id] = pay_body(request_id, auth_code=await rig.admin.code("wechat", "pays"))
        status, answer = await kiosk.call("pay.codepay", refused[request_id])
        assert (status, answer["status"], answer["error"]["code"]) == (503, "failed", "cloud_unreachable"), answer
        assert "nothing was charged" in answer["error"]["message"] or "cannot connect" in answer["error"]["message"]
    assert len(await rig.gateway_rows("orders")) == 1 and len(await rig.admin.trades()) == 1

    rig.his.state.apply_refund(paid["out_trade_no"], "TFLINK1", 2_500, "窗口退费")
    body = {"request_id": "LINK-REF-1", "out_trade_no": paid["out_trade_no"], "amount_fen": 2_500,
            "his_refund_no": "TFLINK1"}  # fmt: skip
    status, answer = await window.call("refund", body)
    assert (status, answer["status"]) == (202, "queued"), answer
    assert await rig.gateway_rows("refunds") == []
    listed = await his_bridge_egress(rig, "list", "--state", "queued")
    assert listed.returncode == 0 and "LINK-REF-1" in listed.stdout and "queued" in listed.stdout, listed
    shown = await his_bridge_egress(rig, "show", "KIOSK-01", "LINK-PAY-2")
    assert '"cloud_unreachable"' in shown.stdout and '"auth_code": "***"' in shown.stdout, shown
    await rig.agent.agent.intranet.forwarder.refresh_gauges()
    assert await metric(rig, "hisbridge_egress_link_up") == 0
    assert await metric(rig, 'hisbridge_egress_requests{state="queued"}') == 1
    assert await metric(rig, "hisbridge_egress_oldest_queued_refund_age_seconds") > 0

    await link.restore()

    async def succeeded() -> dict[str, Any] | None:
        _, now = await window.call("refund.query", {"request_id": "LINK-REF-1"})
        return now if now["status"] == "succeeded" else None

    done = await until(succeeded, what="the queued refund to complete once the link is back")
    refunds = await rig.admin.refunds()
    assert [(r["out_refund_no"], r["amount_fen"], r["state"]) for r in refunds] == [
        (done["out_refund_no"], 2_500, "SUCCESS")
    ]
    status, again = await kiosk.call("pay.codepay", refused["LINK-PAY-2"])
    assert (status, again["error"]["code"]) == (503, "cloud_unreachable"), "the refused payment stays refused"
    code = await rig.admin.code("wechat", "pays")
    assert (await kiosk.call("pay.codepay", pay_body("LINK-PAY-4", auth_code=code)))[1]["status"] == "paid"
    assert await metric(rig, "hisbridge_egress_link_up") == 1


async def test_a_payment_on_the_wire_when_the_line_drops_is_settled_by_asking(linked):
    rig, link = linked
    kiosk = rig.terminal(KIOSK)
    code = await rig.admin.code("alipay", "slow", after_s=3)
    paying = asyncio.create_task(kiosk.call("pay.codepay", pay_body("DOUBT-0001", amount_fen=4_200, auth_code=code)))

    async def on_the_wire() -> bool:
        return any(t["state"] == "USERPAYING" for t in await rig.admin.trades())

    await until(on_the_wire, what="the payer entering a password while the gateway polls")
    await link.cut()
    status, answer = await paying
    assert (status, answer["status"], answer["error"]["code"]) == (202, "pending", "in_doubt"), answer
    (row,) = rig.egress_rows()
    assert row["state"] == "in_doubt"

    async def gateway_settled() -> bool:
        return any(o.status == "completed" for o in await rig.gateway_rows("orders"))

    await until(gateway_settled, what="the gateway to finish the payment on its own")
    await link.restore()

    async def paid() -> dict[str, Any] | None:
        _, now = await kiosk.call("pay.query", {"request_id": "DOUBT-0001"})
        return now if now["status"] == "paid" else None

    final = await until(paid, what="the in-doubt payment to be settled by asking the gateway")
    assert final["paid_fen"] == 4_200
    assert len(await rig.admin.trades()) == 1, "asked, never paid again"
    assert rig.egress_rows()[0]["attempts"] == 1
    assert await metric(rig, 'hisbridge_egress_in_doubt_settled_total{found="found"}') >= 1
