"""The stored-procedure adapter against real PostgreSQL and MariaDB: injection stays data, failures are
classified by whether the HIS could have applied the call, and nothing half-done survives a failed sequence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.base import InDoubtError, PermanentError, RetryableError
from adapters.dbproc import DbprocAdapter
from tests.adapters.test_dbproc_profiles import dbproc_adapter, paid
from tests.support.db_fixtures import SandboxDb
from tests.support.rig import free_port

INJECTION = "P0001'; DROP TABLE bills; --"


@pytest.fixture
async def adapter(sandbox_db: SandboxDb) -> AsyncIterator[DbprocAdapter]:
    adapter = dbproc_adapter(sandbox_db)
    try:
        yield adapter
    finally:
        await adapter.close()


def charge(trade_no: str = "T-CHG1", bill_nos: list[str] | None = None, amount_fen: int = 9850) -> dict[str, Any]:
    return paid(trade_no, patient_id="P0001", bill_nos=bill_nos or ["B0001", "B0002"], amount_fen=amount_fen)


def lock_call(sandbox_db: SandboxDb) -> str:
    """What the registration.lock call is named in the fault table and in the server's session list."""
    return "his_reg_lock" if sandbox_db.dialect == "postgresql" else "LockRegistration"


def assert_nothing_posted(sandbox_db: SandboxDb) -> None:
    assert sandbox_db.query("SELECT COUNT(*) FROM trades")[0][0] == 0
    assert sandbox_db.query("SELECT COUNT(*) FROM his_charge_sessions")[0][0] == 0
    assert sandbox_db.query("SELECT COUNT(*) FROM his_charge_lines")[0][0] == 0
    assert sandbox_db.query("SELECT COUNT(*) FROM bills WHERE status = 'unpaid'")[0][0] == 6


async def test_injection_in_every_field_stays_data(adapter: DbprocAdapter, sandbox_db: SandboxDb) -> None:
    quoted = 'O\'Brien "张" <a&b> --'
    sandbox_db.execute(
        "INSERT INTO patients (patient_id, name, gender, card_no) VALUES (?, ?, ?, ?)", "P0009", quoted, "U", "C'9"
    )
    found = await adapter.call("patient.query", {"card_no": "C'9", "id_card_no": None, "phone": None})
    assert found["name"] == quoted and found["patient_id"] == "P0009"
    missing = await adapter.call("patient.query", {"card_no": "C0001' OR '1'='1", "id_card_no": None, "phone": None})
    assert missing == {"found": False}
    with pytest.raises(PermanentError) as refused:
        await adapter.call("bills.unpaid", {"patient_id": INJECTION})
    assert refused.value.code == "1001"
    with pytest.raises(PermanentError) as refused:
        await adapter.call("charge.commit", charge(INJECTION, bill_nos=["B0001'; DELETE FROM bills; --"]))
    assert refused.value.code in ("1001", "2001")
    with pytest.raises(PermanentError):
        await adapter.call("charge.commit", {**charge(), "patient_id": INJECTION})
    check = await adapter.call("trade.check", {"trade_no": INJECTION, "operation": "charge.commit", "refund_no": None})
    assert check["found"] is False
    receipt = await adapter.call("charge.commit", {**charge(), "channel_trade_no": "W'); DROP TABLE trades; --"})
    applied = await adapter.call(
        "refund.apply",
        {"request_id": "r-1", "trade_no": "T-CHG1", "refund_no": "R'1", "amount_fen": 100, "reason": quoted},
    )
    assert applied["refundable_fen"] == 9850
    assert sandbox_db.query("SELECT reason FROM refunds WHERE refund_no = ?", "R'1") == [(quoted,)]
    assert sandbox_db.query("SELECT channel_trade_no FROM trades WHERE receipt_no = ?", receipt["receipt_no"]) == [
        ("W'); DROP TABLE trades; --",)
    ]
    assert sandbox_db.query("SELECT COUNT(*) FROM bills")[0][0] == 6


async def test_a_deadlock_is_retryable_and_applies_nothing(adapter: DbprocAdapter, sandbox_db: SandboxDb) -> None:
    sandbox_db.add_fault(lock_call(sandbox_db), "deadlock")
    params = {"request_id": "r-lock-1", "trade_no": "T-L1", "patient_id": "P0001", "schedule_id": "S001"}
    with pytest.raises(RetryableError) as failed:
        await adapter.call("registration.lock", params)
    assert failed.value.code == "sqlstate_40001"
    assert sandbox_db.query("SELECT COUNT(*) FROM locks")[0][0] == 0
    sandbox_db.execute("DELETE FROM his_faults")
    assert (await adapter.call("registration.lock", params))["lock_id"] == "LK00000001"


