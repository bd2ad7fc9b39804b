"""The HL7 adapter against the sandbox HIS's MLLP listener over real sockets, driven by the shipped profile.

The sandbox serves SOAP and MLLP over one state, so the same calls can be made through both profiles and
compared; fault rules make the listener answer AE or AR, stay silent, answer with the wrong MSA-2 or drop the
connection after applying.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from adapters.base import AdapterError, InDoubtError, PermanentError, RetryableError
from adapters.hl7 import Hl7Adapter
from adapters.profile import load_profile
from adapters.soap import SoapAdapter
from bridge import catalog
from sandbox.cli import SandboxHis, start_sandbox_his
from sandbox.his.faults import FaultRule
from tests.support.hl7rig import NOW, Call, caller, make_adapter, paid
from tests.support.rig import SANDBOX_PROFILE as SOAP_PROFILE
from tests.support.rig import free_port


async def sandbox(**kwargs: Any) -> SandboxHis:
    return await start_sandbox_his(mllp=("127.0.0.1", 0), **kwargs)


@pytest.fixture
async def his() -> AsyncIterator[SandboxHis]:
    his = await sandbox()
    try:
        yield his
    finally:
        await his.close()


@pytest.fixture
async def adapter(his: SandboxHis) -> AsyncIterator[Hl7Adapter]:
    adapter = make_adapter(his)
    try:
        yield adapter
    finally:
        await adapter.close()


async def scenario(call: Call) -> list[Any]:
    """Every catalog operation, including refusals and not-found answers, in one business day."""
    out: list[Any] = []

    async def step(name: str, /, **params: Any) -> dict[str, Any]:
        try:
            result = await call(name, **params)
        except AdapterError as exc:
            out.append((name, exc.kind.value, exc.code, exc.message))
            return {}
        out.append((name, result))
        return result

    await step("patient.query", card_no="C0002")
    await step("patient.query", phone="13800000003")
    await step("patient.query", phone="13900000000")
    await step("bills.unpaid", patient_id="P0001")
    await step("bills.unpaid", patient_id="P0404")
    lock = await step(
        "registration.lock", request_id="req-lock-1", trade_no="TR1", patient_id="P0001", schedule_id="S001"
    )
    await step("registration.commit", **paid("TR1", 1000, schedule_id="S001", lock_id=lock["lock_id"]))
    lock = await step(
        "registration.lock", request_id="req-lock-2", trade_no="TR2", patient_id="P0002", schedule_id="S002"
    )
    await step("registration.unlock", request_id="req-unlock-2", trade_no="TR2", lock_id=lock["lock_id"])
    await step("registration.unlock", request_id="req-unlock-3", trade_no="TR3", lock_id="LK404")
    await step("charge.commit", **paid("TC0", 100, bill_nos=["B0001"]))
    await step("charge.commit", **paid("TC1", 9850, bill_nos=["B0001", "B0002"]))
    await step("prepay.commit", **paid("TP1", 50000, patient_id="P0003", inpatient_no="Z0001"))
    await step(
        "refund.apply",
        request_id="req-ref-1",
        trade_no="TC1",
        refund_no="RF1",
        amount_fen=1250,
        reason="医保|退^费&~\\",
    )
    await step("refund.apply", request_id="req-ref-2", trade_no="TC1", refund_no="RF2", amount_fen=9000)
    await step(
        "refund.writeback",
        request_id="req-wb-1",
        trade_no="TC1",
        refund_no="RF1",
        amount_fen=1250,
        channel_refund_no="wxr1",
        refunded_at=NOW,
    )
    await step("refund.apply", request_id="req-ref-4", trade_no="TC1", refund_no="RF4", amount_fen=8600)
    await step("refund.cancel", request_id="req-cx-4", trade_no="TC1", refund_no="RF4", reason="不退|了^")
    await step("refund.cancel", request_id="req-cx-4b", trade_no="TC1", refund_no="RF4")
    await step("refund.cancel", request_id="req-cx-1", trade_no="TC1", refund_no="RF1")
    await step("refund.cancel", request_id="req-cx-9", trade_no="TC1", refund_no="RF9")
    await step("refund.apply", request_id="req-ref-3", trade_no="TP1", refund_no="RF3", amount_fen=100)
    for operation, trade_no, refund_no in [
        ("registration.lock", "TR2", None),
        ("registration.unlock", "TR2", None),
        ("registration.commit", "TR1", None),
        ("charge.commit", "TC1", None),
        ("charge.commit", "NOPE", None),
        ("prepay.commit", "TP1", None),
        ("refund.apply", "TC1", "RF1"),
        ("refund.writeback", "TC1", "RF1"),
        ("refund.writeback", "TC1", None),
        ("refund.cancel", "TC1", "RF4"),
        ("refund.cancel", "TC1", "RF1"),
    ]:
        await step("trade.check", trade_no=trade_no, operation=operation, refund_no=refund_no)
    await step("recon.fetch", date=NOW.date(), page=1, page_size=3)
    await step("recon.fetch", date=NOW.date(), page=2, page_size=3)
    return out


async def test_every_operation_gives_what_the_soap_profile_gives() -> None:
    """Two fresh sandboxes on one fixed clock: SOAP on one, HL7 over MLLP on the other, the same calls."""
    results = []
    for protocol in ("soap", "hl7"):
        his = await sandbox(clock=lambda: NOW)
        if protocol == "soap":
            profile = load_profile(
                SOAP_PROFILE,
                catalog.OPERATIONS,
                read_operations=catalog.READ_OPERATIONS,
                overrides={"soap.base_url": his.base_url},
                environ={},
            )
            adapter: Any = profile.build_adapter()
            assert isinstance(adapter, SoapAdapter)
        else:
            adapter = make_adapter(his)
        try:
            results.append(await scenario(caller(adapter)))
            applications = his.state.applications()
        finally:
            await adapter.close()
            await his.close()
        results.append(applications)
    soap, soap_applied, hl7, hl7_applied = results
    assert hl7 == soap
    assert hl7_applied == soap_applied
    outcomes = dict((step[0], step) for step in hl7)
    assert outcomes["bills.unpaid"][:3] == ("bills.unpaid", "permanent", "1001")
    assert next(s for s in hl7 if s[0] == "charge.commit")[1:3] == ("permanent", "2003")
    assert ("patient.query", {"found": False}) in hl7
    assert any(s[0] == "recon.fetch" and s[1]["has_more"] for s in hl7)
    cancels = [s for s in hl7 if s[0] == "refund.cancel"]
    assert (
        cancels[0]
        == cancels[1]
        == ("refund.cancel", {"cancelled": True, "receipt_no": "CX20250314000002", "amount_fen": 8600})
    )
    assert [c[1:3] for c in cancels[2:]] == [("permanent", "3004"), ("permanent", "3003")]
    refunds = [r for s in hl7 if s[0] == "recon.fetch" for r in s[1]["records"] if r["kind"] == "refund"]
    assert [(r["refund_no"], r["refund_state"], r["channel_refund_no"]) for r in refunds] == [
        ("RF1", "written_back", "wxr1"),
        ("RF3", "applied", None),
    ]


@pytest.mark.parametrize("name", ["亅乗乛亊", "王亅五", "A|B^C~D&E\\F"])
async def test_gb18030_names_whose_bytes_look_like_separators(his: SandboxHis, name: str) -> None:
    encoded = name.encode("gb18030")
    assert any(b in encoded for b in b"\\|^~"), "the name must put a separator byte on the wire"
    his.state.add_patient("P9001", name, "F", "1990-01-02", card_no="C9001", phone="13900009001")
    plain = make_adapter(his)
    utf8 = make_adapter(his, **{"hl7.encoding": "UTF-8"})
    try:
        for adapter in (plain, utf8):
            found = await caller(adapter)("patient.query", card_no="C9001")
            assert found["name"] == name and found["patient_id"] == "P9001" and found["birth_date"] == "1990-01-02"
        # The template without MSH-18: the message goes out in the configured encoding, the sandbox reads it
        # by its default and answers without MSH-18, which the adapter reads by its default.
        template = plain.profile.spec.operations["patient.query"].request["message"]
        bare = make_adapter(
            his, **{'operations."patient.query".request.message': template.replace("|CHN|{{ msh.charset }}", "")}
        )
        out = bare.render("patient.query", {"card_no": "C9001", "id_card_no": None, "phone": None})
        assert out.charset is None and out.codec == "gb18030"
        try:
            assert (await caller(bare)("patient.query", card_no="C9001"))["name"] == name
        finally:
            await bare.close()
        utf8_out = utf8.render("patient.query", {"card_no": "C9001", "id_card_no": None, "phone": None})
        assert utf8_out.charset == "UNICODE UTF-8" and utf8_out.codec == "utf-8"
        reason = f"退{name}"
        await caller(plain)("prepay.commit", **paid("TP9", 100, patient_id="P0003", inpatient_no="Z0001"))
        await caller(plain)(
            "refund.apply", request_id="req-ref-9", trade_no="TP9", refund_no="RF9", amount_fen=100, reason=reason
        )
        with sqlite3.connect(his.state.db_path) as db:
            assert db.execute("SELECT reason FROM refunds WHERE refund_no = 'RF9'").fetchone() == (reason,)
    finally:
        for adapter in (plain, utf8):
            await adapter.close()


async def test_the_wire_really_carries_separator_bytes_inside_characters(his: SandboxHis) -> None:
    his.state.add_patient("P9002", "亅乗", "M", card_no="C9002")
    adapter = make_adapter(his)
    out = adapter.render("patient.query", {"card_no": "C9002", "id_card_no": None, "phone": None})
    reader, writer = await asyncio.open_connection(*his.mllp_address)
    try:
        writer.write(b"\x0b" + out.payload + b"\x1c\r")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
    finally:
        writer.close()
    assert b"\x81|\x81\\" in reply
    assert b"GB 18030-2000" in reply


async def test_preview_shows_segments_encoding_and_sends_nothing(his: SandboxHis, adapter: Hl7Adapter) -> None:
    op = catalog.OPERATIONS["charge.commit"]
    params = op.input.model_validate(paid("TV1", 9850, bill_nos=["B0001", "B0002"])).model_dump(mode="json")
    preview = await adapter.preview("charge.commit", params)
    assert preview.protocol == "hl7" and preview.target == adapter.endpoint
    assert adapter.endpoint == f"mllp://127.0.0.1:{his.mllp_address[1]}"
    lines = preview.payload.split("\n")
    assert all(line.endswith("<CR>") for line in lines)
    assert lines[0].startswith("MSH|^~\\&|HISBRIDGE|PAY|HIS|HOSPITAL|")
    assert "|DFT^P03^DFT_P03|" in lines[0] and lines[0].endswith("|CHN|GB 18030-2000<CR>")
    assert lines[3] == "FT1|1|TV1|wxTV1|20250314093000||PY|WX||||98.50<CR>"
    assert lines[4:] == ["FT1|2|TV1||||CG|B0001<CR>", "FT1|3|TV1||||CG|B0002<CR>"]
    assert preview.details["encoding"] == "gb18030" and preview.details["msh_18"] == "GB 18030-2000"
    assert preview.details["control_id"] in lines[0]
    again = await adapter.preview("charge.commit", params)
    assert again.details["control_id"] != preview.details["control_id"]
    assert his.state.application_count() == 0


async def test_ae_then_aa_is_delivered_once(his: SandboxHis, adapter: Hl7Adapter) -> None:
    his.faults.add(FaultRule("charge.commit", "refuse", count=1))
    events: list[tuple[str, str]] = []
    adapter.on_event = lambda event, detail: events.append((event, detail))
    result = await caller(adapter)("charge.commit", **paid("TAE1", 1250, bill_nos=["B0001"]))
    assert result["receipt_no"]
    assert his.state.application_count("CommitCharge", "TAE1") == 1
    assert events == [("ack", "AE"), ("ae_retry", "AE"), ("ack", "AA")]
    assert adapter.counters["ae_retry"] == 1


async def test_ae_every_time_is_retryable_after_the_bounded_retries(his: SandboxHis) -> None:
    rule = his.faults.add(FaultRule("DFT^P03", "refuse"))
    adapter = make_adapter(his, **{"hl7.ae_retries": 2})
    try:
        with pytest.raises(RetryableError) as err:
            await caller(adapter)("charge.commit", **paid("TAE2", 1250, bill_nos=["B0001"]))
    finally:
        await adapter.close()
    assert err.value.code == "9999" and "AE 3 times" in err.value.message
    assert rule.hits == 3 and his.state.application_count() == 0


async def test_ar_is_permanent_with_the_his_code(his: SandboxHis, adapter: Hl7Adapter) -> None:
    his.faults.add(FaultRule("charge.commit", "error", error_code="9876", count=1))
    with pytest.raises(PermanentError) as err:
        await caller(adapter)("charge.commit", **paid("TAR1", 1250, bill_nos=["B0001"]))
    assert err.value.code == "9876" and "injected" in err.value.message
    with pytest.raises(PermanentError) as refused:
        await caller(adapter)("charge.commit", **paid("TAR1", 1, bill_nos=["B0001"]))
    assert refused.value.code == "2003" and "金额不符" in refused.value.message
    assert his.state.application_count() == 0
    assert adapter.counters["ae_retry"] == 0


async def test_ack_timeout_closes_the_connection_and_trade_check_resolves_it(his: SandboxHis) -> None:
    adapter = make_adapter(his, **{"hl7.ack_timeout_s": 0.5})
    his.faults.add(FaultRule("charge.commit", "no_ack", count=1))
    call = caller(adapter)
    try:
        with pytest.raises(InDoubtError) as err:
            await call("charge.commit", **paid("TTO1", 1250, bill_nos=["B0001"]))
        assert err.value.code == "ack_timeout" and adapter.counters["ack_timeout"] == 1
        await wait_until(lambda: his.mllp is not None and his.mllp.open_connections == 0)
        check = await call("trade.check", trade_no="TTO1", operation="charge.commit")
        assert check["found"] is True and check["amount_fen"] == 1250 and check["receipt_no"]
        assert his.state.application_count("CommitCharge", "TTO1") == 1
    finally:
        await adapter.close()


async def test_a_late_ack_is_never_read_as_the_next_answer(his: SandboxHis) -> None:
    adapter = make_adapter(his, **{"hl7.ack_timeout_s": 0.3, "hl7.pool_size": 1})
    his.faults.add(FaultRule("prepay.commit", "latency", latency_ms=1200, count=1))
    call = caller(adapter)
    try:
        with pytest.raises(InDoubtError):
            await call("prepay.commit", **paid("TLATE", 100, patient_id="P0003", inpatient_no="Z0001"))
        bills = await call("bills.unpaid", patient_id="P0001")
        assert [b["bill_no"] for b in bills["bills"]] == ["B0001", "B0002"]
        await asyncio.sleep(1.2)
        assert (await call("patient.query", card_no="C0004"))["patient_id"] == "P0004"
    finally:
        await adapter.close()


async def test_msa2_mismatch_is_refused_and_the_connection_closed(his: SandboxHis, adapter: Hl7Adapter) -> None:
    his.faults.add(FaultRule("charge.commit", "wrong_ack_id", count=1))
    his.faults.add(FaultRule("bills.unpaid", "wrong_ack_id", count=1))
    with pytest.raises(InDoubtError) as write:
        await caller(adapter)("charge.commit", **paid("TMM1", 1250, bill_nos=["B0001"]))
    assert write.value.code == "ack_mismatch" and "not the MSH-10 sent" in write.value.message
    await wait_until(lambda: his.mllp is not None and his.mllp.open_connections == 0)
    with pytest.raises(RetryableError) as read:
        await caller(adapter)("bills.unpaid", patient_id="P0002")
    assert read.value.code == "ack_mismatch"
    assert his.state.application_count("CommitCharge", "TMM1") == 1
    assert adapter.counters["ack_mismatch"] == 2
    assert (await caller(adapter)("bills.unpaid", patient_id="P0002"))["bills"]


async def test_connection_dropped_after_apply_is_in_doubt(his: SandboxHis, adapter: Hl7Adapter) -> None:
    his.faults.add(FaultRule("registration.commit", "drop_reply", count=1))
    with pytest.raises(InDoubtError) as err:
        await caller(adapter)("registration.commit", **paid("TDR1", 1000, schedule_id="S001"))
    assert err.value.code == "connection_lost"
    assert his.state.application_count("CommitRegistration", "TDR1") == 1


async def test_connect_refused_is_retryable() -> None:
    adapter = make_adapter(port=free_port())
    try:
        with pytest.raises(RetryableError) as err:
            await caller(adapter)("charge.commit", **paid("TCR1", 1250, bill_nos=["B0001"]))
    finally:
        await adapter.close()
    assert err.value.code == "connect_failed" and adapter.counters["connect_failed"] == 1


async def test_one_message_in_flight_per_connection_under_concurrency(his: SandboxHis) -> None:
    adapter = make_adapter(his, **{"hl7.pool_size": 2})
    his.faults.add(FaultRule("patient.query", "latency", latency_ms=50))
    seen: list[int] = []
    try:
        calls = [caller(adapter)("patient.query", card_no=f"C000{1 + i % 4}") for i in range(12)]
        watch = asyncio.create_task(watch_connections(his, seen))
        results = await asyncio.gather(*calls)
        watch.cancel()
    finally:
        await adapter.close()
    assert [r["patient_id"] for r in results] == [f"P000{1 + i % 4}" for i in range(12)]
    assert max(seen) <= 2


async def test_a_render_that_breaks_the_contract_is_not_sent(his: SandboxHis) -> None:
    template = make_adapter(his).profile.spec.operations["trade.check"].request["message"]
    cases = {
        "MSH-10 must be": template.replace("|{{ msh.control_id }}|{{ msh.processing_id }}", "|X1|P"),
        "MSH-9 is QBP^Q12": template.replace("QBP^Q11^QBP_Q11", "QBP^Q12^QBP_Q12"),
        "must start with": template.replace("MSH|^~\\&|", "MSH|^~\\#|", 1),
        "MSH-18": template.replace("{{ msh.charset }}", "KLINGON"),
    }
    for expected, source in cases.items():
        adapter = make_adapter(his, **{'operations."trade.check".request.message': source})
        with pytest.raises(PermanentError, match=re.escape(expected)):
            await caller(adapter)("trade.check", trade_no="T1", operation="charge.commit")
    ascii_only = make_adapter(his, **{"hl7.encoding": "ASCII"})
    with pytest.raises(PermanentError, match="cannot be encoded in ascii"):
        await caller(ascii_only)(
            "refund.apply", request_id="req-ascii-1", trade_no="T1", refund_no="R1", amount_fen=1, reason="退费"
        )


async def watch_connections(his: SandboxHis, seen: list[int]) -> None:
    while True:
        assert his.mllp is not None
        seen.append(his.mllp.open_connections)
        await asyncio.sleep(0.005)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the state polled belongs to the sandbox, not to us
            await asyncio.sleep(0.02)
