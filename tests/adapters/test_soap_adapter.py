"""The SOAP adapter end to end against the sandbox HIS over a real socket, driven by the shipped profile."""

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.base import InDoubtError, PermanentError, RetryableError
from adapters.profile import load_profile
from adapters.soap import SoapAdapter
from bridge import catalog
from sandbox.cli import SandboxHis, start_sandbox_his
from sandbox.his.faults import FaultRule

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "config" / "profiles" / "sandbox-soap.toml"
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture
async def his() -> AsyncIterator[SandboxHis]:
    his = await start_sandbox_his()
    try:
        yield his
    finally:
        await his.close()


def make_adapter(his: SandboxHis, **overrides: Any) -> SoapAdapter:
    profile = load_profile(
        PROFILE,
        catalog.OPERATIONS,
        read_operations=catalog.READ_OPERATIONS,
        overrides={"soap.base_url": his.base_url, **overrides},
        environ={},
    )
    adapter = profile.build_adapter()
    assert isinstance(adapter, SoapAdapter)
    return adapter


@pytest.fixture
async def adapter(his: SandboxHis) -> AsyncIterator[SoapAdapter]:
    adapter = make_adapter(his)
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.close()


async def call(adapter: SoapAdapter, name: str, /, **params: Any) -> dict[str, Any]:
    """Call as the bridge does: validated input dumped to JSON, output validated against the catalog."""
    op = catalog.OPERATIONS[name]
    result = await adapter.call(name, op.input.model_validate(params).model_dump(mode="json"))
    op.output.model_validate(result)
    return result


def paid(trade_no: str, amount_fen: int, **more: Any) -> dict[str, Any]:
    return {
        "request_id": f"request-{trade_no}",
        "trade_no": trade_no,
        "patient_id": "P0001",
        "amount_fen": amount_fen,
        "channel": "wechat",
        "channel_trade_no": f"wx{trade_no}",
        "paid_at": dt.datetime.now(dt.UTC),
        **more,
    }


async def test_reads(adapter: SoapAdapter) -> None:
    assert adapter.endpoint.startswith("http://127.0.0.1:")
    assert await call(adapter, "patient.query", card_no="C0002") == {
        "found": True,
        "patient_id": "P0002",
        "name": "李四",
        "gender": "F",
        "birth_date": "1990-07-08",
        "card_no": "C0002",
        "phone": "13800000002",
    }
    assert await call(adapter, "patient.query", phone="13900000000") == {"found": False}
    bills = (await call(adapter, "bills.unpaid", patient_id="P0001"))["bills"]
    assert [(b["bill_no"], b["amount_fen"]) for b in bills] == [("B0001", 1250), ("B0002", 8600)]
    assert bills[0]["created_at"].endswith("+08:00")


async def test_every_write_and_its_check(his: SandboxHis, adapter: SoapAdapter) -> None:
    lock = await call(
        adapter, "registration.lock", request_id="req-lock-1", trade_no="TR1", patient_id="P0001", schedule_id="S001"
    )
    assert lock["amount_fen"] == 1000 and lock["lock_id"]
    reg = await call(adapter, "registration.commit", **paid("TR1", 1000, schedule_id="S001", lock_id=lock["lock_id"]))
    assert reg["receipt_no"] and reg["visit_no"]
    check = await call(adapter, "trade.check", trade_no="TR1", operation="registration.commit")
    assert check["found"] is True and check["receipt_no"] == reg["receipt_no"] and check["amount_fen"] == 1000

    lock2 = await call(
        adapter, "registration.lock", request_id="req-lock-2", trade_no="TR2", patient_id="P0002", schedule_id="S002"
    )
    assert await call(
        adapter, "registration.unlock", request_id="req-unlock-2", trade_no="TR2", lock_id=lock2["lock_id"]
    ) == {"unlocked": True}

    charge = await call(adapter, "charge.commit", **paid("TC1", 9850, bill_nos=["B0001", "B0002"]))
    assert charge["receipt_no"]
    prepay = await call(adapter, "prepay.commit", **paid("TP1", 50000, patient_id="P0003", inpatient_no="Z0001"))
    assert prepay["balance_fen"] == 250000

    apply = await call(
        adapter,
        "refund.apply",
        request_id="req-ref-1",
        trade_no="TC1",
        refund_no="RF1",
        amount_fen=1250,
        reason="医保结算后退费 & <部分>",
    )
    assert apply["refundable_fen"] == 9850 and apply["his_refund_id"]
    back = await call(
        adapter,
        "refund.writeback",
        request_id="req-wb-1",
        trade_no="TC1",
        refund_no="RF1",
        amount_fen=1250,
        channel_refund_no="wxr1",
        refunded_at=dt.datetime.now(dt.UTC),
    )
    assert back["receipt_no"]
    check = await call(adapter, "trade.check", trade_no="TC1", operation="refund.writeback", refund_no="RF1")
    assert check["found"] is True and check["receipt_no"] == back["receipt_no"]
    assert (await call(adapter, "trade.check", trade_no="NOPE", operation="charge.commit"))["found"] is False

    today = dt.datetime.now(SHANGHAI).date()
    recon = await call(adapter, "recon.fetch", date=today, page=1, page_size=100)
    kinds = {(r["trade_no"], r["kind"]): r for r in recon["records"]}
    assert recon["total"] == 4 and recon["has_more"] is False
    assert kinds[("TC1", "charge")]["channel"] == "wechat"
    assert kinds[("TC1", "charge")]["amount_fen"] == 9850
    assert kinds[("TC1", "refund")]["refund_no"] == "RF1"
    assert his.state.application_count("CommitCharge", "TC1") == 1


