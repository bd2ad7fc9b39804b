"""The real agent with the HL7 profile against the sandbox HIS's MLLP listener: a charge, then a charge whose
ACK never comes, resolved through trade.check without being sent twice."""

from __future__ import annotations

import aiohttp
import pytest

from bridge.config import load_config
from bridge.server import start_agent
from sandbox.cli import start_sandbox_his
from sandbox.his.faults import FaultRule
from tests.support.hl7rig import HL7_PROFILE
from tests.support.rig import bridge_config_toml, make_client

pytestmark = pytest.mark.system


def charge(trade_no: str, bill_no: str, amount_fen: int) -> dict[str, object]:
    return {
        "request_id": f"req-{trade_no}",
        "trade_no": trade_no,
        "patient_id": "P0001",
        "bill_nos": [bill_no],
        "amount_fen": amount_fen,
        "channel": "wechat",
        "channel_trade_no": f"W{trade_no}",
        "paid_at": "2026-11-25T10:00:00+08:00",
    }


async def test_charge_and_ack_timeout_resolution_through_the_agent(tmp_path, dev_certs) -> None:
    his = await start_sandbox_his(db_path=tmp_path / "his.sqlite3", mllp=("127.0.0.1", 0))
    config = tmp_path / "bridge.toml"
    config.write_text(
        bridge_config_toml(
            dev_certs,
            tmp_path / "journal.sqlite3",
            his.base_url,
            profile=HL7_PROFILE,
            overrides={"hl7.port": str(his.mllp_address[1]), "hl7.ack_timeout_s": "0.5"},
        )
    )
    running = await start_agent(load_config(config))
    try:
        assert running.agent.adapter.endpoint == f"mllp://127.0.0.1:{his.mllp_address[1]}"
        async with make_client(dev_certs, running.api_url) as client:
            patient = await client.call("patient.query", {"card_no": "C0001"})
            assert patient.status == "done" and patient.result["name"] == "张三"

            first = await client.call("charge.commit", charge("T-HL7-1", "B0001", 1250))
            assert first.status == "done" and first.result["receipt_no"].startswith("SF")

            his.faults.add(FaultRule("charge.commit", "no_ack", count=1))
            doubt = await client.call("charge.commit", charge("T-HL7-2", "B0002", 8600))
            if doubt.status == "pending":
                doubt = await client.wait_for("req-T-HL7-2", timeout_s=30, poll_s=0.1)
            assert doubt.status == "done", doubt.body
            assert his.state.receipts_for("T-HL7-2") == [doubt.result["receipt_no"]]
            assert his.state.application_count("CommitCharge", "T-HL7-2") == 1
            status = await client.operation_status("req-T-HL7-2")
            assert "trade.check found it applied" in (status.body.get("note") or "")
        async with aiohttp.ClientSession() as session, session.get(running.ops_url + "/metrics") as r:
            metrics = await r.text()
        endpoint = running.agent.adapter.endpoint
        assert f'hisbridge_adapter_events_total{{detail="AA",endpoint="{endpoint}",event="ack"}}' in metrics
        assert f'hisbridge_adapter_events_total{{detail="",endpoint="{endpoint}",event="ack_timeout"}}' in metrics
    finally:
        await running.stop()
        await his.close()
