"""The shipped `soap-asmx-xml` profile through the SOAP adapter against the sandbox HisService: every catalog
operation with GBK-declared inner documents, Chinese text intact, and SOAP faults on commits in doubt."""

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from adapters.base import InDoubtError, PermanentError
from adapters.profile import load_profile
from adapters.soap import SoapAdapter
from bridge import catalog
from sandbox.cli import SandboxHis, start_sandbox_his
from sandbox.his.faults import FaultRule
from sandbox.his.state import SHANGHAI

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "config" / "profiles" / "soap-asmx-xml.toml"
NOW = dt.datetime(2025, 11, 14, 23, 59, 59, tzinfo=SHANGHAI)


@pytest.fixture
async def his(tmp_path: Path) -> AsyncIterator[SandboxHis]:
    sandbox = await start_sandbox_his(db_path=tmp_path / "his.sqlite3", clock=lambda: NOW)
    yield sandbox
    await sandbox.close()


@pytest.fixture
async def adapter(his: SandboxHis) -> AsyncIterator[SoapAdapter]:
    profile = load_profile(
        PROFILE, catalog.OPERATIONS, read_operations=catalog.READ_OPERATIONS, environ={"HIS_SANDBOX_URL": his.base_url}
    )
    assert profile.operations == frozenset(catalog.OPERATIONS)
    adapter = profile.build_adapter()
    assert isinstance(adapter, SoapAdapter)
    await adapter.start()
    yield adapter
    await adapter.close()


async def call(adapter: SoapAdapter, name: str, /, **params: Any) -> dict[str, Any]:
    op = catalog.OPERATIONS[name]
    result = await adapter.call(name, op.input.model_validate(params).model_dump(mode="json"))
    return op.output.model_validate(result).model_dump(mode="json")


def paid(trade_no: str, patient_id: str, amount_fen: int, **more: Any) -> dict[str, Any]:
    return {
        "request_id": f"request-{trade_no}",
        "trade_no": trade_no,
        "patient_id": patient_id,
        "amount_fen": amount_fen,
        "channel": "unionpay",
        "channel_trade_no": f"up{trade_no}",
        "paid_at": "2025-11-14T01:30:00Z",
        **more,
    }


async def test_every_operation_with_gbk_declared_documents(his: SandboxHis, adapter: SoapAdapter) -> None:
    preview = await adapter.preview("bills.unpaid", {"patient_id": "P0001"})
    assert preview.details["parameters"]["inXml"].startswith('<?xml version="1.0" encoding="GBK"?>\n<Request>')
    assert (await call(adapter, "patient.query", card_no="C0004"))["name"] == "赵六"
    assert [b["bill_no"] for b in (await call(adapter, "bills.unpaid", patient_id="P0002"))["bills"]] == [
        "B0003",
        "B0004",
    ]

    lock_input = {"patient_id": "P0001", "schedule_id": "S002"}
    released = await call(adapter, "registration.lock", request_id="request-L1", trade_no="T-L1", **lock_input)
    assert released["amount_fen"] == 5000
    unlock = {"request_id": "request-U1", "trade_no": "T-L1", "lock_id": released["lock_id"]}
    assert await call(adapter, "registration.unlock", **unlock) == {"unlocked": True}
    lock = await call(adapter, "registration.lock", request_id="request-L2", trade_no="T-R1", **lock_input)
    registered = await call(
        adapter, "registration.commit", **paid("T-R1", "P0001", 5000, schedule_id="S002", lock_id=lock["lock_id"])
    )
    assert registered["visit_no"] is not None

    charged = await call(adapter, "charge.commit", **paid("T-C1", "P0002", 30380, bill_nos=["B0003", "B0004"]))
    prepaid = await call(adapter, "prepay.commit", **paid("T-P1", "P0003", 50000, inpatient_no="Z0001"))
    assert prepaid["balance_fen"] == 250000

    reason = "医保结算后退还自费部分（统筹支付）"
    refund = {"trade_no": "T-C1", "refund_no": "R-C1", "amount_fen": 4380}
    applied = await call(adapter, "refund.apply", request_id="request-RA", reason=reason, **refund)
    assert applied["refundable_fen"] == 30380
    with closing(sqlite3.connect(his.state.db_path)) as db:
        assert db.execute("SELECT reason FROM refunds WHERE refund_no = 'R-C1'").fetchone()[0] == reason
    written = await call(
        adapter,
        "refund.writeback",
        request_id="request-RW",
        channel_refund_no="up-refund-1",
        refunded_at="2025-11-14T10:05:00+08:00",
        **refund,
    )

    checks = {
        ("T-R1", "registration.commit", None): registered["receipt_no"],
        ("T-C1", "charge.commit", None): charged["receipt_no"],
        ("T-P1", "prepay.commit", None): prepaid["receipt_no"],
        ("T-R1", "registration.lock", None): lock["lock_id"],
        ("T-L1", "registration.unlock", None): released["lock_id"],
        ("T-C1", "refund.apply", "R-C1"): applied["his_refund_id"],
        ("T-C1", "refund.writeback", "R-C1"): written["receipt_no"],
    }
    for (trade_no, operation, refund_no), receipt_no in checks.items():
        found = await call(adapter, "trade.check", trade_no=trade_no, operation=operation, refund_no=refund_no)
        assert (found["found"], found["receipt_no"]) == (True, receipt_no), operation
    assert (await call(adapter, "trade.check", trade_no="T-NONE", operation="charge.commit"))["found"] is False

    day = await call(adapter, "recon.fetch", date="2025-11-14")
    kinds = [(r["trade_no"], r["kind"], r["channel"]) for r in day["records"]]
    assert kinds == [
        ("T-R1", "registration", "unionpay"),
        ("T-C1", "charge", "unionpay"),
        ("T-P1", "prepay", "unionpay"),
        ("T-C1", "refund", "unionpay"),
    ]


async def test_a_fault_on_a_commit_is_in_doubt_and_a_refusal_is_not(his: SandboxHis, adapter: SoapAdapter) -> None:
    his.faults.add(FaultRule.from_json({"operation": "CommitCharge", "mode": "http_500", "count": 1}))
    charge = paid("T-F1", "P0001", 9850, bill_nos=["B0001", "B0002"])
    with pytest.raises(InDoubtError) as fault:
        await call(adapter, "charge.commit", **charge)
    assert fault.value.code == "soap_fault"
    assert (await call(adapter, "trade.check", trade_no="T-F1", operation="charge.commit"))["found"] is False
    assert (await call(adapter, "charge.commit", **charge))["receipt_no"].startswith("SF")
    with pytest.raises(PermanentError) as refused:
        await call(adapter, "charge.commit", **{**charge, "trade_no": "T-F2"})
    assert refused.value.code == "2002"
    with pytest.raises(PermanentError) as unknown:  # the catalog refuses it first; the profile does too
        await adapter.call("trade.check", {"trade_no": "T-F1", "operation": "patient.query", "refund_no": None})
    assert unknown.value.code == "mapping_error" and "business_type" in unknown.value.message