async def test_a_refused_connection_is_retryable(sandbox_db: SandboxDb) -> None:
    closed = sandbox_db.connection.replace(f"Port={sandbox_db.db.port};", f"Port={free_port()};")
    adapter = dbproc_adapter(sandbox_db, **{"dbproc.connection": closed})
    try:
        with pytest.raises(RetryableError) as failed:
            await adapter.call("charge.commit", charge())
        assert failed.value.code == "connect_failed"
    finally:
        await adapter.close()


async def wait_and_kill(sandbox_db: SandboxDb, marker: str) -> None:
    for _ in range(200):
        await asyncio.sleep(0.05)
        if await asyncio.to_thread(sandbox_db.kill_sessions_running, marker):
            return
    raise AssertionError(f"no session ran {marker}")


async def test_a_connection_killed_mid_call_is_in_doubt(adapter: DbprocAdapter, sandbox_db: SandboxDb) -> None:
    sandbox_db.add_fault(lock_call(sandbox_db), "latency", sleep_ms=5000)
    params = {"request_id": "r-lock-1", "trade_no": "T-L1", "patient_id": "P0001", "schedule_id": "S001"}
    call = asyncio.create_task(adapter.call("registration.lock", params))
    await wait_and_kill(sandbox_db, "his_reg_lock" if sandbox_db.dialect == "postgresql" else "his_dispatch")
    with pytest.raises(InDoubtError):
        await call
    sandbox_db.execute("DELETE FROM his_faults")
    assert (await adapter.call("registration.lock", params))["lock_id"]


async def test_a_sequence_killed_before_submit_posts_nothing(adapter: DbprocAdapter, sandbox_db: SandboxDb) -> None:
    sandbox_db.add_fault("his_charge_submit", "latency", sleep_ms=5000)
    call = asyncio.create_task(adapter.call("charge.commit", charge()))
    await wait_and_kill(sandbox_db, "his_charge_submit")
    with pytest.raises(InDoubtError):
        await call
    assert_nothing_posted(sandbox_db)


@pytest.mark.parametrize("failing_step", ["his_charge_add_line", "his_charge_submit"])
async def test_a_sequence_refused_halfway_posts_nothing(
    adapter: DbprocAdapter, sandbox_db: SandboxDb, failing_step: str
) -> None:
    sandbox_db.add_fault(failing_step, "error", error_code="9999")
    with pytest.raises(PermanentError) as refused:
        await adapter.call("charge.commit", charge())
    assert refused.value.code == "9999"
    assert_nothing_posted(sandbox_db)
    sandbox_db.execute("DELETE FROM his_faults")
    assert (await adapter.call("charge.commit", charge()))["receipt_no"]


async def test_a_refusal_on_the_second_bill_rolls_back_the_first(adapter: DbprocAdapter, sandbox_db: SandboxDb) -> None:
    with pytest.raises(PermanentError) as refused:
        await adapter.call("charge.commit", charge(bill_nos=["B0001", "B0003"], amount_fen=27250))
    assert refused.value.code == "2001"
    assert_nothing_posted(sandbox_db)


async def test_every_result_set_is_drained_and_the_connection_reused(sandbox_mariadb: SandboxDb) -> None:
    adapter = dbproc_adapter(sandbox_mariadb, **{"dbproc.pool_size": 1})
    try:
        result, raw = await adapter.call_raw("charge.commit", charge())
        assert result["receipt_no"].startswith("SF")
        sets = json.loads(raw or "{}")["sets"]
        assert [s["columns"][0] for s in sets] == ["line_no", "line_count", "status"]
        assert len(adapter._idle) == 1
        bills = await adapter.call("bills.unpaid", {"patient_id": "P0002"})
        assert [b["bill_no"] for b in bills["bills"]] == ["B0003", "B0004"]
        assert len(adapter._idle) == 1
    finally:
        await adapter.close()


async def test_the_query_timeout_is_honoured(sandbox_db: SandboxDb) -> None:
    adapter = dbproc_adapter(sandbox_db, **{"dbproc.query_timeout_s": 1, "dbproc.pool_size": 1})
    try:
        sandbox_db.add_fault(lock_call(sandbox_db), "latency", sleep_ms=30_000)
        params = {"request_id": "r-lock-1", "trade_no": "T-L1", "patient_id": "P0001", "schedule_id": "S001"}
        with pytest.raises(InDoubtError):
            await asyncio.wait_for(adapter.call("registration.lock", params), timeout=25)
        sandbox_db.execute("DELETE FROM his_faults")
        assert (await adapter.call("registration.lock", params))["lock_id"]
    finally:
        await adapter.close()
