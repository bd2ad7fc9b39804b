"""A ``refund.cancel`` whose outcome is in doubt is settled by ``trade.check`` and reaches the HIS's books once,
over every protocol: the real agent with the SOAP and HL7 profiles while the sandbox HIS applies the cancellation
and drops its reply, and with the stored-procedure profiles while the database connection dies mid-call (rolled
back: resent) or the agent died after sending (applied: not resent)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bridge import catalog
from bridge.config import DispatchConfig, load_config
from bridge.dispatcher import Dispatcher
from bridge.journal import Journal, State
from bridge.metrics import Metrics
from bridge.server import start_agent
from sandbox.cli import SandboxHis, start_sandbox_his
from sandbox.his.faults import FaultRule
from tests.adapters.test_dbproc_errors import wait_and_kill
from tests.adapters.test_dbproc_profiles import dbproc_adapter
from tests.support.db_fixtures import SandboxDb
from tests.support.hl7rig import HL7_PROFILE
from tests.support.rig import REPO, bridge_config_toml, make_client, prepay

DB_PROFILES = {
    "postgresql": REPO / "config" / "profiles" / "dbproc-postgresql.toml",
    "mariadb": REPO / "config" / "profiles" / "dbproc-mariadb-dispatcher.toml",
}
CANCEL = {"request_id": "req-cancel-R-DOUBT", "trade_no": "T-DOUBT", "refund_no": "R-DOUBT", "reason": "不退了"}


def apply(amount_fen: int = 30000) -> dict[str, Any]:
    return {"request_id": "req-apply-R-DOUBT", "trade_no": "T-DOUBT", "refund_no": "R-DOUBT", "amount_fen": amount_fen}


async def until_finished(client: Any, request_id: str, answer: Any) -> Any:
    if answer.status == "pending":
        answer = await client.wait_for(request_id, timeout_s=30, poll_s=0.05)
    return answer


async def cancel_with_the_reply_dropped(client: Any, his: SandboxHis, rule: FaultRule) -> None:
    """Deposit 500.00, refund 300.00, then the cancellation: applied by the HIS, its reply lost."""
    balance = his.state.balance("Z0001")
    assert (await client.call("prepay.commit", prepay("T-DOUBT", amount_fen=50000))).status == "done"
    assert (await client.call("refund.apply", apply())).status == "done"
    his.faults.add(rule)
    answer = await until_finished(client, CANCEL["request_id"], await client.call("refund.cancel", CANCEL))
    assert answer.status == "done", answer.body
    assert answer.result["cancelled"] is True and answer.result["amount_fen"] == 30000
    assert his.faults.rules() == [] and his.faults.fired == 1
    assert his.state.application_count("CancelRefund", "T-DOUBT", "R-DOUBT") == 1
    check = his.state.check_trade("T-DOUBT", "refund.cancel", "R-DOUBT")
    assert answer.result["receipt_no"] == check["receipt_no"]
    assert his.state.balance("Z0001") == balance + 50000
    status = await client.operation_status(CANCEL["request_id"])
    assert "trade.check found it applied, not resent" in (status.body.get("note") or "")


async def test_soap_cancel_applied_then_reply_dropped_is_checked_not_resent(client, his) -> None:
    await cancel_with_the_reply_dropped(client, his, FaultRule("CancelRefund", "drop_reply", count=1))


async def test_hl7_cancel_applied_then_reply_dropped_is_checked_not_resent(tmp_path: Path, dev_certs) -> None:
    his = await start_sandbox_his(db_path=tmp_path / "his.sqlite3", mllp=("127.0.0.1", 0))
    config = tmp_path / "bridge.toml"
    config.write_text(
        bridge_config_toml(
            dev_certs,
            tmp_path / "journal.sqlite3",
            his.base_url,
            profile=HL7_PROFILE,
            overrides={"hl7.port": str(his.mllp_address[1])},
        )
    )
    running = await start_agent(load_config(config))
    try:
        async with make_client(dev_certs, running.api_url) as client:
            await cancel_with_the_reply_dropped(client, his, FaultRule("refund.cancel", "drop_reply", count=1))
    finally:
        await running.stop()
        await his.close()


def as_sent(operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters as the agent hands them to the adapter (and keeps them in the journal)."""
    return catalog.OPERATIONS[operation].input.model_validate(params).model_dump(mode="json")


