"""Both stored-procedure profiles against real PostgreSQL and MariaDB give the same catalog outputs as the SOAP
profile against the SOAP sandbox, for the same sequence of calls on a freshly seeded HIS."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.base import Adapter, AdapterError
from adapters.dbproc import DbprocAdapter
from adapters.profile import load_profile
from bridge import catalog
from sandbox.cli import start_sandbox_his
from tests.support.db_fixtures import SandboxDb

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "config" / "profiles"
DB_PROFILES = {"postgresql": "dbproc-postgresql.toml", "mariadb": "dbproc-mariadb-dispatcher.toml"}
TIME_FIELDS = frozenset({"expires_at", "created_at", "time", "written_back_at"})


def dbproc_adapter(db: SandboxDb, **overrides: Any) -> DbprocAdapter:
    profile = load_profile(
        PROFILES / DB_PROFILES[db.dialect],
        catalog.OPERATIONS,
        read_operations=catalog.READ_OPERATIONS,
        overrides={"dbproc.connection": db.connection, **overrides},
        environ={},
    )
    adapter = profile.build_adapter()
    assert isinstance(adapter, DbprocAdapter)
    return adapter


async def call(adapter: Adapter, name: str, /, **params: Any) -> Any:
    """As the bridge calls: validated input as JSON, output checked against the catalog; errors as data."""
    op = catalog.OPERATIONS[name]
    try:
        result = await adapter.call(name, op.input.model_validate(params).model_dump(mode="json"))
    except AdapterError as exc:
        return ("error", exc.kind.value, exc.code)
    op.output.model_validate(result)
    return _normalized(result)


def _normalized(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in TIME_FIELDS and item is not None:
                dt.datetime.fromisoformat(item)
                item = "<time>"
            out[key] = _normalized(item)
        return out
    if isinstance(value, list):
        return [_normalized(item) for item in value]
    return value


def paid(trade_no: str, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": f"req-{trade_no}",
        "trade_no": trade_no,
        "channel": "wechat",
        "channel_trade_no": f"W{trade_no}",
        "paid_at": "2026-11-25T10:00:00+08:00",
        **extra,
    }


async def scenario(adapter: Adapter) -> list[Any]:
    """Every catalog operation, successes and refusals, in one order."""
    today = dt.datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()
    return [
        await call(adapter, "patient.query", card_no="C0001"),
        await call(adapter, "patient.query", id_card_no="310115199007080028"),
        await call(adapter, "patient.query", phone="13800000003"),
        await call(adapter, "patient.query", card_no="C9999"),
        await call(adapter, "bills.unpaid", patient_id="P0001"),
        await call(adapter, "bills.unpaid", patient_id="P9999"),
        await call(
            adapter,
            "registration.lock",
            request_id="req-lock-1",
            trade_no="T-REG1",
            patient_id="P0001",
            schedule_id="S001",
        ),
        await call(
            adapter,
            "registration.commit",
            **paid("T-REG1", patient_id="P0001", schedule_id="S001", lock_id="LK00000001", amount_fen=1000),
        ),
        await call(
            adapter,
            "registration.lock",
            request_id="req-lock-2",
            trade_no="T-REG2",
            patient_id="P0002",
            schedule_id="S003",
        ),
        await call(
            adapter,
            "registration.lock",
            request_id="req-lock-3",
            trade_no="T-REG3",
            patient_id="P0003",
            schedule_id="S003",
        ),
        await call(adapter, "registration.unlock", request_id="req-unlock-2", trade_no="T-REG2", lock_id="LK00000002"),
        await call(
            adapter, "registration.commit", **paid("T-REG4", patient_id="P0004", schedule_id="S002", amount_fen=4000)
        ),
        await call(
            adapter, "charge.commit", **paid("T-CHG1", patient_id="P0001", bill_nos=["B0001", "B0002"], amount_fen=9850)
        ),
        await call(adapter, "charge.commit", **paid("T-CHG2", patient_id="P0001", bill_nos=["B0001"], amount_fen=1250)),
        await call(adapter, "charge.commit", **paid("T-CHG3", patient_id="P0002", bill_nos=["B0003"], amount_fen=100)),
        await call(adapter, "charge.commit", **paid("T-CHG4", patient_id="P0002", bill_nos=["B0005"], amount_fen=2000)),
        await call(adapter, "bills.unpaid", patient_id="P0001"),
        await call(
            adapter, "prepay.commit", **paid("T-PRE1", patient_id="P0003", inpatient_no="Z0001", amount_fen=50000)
        ),
        await call(
            adapter, "prepay.commit", **paid("T-PRE2", patient_id="P0001", inpatient_no="Z0001", amount_fen=100)
        ),
        await call(adapter, "trade.check", trade_no="T-CHG1", operation="charge.commit"),
        await call(adapter, "trade.check", trade_no="T-NONE", operation="charge.commit"),
        await call(adapter, "trade.check", trade_no="T-REG1", operation="registration.lock"),
        await call(
            adapter,
            "refund.apply",
            request_id="req-rf-1",
            trade_no="T-CHG1",
            refund_no="R1",
            amount_fen=1250,
            reason="患者'退费' <a&b> \"x\"",
        ),
        await call(adapter, "refund.apply", request_id="req-rf-1b", trade_no="T-CHG1", refund_no="R1", amount_fen=1250),
        await call(adapter, "refund.apply", request_id="req-rf-2", trade_no="T-CHG1", refund_no="R2", amount_fen=99999),
        await call(adapter, "refund.apply", request_id="req-rf-3", trade_no="T-PRE1", refund_no="R3", amount_fen=30000),
        await call(
            adapter,
            "refund.writeback",
            request_id="req-wb-1",
            trade_no="T-CHG1",
            refund_no="R1",
            amount_fen=1250,
            channel_refund_no="WR1",
            refunded_at="2026-11-25T11:00:00+08:00",
        ),
        await call(
            adapter,
            "refund.writeback",
            request_id="req-wb-2",
            trade_no="T-CHG1",
            refund_no="R1",
            amount_fen=1250,
            channel_refund_no="WR1",
            refunded_at="2026-11-25T11:00:00+08:00",
        ),
        await call(
            adapter,
            "refund.writeback",
            request_id="req-wb-3",
            trade_no="T-CHG1",
            refund_no="R9",
            amount_fen=1250,
            channel_refund_no="WR9",
            refunded_at="2026-11-25T11:00:00+08:00",
        ),
        await call(adapter, "trade.check", trade_no="T-CHG1", operation="refund.apply", refund_no="R1"),
        await call(adapter, "trade.check", trade_no="T-CHG1", operation="refund.writeback", refund_no="R1"),
        await call(adapter, "trade.check", trade_no="T-CHG1", operation="charge.commit"),
        await call(adapter, "trade.check", trade_no="T-PRE1", operation="refund.cancel", refund_no="R3"),
        await call(adapter, "refund.cancel", request_id="req-cx-3", trade_no="T-PRE1", refund_no="R3", reason="不退了"),
        await call(adapter, "refund.cancel", request_id="req-cx-3b", trade_no="T-PRE1", refund_no="R3"),
        await call(adapter, "refund.cancel", request_id="req-cx-1", trade_no="T-CHG1", refund_no="R1"),
        await call(adapter, "refund.cancel", request_id="req-cx-9", trade_no="T-CHG1", refund_no="R9"),
        await call(adapter, "trade.check", trade_no="T-PRE1", operation="refund.cancel", refund_no="R3"),
        await call(adapter, "trade.check", trade_no="T-PRE1", operation="refund.apply", refund_no="R3"),
        await call(adapter, "refund.apply", request_id="req-rf-3c", trade_no="T-PRE1", refund_no="R3", amount_fen=1),
        await call(adapter, "refund.apply", request_id="req-rf-4", trade_no="T-PRE1", refund_no="R4", amount_fen=50000),
        await call(adapter, "recon.fetch", date=today, page=1, page_size=2),
        await call(adapter, "recon.fetch", date=today, page=2, page_size=2),
        await call(adapter, "recon.fetch", date=today),
        await call(adapter, "recon.fetch", date="2020-01-01"),
    ]


@pytest.fixture(scope="module")
def soap_results() -> list[Any]:
    return asyncio.run(_soap_scenario())


async def _soap_scenario() -> list[Any]:
    his = await start_sandbox_his()
    try:
        profile = load_profile(
            PROFILES / "sandbox-soap.toml",
            catalog.OPERATIONS,
            read_operations=catalog.READ_OPERATIONS,
            overrides={"soap.base_url": his.base_url},
            environ={},
        )
        adapter = profile.build_adapter()
        await adapter.start()
        try:
            return await scenario(adapter)
        finally:
            await adapter.close()
    finally:
        await his.close()


@pytest.fixture
async def adapter(sandbox_db: SandboxDb) -> AsyncIterator[DbprocAdapter]:
    adapter = dbproc_adapter(sandbox_db)
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.close()


async def test_every_operation_maps_like_the_soap_profile(
    adapter: DbprocAdapter, sandbox_db: SandboxDb, soap_results: list[Any]
) -> None:
    results = await scenario(adapter)
    assert len(results) == len(soap_results)
    for index, (ours, soap) in enumerate(zip(results, soap_results, strict=True)):
        assert ours == soap, f"call #{index}"
    assert results[12]["receipt_no"].startswith("SF")
    assert results[13] == ("error", "permanent", "2002")
    counts = dict(sandbox_db.query("SELECT operation, COUNT(*) FROM applications GROUP BY operation"))
    assert counts["CommitCharge"] == 1
    assert counts["ApplyRefund"] == 4
    assert counts["CancelRefund"] == 2
    before, cancel, again, written_back, unknown, check, applied, reapplied, fresh = results[32:41]
    assert before == {"found": False, "receipt_no": None, "amount_fen": None, "status": None}
    assert cancel == again == {"cancelled": True, "receipt_no": cancel["receipt_no"], "amount_fen": 30000}
    assert (written_back, unknown) == (("error", "permanent", "3004"), ("error", "permanent", "3003"))
    assert check == {"found": True, "receipt_no": cancel["receipt_no"], "amount_fen": 30000, "status": "cancelled"}
    assert applied["status"] == "cancelled" and reapplied == ("error", "permanent", "3005")
    assert fresh["refundable_fen"] == 50000  # the withdrawn 300.00 counts no more against the deposit
    assert sandbox_db.query("SELECT balance_fen FROM inpatients WHERE inpatient_no = 'Z0001'") == [(200000,)]
    states = {r["refund_no"]: r["refund_state"] for r in results[-2]["records"] if r["kind"] == "refund"}
    assert states == {"R1": "written_back", "R4": "applied"}


def test_both_profiles_bind_every_catalog_operation(sandbox_db: SandboxDb) -> None:
    adapter = dbproc_adapter(sandbox_db)
    assert adapter.operations() == frozenset(catalog.OPERATIONS)