async def test_his_refusal_is_permanent_with_the_his_code(his: SandboxHis, adapter: SoapAdapter) -> None:
    with pytest.raises(PermanentError) as err:
        await call(adapter, "charge.commit", **paid("TC2", 100, bill_nos=["B0001"]))
    assert err.value.code == "2003" and err.value.message
    assert his.state.application_count("CommitCharge") == 0


async def test_preview_shows_the_envelope_without_sending(his: SandboxHis, adapter: SoapAdapter) -> None:
    op = catalog.OPERATIONS["charge.commit"]
    params = op.input.model_validate(paid("TC3", 1250, bill_nos=["B0001"])).model_dump(mode="json")
    preview = await adapter.preview("charge.commit", params)
    assert preview.protocol == "soap"
    assert preview.target == his.url
    assert preview.details["soap_action"] == "http://tempuri.org/CommitCharge"
    assert "<soap-env:Envelope" in preview.payload and "&lt;Amount&gt;12.50&lt;/Amount&gt;" in preview.payload
    assert "<PayMode>WX</PayMode>" in preview.details["parameters"]["inXml"]
    assert his.state.application_count() == 0


async def test_refused_503_is_retryable_and_not_applied(his: SandboxHis, adapter: SoapAdapter) -> None:
    his.faults.add(FaultRule("CommitCharge", "refuse", count=1))
    with pytest.raises(RetryableError) as err:
        await call(adapter, "charge.commit", **paid("TF1", 1250, bill_nos=["B0001"]))
    assert err.value.code == "http_503"
    assert his.state.application_count("CommitCharge") == 0
    assert (await call(adapter, "charge.commit", **paid("TF1", 1250, bill_nos=["B0001"])))["receipt_no"]


async def test_dropped_reply_is_in_doubt_and_trade_check_finds_it(his: SandboxHis, adapter: SoapAdapter) -> None:
    his.faults.add(FaultRule("CommitCharge", "drop_reply", count=1))
    with pytest.raises(InDoubtError) as err:
        await call(adapter, "charge.commit", **paid("TF2", 1250, bill_nos=["B0001"]))
    assert err.value.code == "connection_lost"
    assert his.state.application_count("CommitCharge", "TF2") == 1
    check = await call(adapter, "trade.check", trade_no="TF2", operation="charge.commit")
    assert check["found"] is True and check["amount_fen"] == 1250


async def test_soap_fault_is_permanent_unless_the_profile_says_otherwise(his: SandboxHis) -> None:
    his.faults.add(FaultRule("CommitCharge", "http_500"))
    adapter = make_adapter(his)
    in_doubt = make_adapter(his, **{'operations."charge.commit".response.fault_in_doubt': True})
    try:
        with pytest.raises(PermanentError) as err:
            await call(adapter, "charge.commit", **paid("TF3", 1250, bill_nos=["B0001"]))
        assert err.value.code == "soap_fault" and "injected" in err.value.message
        with pytest.raises(InDoubtError) as doubt:
            await call(in_doubt, "charge.commit", **paid("TF3", 1250, bill_nos=["B0001"]))
        assert doubt.value.code == "soap_fault"
    finally:
        await adapter.close()
        await in_doubt.close()


async def test_timeout_after_send_is_in_doubt(his: SandboxHis) -> None:
    adapter = make_adapter(his, **{"soap.operation_timeout_s": 0.3})
    his.faults.add(FaultRule("CommitPrepay", "latency", latency_ms=1500, count=1))
    try:
        with pytest.raises(InDoubtError) as err:
            await call(adapter, "prepay.commit", **paid("TF4", 100, patient_id="P0003", inpatient_no="Z0001"))
        assert err.value.code == "timeout"
    finally:
        await adapter.close()


async def test_injected_error_codes_and_retryable_codes(his: SandboxHis) -> None:
    his.faults.add(FaultRule("CommitCharge", "error", error_code="9999"))
    plain = make_adapter(his)
    busy = make_adapter(his, **{'operations."charge.commit".response.retryable_codes': ["9999"]})
    try:
        with pytest.raises(PermanentError) as err:
            await call(plain, "charge.commit", **paid("TF5", 1250, bill_nos=["B0001"]))
        assert err.value.code == "9999"
        with pytest.raises(RetryableError) as retry:
            await call(busy, "charge.commit", **paid("TF5", 1250, bill_nos=["B0001"]))
        assert retry.value.code == "9999"
    finally:
        await plain.close()
        await busy.close()