def cancel_calls(db: SandboxDb) -> int:
    return int(db.query("SELECT COUNT(*) FROM applications WHERE operation = 'CancelRefund'")[0][0])


def balance(db: SandboxDb) -> int:
    return int(db.query("SELECT balance_fen FROM inpatients WHERE inpatient_no = 'Z0001'")[0][0])


async def test_dbproc_cancel_cut_mid_call_is_checked_then_sent_once(bridge_factory, dev_certs, sandbox_db) -> None:
    """The connection dies while the procedure runs: its transaction is rolled back, trade.check finds no
    cancellation, and the agent sends it again, once."""
    running = await bridge_factory(
        profile=DB_PROFILES[sandbox_db.dialect], overrides={"dbproc.connection": sandbox_db.connection}
    )
    postgresql = sandbox_db.dialect == "postgresql"
    before = balance(sandbox_db)
    async with make_client(dev_certs, running.api_url) as client:
        assert (await client.call("prepay.commit", prepay("T-DOUBT", amount_fen=50000))).status == "done"
        assert (await client.call("refund.apply", apply())).status == "done"
        sandbox_db.add_fault("his_refund_cancel" if postgresql else "CancelRefund", "latency", sleep_ms=5000)
        call = asyncio.create_task(client.call("refund.cancel", CANCEL))
        await wait_and_kill(sandbox_db, "his_refund_cancel" if postgresql else "his_dispatch")
        sandbox_db.execute("DELETE FROM his_faults")
        answer = await until_finished(client, CANCEL["request_id"], await call)
        assert answer.status == "done", answer.body
        assert answer.result["cancelled"] is True and answer.result["amount_fen"] == 30000
        status = await client.operation_status(CANCEL["request_id"])
        assert "trade.check found nothing, resent" in (status.body.get("note") or "")
    assert cancel_calls(sandbox_db) == 1
    assert balance(sandbox_db) == before + 50000
    rows = sandbox_db.query("SELECT cancel_receipt_no, cancel_reason FROM refunds WHERE refund_no = 'R-DOUBT'")
    assert rows == [(answer.result["receipt_no"], "不退了")]


async def test_dbproc_cancel_applied_before_a_crash_is_checked_not_resent(tmp_path: Path, sandbox_db) -> None:
    """The agent died after the HIS had committed the cancellation: on restart the journal entry is in flight,
    and trade.check (not a second cancellation) settles it."""
    adapter = dbproc_adapter(sandbox_db)
    await adapter.start()
    journal = Journal(tmp_path / "journal.sqlite3")
    await journal.open()
    dispatcher: Dispatcher | None = None
    try:
        for operation, params in [
            ("prepay.commit", prepay("T-DOUBT", amount_fen=50000)),
            ("refund.apply", apply()),
            ("refund.cancel", CANCEL),
        ]:
            await adapter.call(operation, as_sent(operation, params))
        receipt = sandbox_db.query("SELECT cancel_receipt_no FROM refunds WHERE refund_no = 'R-DOUBT'")[0][0]
        entry, _ = await journal.accept(
            request_id=CANCEL["request_id"],
            client_id="platform-gateway",
            operation="refund.cancel",
            business_key="T-DOUBT",
            body_sha256="0" * 64,
            params=as_sent("refund.cancel", CANCEL),
        )
        await journal.update(entry.seq, State.in_flight, attempts_delta=1)
        dispatcher = Dispatcher(
            journal, adapter, DispatchConfig(backoff_base_s=0.01, backoff_max_s=0.02, his_timeout_s=0.5), Metrics()
        )
        assert await dispatcher.start() == 1
        done = await dispatcher.wait(entry.seq, 10)
        assert done is not None and done.state is State.done, done
        assert done.result == {"cancelled": True, "receipt_no": receipt, "amount_fen": 30000}
        assert "trade.check found it applied, not resent" in (done.note or "")
        assert cancel_calls(sandbox_db) == 1
    finally:
        if dispatcher is not None:
            await dispatcher.stop()
        await journal.close()
        await adapter.close()
