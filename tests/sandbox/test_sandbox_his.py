"""The sandbox HIS through a real SOAP client: zeep loads its WSDL and calls every operation over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import zeep
import zeep.exceptions
from lxml import etree
from zeep.transports import AsyncTransport

from sandbox.cli import SandboxHis, start_sandbox_his
from sandbox.his.soap import fen_to_yuan, yuan_to_fen
from sandbox.his.state import SHANGHAI, HisError

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
PAID = {"PayMode": "WX", "ChannelTradeNo": "4200001", "PayTime": "2025-03-14 09:29:58"}


class FakeClock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime(2025, 3, 14, 9, 30, tzinfo=SHANGHAI))


@pytest.fixture
async def his(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SandboxHis]:
    sandbox = await start_sandbox_his(db_path=tmp_path / "his.sqlite3", clock=clock)
    yield sandbox
    await sandbox.close()


@pytest.fixture
async def client(his: SandboxHis) -> AsyncIterator[zeep.AsyncClient]:
    wsdl_client = httpx.Client(timeout=10)
    transport = AsyncTransport(client=httpx.AsyncClient(timeout=10), wsdl_client=wsdl_client)
    # zeep loads the WSDL synchronously; a thread keeps this event loop free to serve it.
    soap = await asyncio.to_thread(zeep.AsyncClient, his.wsdl_url, transport=transport)
    yield soap
    await transport.aclose()
    await asyncio.to_thread(wsdl_client.close)


@pytest.fixture
async def admin(his: SandboxHis) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=his.base_url, timeout=10) as http:
        yield http


def request_xml(fields: dict[str, Any], declaration: str = "") -> str:
    root = etree.Element("Request")
    for tag, value in fields.items():
        child = etree.SubElement(root, tag)
        if isinstance(value, list):
            for item in value:
                etree.SubElement(child, tag[:-1]).text = item
        elif value is not None:
            child.text = str(value)
    return declaration + etree.tostring(root, encoding="unicode")


async def call(client: zeep.AsyncClient, operation: str, declaration: str = "", **fields: Any) -> etree._Element:
    result = await getattr(client.service, operation)(inXml=request_xml(fields, declaration))
    assert isinstance(result, str)
    assert result.startswith('<?xml version="1.0" encoding="utf-8"?><Response>')
    return etree.fromstring(result.encode("utf-8"))


def db_value(his: SandboxHis, sql: str) -> Any:
    with closing(sqlite3.connect(his.state.db_path)) as db:
        return db.execute(sql).fetchone()[0]


def code(response: etree._Element) -> str:
    return response.findtext("ResultCode") or ""


def ok(response: etree._Element) -> etree._Element:
    assert code(response) == "0", etree.tostring(response, encoding="unicode")
    assert response.findtext("ResultMsg") == "成功"
    return response


async def charge(
    client: zeep.AsyncClient, trade_no: str, bills: list[str], amount: str, **extra: Any
) -> etree._Element:
    return await call(
        client, "CommitCharge", TradeNo=trade_no, PatientId="P0001", BillNos=bills, Amount=amount, **{**PAID, **extra}
    )


# --- WSDL and money ----------------------------------------------------------------------------------------


async def test_wsdl_is_asmx_shaped_and_points_at_the_sandbox(his: SandboxHis, client: zeep.AsyncClient) -> None:
    async with httpx.AsyncClient() as http:
        for query in ("?wsdl", "?WSDL"):
            response = await http.get(his.url + query)
            assert response.status_code == 200
            wsdl = etree.fromstring(response.content)
            assert wsdl.get("targetNamespace") == "http://tempuri.org/"
            address = wsdl.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
            assert address is not None and address.get("location") == his.url
    service = client.wsdl.services["HisService"]
    port = service.ports["HisServiceSoap"]
    operations = port.binding._operations
    assert set(operations) == {
        "QueryPatient", "QueryUnpaidBills", "LockRegistration", "UnlockRegistration", "CommitRegistration",
        "CommitCharge", "CommitPrepay", "ApplyRefund", "WritebackRefund", "CancelRefund", "CheckTrade", "FetchRecon",
    }  # fmt: skip
    assert operations["CommitCharge"].soapaction == "http://tempuri.org/CommitCharge"


def test_amounts_are_exact_yuan_strings() -> None:
    assert [fen_to_yuan(f) for f in (0, 1, 10, 1250, 8600, 123456789)] == [
        "0.00", "0.01", "0.10", "12.50", "86.00", "1234567.89",
    ]  # fmt: skip
    assert [yuan_to_fen(y) for y in ("0.01", "12.5", "12.50", "86", "1234567.89")] == [1, 1250, 1250, 8600, 123456789]
    for bad in ("12.345", "-1.00", "1e3", "", "12.", ".5", "1,00", "NaN", "+1"):
        with pytest.raises(HisError) as err:
            yuan_to_fen(bad)
        assert err.value.code == "9001"


# --- reads -------------------------------------------------------------------------------------------------


async def test_query_patient_by_each_key(client: zeep.AsyncClient, his: SandboxHis) -> None:
    by_card = ok(await call(client, "QueryPatient", CardNo="C0001"))
    patient = by_card.find("Patient")
    assert patient is not None
    assert [patient.findtext(t) for t in ("PatientId", "Name", "Gender", "BirthDate", "CardNo", "Phone")] == [
        "P0001", "张三", "M", "1985-03-12", "C0001", "13800000001",
    ]  # fmt: skip
    id_card_no = db_value(his, "SELECT id_card_no FROM patients WHERE card_no = 'C0002'")
    assert len(id_card_no) == 18
    assert ok(await call(client, "QueryPatient", IdCardNo=id_card_no)).findtext("Patient/Name") == "李四"
    assert ok(await call(client, "QueryPatient", Phone="13800000003")).findtext("Patient/Name") == "王五"
    assert code(await call(client, "QueryPatient", CardNo="C9999")) == "1001"
    assert code(await call(client, "QueryPatient")) == "9001"


async def test_gbk_declaration_in_a_string_is_tolerated(client: zeep.AsyncClient, his: SandboxHis) -> None:
    gbk = '<?xml version="1.0" encoding="GBK"?>'
    assert ok(await call(client, "QueryPatient", gbk, CardNo="C0001")).findtext("Patient/Name") == "张三"
    ok(await charge(client, "T-GBK", ["B0001"], "12.50"))
    gb2312 = "\ufeff<?xml version='1.0' encoding='GB2312' standalone='yes'?>\n"
    applied = await call(
        client, "ApplyRefund", gb2312, TradeNo="T-GBK", RefundNo="R-GBK", Amount="2.50", Reason="医保结算后退还自费部分"
    )
    ok(applied)
    assert db_value(his, "SELECT reason FROM refunds WHERE refund_no = 'R-GBK'") == "医保结算后退还自费部分"


async def test_unpaid_bills(client: zeep.AsyncClient) -> None:
    bills = ok(await call(client, "QueryUnpaidBills", PatientId="P0001")).findall("Bills/Bill")
    assert [(b.findtext("BillNo"), b.findtext("DeptName"), b.findtext("Amount")) for b in bills] == [
        ("B0001", "内科", "12.50"), ("B0002", "检验科", "86.00"),
    ]  # fmt: skip
    assert bills[0].findtext("CreatedAt") == "2025-03-14 09:30:00"
    assert code(await call(client, "QueryUnpaidBills", PatientId="P9999")) == "1001"


# --- registration ------------------------------------------------------------------------------------------


async def test_lock_commit_and_check_registration(client: zeep.AsyncClient, his: SandboxHis) -> None:
    locked = ok(await call(client, "LockRegistration", TradeNo="T-REG", PatientId="P0001", ScheduleId="S001"))
    lock_id = locked.findtext("LockId")
    assert locked.findtext("Amount") == "10.00"
    assert locked.findtext("ExpireTime") == "2025-03-14 09:45:00"

    mismatch = await call(
        client,
        "CommitRegistration",
        TradeNo="T-REG",
        PatientId="P0001",
        ScheduleId="S001",
        LockId=lock_id,
        Amount="9.99",
        **PAID,
    )
    assert code(mismatch) == "2003"
    assert his.state.application_count("CommitRegistration") == 0

    fields = {"TradeNo": "T-REG", "PatientId": "P0001", "ScheduleId": "S001", "LockId": lock_id, "Amount": "10.00"}
    first = ok(await call(client, "CommitRegistration", **fields, **PAID))
    assert first.findtext("ReceiptNo", "").startswith("GH20250314")
    assert first.findtext("VisitNo", "").startswith("MZ")
    second = ok(await call(client, "CommitRegistration", **fields, **PAID))
    assert second.findtext("ReceiptNo") != first.findtext("ReceiptNo")
    assert his.state.application_count("CommitRegistration", "T-REG") == 2

    check = ok(await call(client, "CheckTrade", TradeNo="T-REG", Operation="registration.commit"))
    assert [check.findtext(t) for t in ("Found", "ReceiptNo", "Amount", "Status")] == [
        "1", first.findtext("ReceiptNo"), "10.00", "paid",
    ]  # fmt: skip
    lock_check = ok(await call(client, "CheckTrade", TradeNo="T-REG", Operation="registration.lock"))
    assert (lock_check.findtext("Found"), lock_check.findtext("ReceiptNo")) == ("1", lock_id)
    assert code(await call(client, "UnlockRegistration", TradeNo="T-REG", LockId=lock_id)) == "1003"


async def test_schedule_full_lock_expiry_and_unlock(client: zeep.AsyncClient, clock: FakeClock) -> None:
    ok(await call(client, "LockRegistration", TradeNo="T-A", PatientId="P0001", ScheduleId="S003"))
    full = await call(client, "LockRegistration", TradeNo="T-B", PatientId="P0002", ScheduleId="S003")
    assert code(full) == "1002"
    assert code(await call(client, "LockRegistration", TradeNo="T-C", PatientId="P0002", ScheduleId="S404")) == "1002"

    clock.advance(minutes=16)
    relocked = ok(await call(client, "LockRegistration", TradeNo="T-B", PatientId="P0002", ScheduleId="S003"))
    lock_b = relocked.findtext("LockId")
    expired = ok(await call(client, "CheckTrade", TradeNo="T-A", Operation="registration.lock"))
    assert expired.findtext("Status") == "expired"

    ok(await call(client, "UnlockRegistration", TradeNo="T-B", LockId=lock_b))
    unlocked = ok(await call(client, "CheckTrade", TradeNo="T-B", Operation="registration.unlock"))
    assert (unlocked.findtext("Found"), unlocked.findtext("ReceiptNo")) == ("1", lock_b)
    stale = await call(
        client,
        "CommitRegistration",
        TradeNo="T-B",
        PatientId="P0002",
        ScheduleId="S003",
        LockId=lock_b,
        Amount="15.00",
        **PAID,
    )
    assert code(stale) == "1003"
    assert code(await call(client, "UnlockRegistration", TradeNo="T-B", LockId="LK404")) == "1003"


# --- charge and prepay -------------------------------------------------------------------------------------


async def test_commit_charge(client: zeep.AsyncClient, his: SandboxHis) -> None:
    assert code(await charge(client, "T-CH", ["B0001", "B0002"], "98.49")) == "2003"
    assert code(await charge(client, "T-CH", ["B0001", "B0404"], "98.50")) == "2001"
    assert code(await charge(client, "T-CH", ["B0003"], "260.00")) == "2001"
    assert code(await charge(client, "T-CH", ["B0001"], "12.50", PayMode="CASH")) == "9001"
    assert code(await charge(client, "T-CH", ["B0001"], "12.50", PayTime="2025/03/14")) == "9001"
    assert his.state.application_count() == 0

    receipt = ok(await charge(client, "T-CH", ["B0001", "B0002"], "98.50")).findtext("ReceiptNo")
    assert receipt and receipt.startswith("SF20250314")
    assert code(await charge(client, "T-CH", ["B0001", "B0002"], "98.50")) == "2002"
    assert code(await charge(client, "T-CH2", ["B0002"], "86.00")) == "2002"
    assert his.state.application_count("CommitCharge") == 1
    assert ok(await call(client, "QueryUnpaidBills", PatientId="P0001")).findall("Bills/Bill") == []

    check = ok(await call(client, "CheckTrade", TradeNo="T-CH", Operation="charge.commit"))
    assert (check.findtext("Found"), check.findtext("ReceiptNo"), check.findtext("Amount")) == ("1", receipt, "98.50")
    assert ok(await call(client, "CheckTrade", TradeNo="T-CH2", Operation="charge.commit")).findtext("Found") == "0"


async def test_commit_prepay_is_naive_about_duplicates(client: zeep.AsyncClient, his: SandboxHis) -> None:
    fields = {"TradeNo": "T-YJ", "PatientId": "P0003", "InpatientNo": "Z0001", "Amount": "500.00", **PAID}
    first = ok(await call(client, "CommitPrepay", **fields))
    assert first.findtext("Balance") == "2500.00"
    second = ok(await call(client, "CommitPrepay", **fields))
    assert second.findtext("Balance") == "3000.00"
    assert second.findtext("ReceiptNo") != first.findtext("ReceiptNo")
    assert his.state.application_count("CommitPrepay", "T-YJ") == 2
    wrong = {**fields, "PatientId": "P0001"}
    assert code(await call(client, "CommitPrepay", **wrong)) == "1001"
    assert code(await call(client, "CommitPrepay", **{**fields, "Amount": "0.00"})) == "9001"
    check = ok(await call(client, "CheckTrade", TradeNo="T-YJ", Operation="prepay.commit"))
    assert (check.findtext("Found"), check.findtext("ReceiptNo")) == ("1", first.findtext("ReceiptNo"))


# --- refunds -----------------------------------------------------------------------------------------------


async def test_partial_refunds_over_refund_and_writeback(client: zeep.AsyncClient, his: SandboxHis) -> None:
    ok(await charge(client, "T-RF", ["B0002"], "86.00"))

    r1 = ok(await call(client, "ApplyRefund", TradeNo="T-RF", RefundNo="R1", Amount="30.00", Reason="医保结算"))
    assert r1.findtext("RefundableAmount") == "86.00"
    his_r1 = r1.findtext("HisRefundId")
    r2 = ok(await call(client, "ApplyRefund", TradeNo="T-RF", RefundNo="R2", Amount="50.00"))
    assert r2.findtext("RefundableAmount") == "56.00"
    over = await call(client, "ApplyRefund", TradeNo="T-RF", RefundNo="R3", Amount="6.01")
    assert code(over) == "3002"
    assert code(await call(client, "ApplyRefund", TradeNo="T-404", RefundNo="R4", Amount="1.00")) == "3001"
    assert code(await call(client, "ApplyRefund", TradeNo="T-RF", RefundNo="R5", Amount="1.001")) == "9001"

    again = ok(await call(client, "ApplyRefund", TradeNo="T-RF", RefundNo="R1", Amount="30.00"))
    assert (again.findtext("HisRefundId"), again.findtext("RefundableAmount")) == (his_r1, "86.00")
    assert his.state.application_count("ApplyRefund", "T-RF", "R1") == 2
    assert his.state.application_count("ApplyRefund", refund_no="R3") == 0

    wb = {
        "TradeNo": "T-RF",
        "RefundNo": "R1",
        "Amount": "30.00",
        "ChannelRefundNo": "50300001",
        "RefundTime": "2025-03-14 10:00:00",
    }
    assert code(await call(client, "WritebackRefund", **{**wb, "RefundNo": "R404"})) == "3003"
    assert code(await call(client, "WritebackRefund", **{**wb, "Amount": "29.00"})) == "2003"
    receipt = ok(await call(client, "WritebackRefund", **wb)).findtext("ReceiptNo")
    assert receipt and receipt.startswith("TF20250314")
    assert ok(await call(client, "WritebackRefund", **wb)).findtext("ReceiptNo") == receipt

    apply_check = ok(await call(client, "CheckTrade", TradeNo="T-RF", Operation="refund.apply", RefundNo="R2"))
    assert [apply_check.findtext(t) for t in ("Found", "ReceiptNo", "Amount", "Status")] == [
        "1", r2.findtext("HisRefundId"), "56.00", "applied",
    ]  # fmt: skip
    not_written = ok(await call(client, "CheckTrade", TradeNo="T-RF", Operation="refund.writeback", RefundNo="R2"))
    assert not_written.findtext("Found") == "0"
    written = ok(await call(client, "CheckTrade", TradeNo="T-RF", Operation="refund.writeback", RefundNo="R1"))
    assert [written.findtext(t) for t in ("Found", "ReceiptNo", "Amount")] == ["1", receipt, "30.00"]
    trade = ok(await call(client, "CheckTrade", TradeNo="T-RF", Operation="charge.commit"))
    assert trade.findtext("Status") == "partial"
    assert code(await call(client, "CheckTrade", TradeNo="T-RF", Operation="refund.apply")) == "9001"


async def test_check_trade_not_found_for_each_operation(client: zeep.AsyncClient) -> None:
    for operation in (
        "registration.lock",
        "registration.unlock",
        "registration.commit",
        "charge.commit",
        "prepay.commit",
        "refund.apply",
        "refund.writeback",
    ):
        response = ok(await call(client, "CheckTrade", TradeNo="T-NONE", Operation=operation, RefundNo="R-NONE"))
        assert response.findtext("Found") == "0", operation
        assert response.findtext("ReceiptNo") == ""
    assert code(await call(client, "CheckTrade", TradeNo="T-NONE", Operation="patient.query")) == "9001"


# --- reconciliation ----------------------------------------------------------------------------------------


async def test_fetch_recon_pages_one_day_stably(client: zeep.AsyncClient, clock: FakeClock) -> None:
    clock.now = dt.datetime(2025, 3, 13, 23, 59, 59, tzinfo=SHANGHAI)
    ok(await charge(client, "T-EVE", ["B0001"], "12.50"))
    clock.now = dt.datetime(2025, 3, 14, 8, 0, tzinfo=SHANGHAI)
    ok(await charge(client, "T-D1", ["B0002"], "86.00"))
    for n in range(3):
        ok(
            await call(
                client,
                "CommitPrepay",
                TradeNo=f"T-P{n}",
                PatientId="P0003",
                InpatientNo="Z0001",
                Amount="100.00",
                **{**PAID, "PayMode": "ZFB"},
            )
        )
    clock.advance(hours=1)
    ok(await call(client, "ApplyRefund", TradeNo="T-D1", RefundNo="R-D1", Amount="6.00"))
    ok(
        await call(
            client,
            "WritebackRefund",
            TradeNo="T-D1",
            RefundNo="R-D1",
            Amount="6.00",
            ChannelRefundNo="C1",
            RefundTime="2025-03-14 09:00:00",
        )
    )
    clock.now = dt.datetime(2025, 3, 15, 0, 0, tzinfo=SHANGHAI)
    ok(
        await call(
            client, "CommitPrepay", TradeNo="T-NEXT", PatientId="P0003", InpatientNo="Z0001", Amount="1.00", **PAID
        )
    )

    seen = []
    for page in (1, 2, 3):
        response = ok(await call(client, "FetchRecon", Date="2025-03-14", PageNo=page, PageSize=2))
        assert response.findtext("Total") == "5"
        assert response.findtext("HasMore") == ("1" if page < 3 else "0")
        seen += response.findall("Records/Record")
    assert [(r.findtext("TradeNo"), r.findtext("Kind")) for r in seen] == [
        ("T-D1", "charge"), ("T-P0", "prepay"), ("T-P1", "prepay"), ("T-P2", "prepay"), ("T-D1", "refund"),
    ]  # fmt: skip
    refund = seen[-1]
    assert [refund.findtext(t) for t in ("Amount", "PayMode", "ChannelTradeNo", "RefundNo", "Time")] == [
        "6.00", "WX", "4200001", "R-D1", "2025-03-14 09:00:00",
    ]  # fmt: skip
    assert refund.findtext("ReceiptNo", "").startswith("TF")
    assert seen[1].findtext("PayMode") == "ZFB"
    assert seen[0].findtext("Time") == "2025-03-14 08:00:00"

    eve = ok(await call(client, "FetchRecon", Date="2025-03-13", PageNo=1, PageSize=10))
    assert [r.findtext("TradeNo") for r in eve.findall("Records/Record")] == ["T-EVE"]
    empty = ok(await call(client, "FetchRecon", Date="2025-03-14", PageNo=9, PageSize=2))
    assert (empty.findtext("Total"), empty.findtext("HasMore"), empty.findall("Records/Record")) == ("5", "0", [])
    assert code(await call(client, "FetchRecon", Date="2025/03/14")) == "9001"
    assert code(await call(client, "FetchRecon", Date="2025-03-14", PageSize=1001)) == "9001"


# --- faults ------------------------------------------------------------------------------------------------


async def add_fault(admin: httpx.AsyncClient, **rule: Any) -> dict[str, Any]:
    response = await admin.post("/_admin/faults", json=rule)
    assert response.status_code == 201, response.text
    return response.json()


async def test_drop_reply_applies_then_drops_the_connection(
    client: zeep.AsyncClient, admin: httpx.AsyncClient, his: SandboxHis
) -> None:
    await add_fault(admin, operation="CommitCharge", mode="drop_reply", count=1)
    with pytest.raises(httpx.TransportError):
        await charge(client, "T-DROP", ["B0001"], "12.50")
    assert his.state.application_count("CommitCharge", "T-DROP") == 1
    apps = (await admin.get("/_admin/applications")).json()["applications"]
    assert apps == [
        {
            "operation": "CommitCharge",
            "trade_no": "T-DROP",
            "refund_no": None,
            "count": 1,
            "catalog_operation": "charge.commit",
        }
    ]
    found = ok(await call(client, "CheckTrade", TradeNo="T-DROP", Operation="charge.commit"))
    assert found.findtext("Found") == "1"
    assert (await admin.get("/_admin/faults")).json() == {"faults": []}


async def test_refuse_answers_503_without_applying(
    client: zeep.AsyncClient, admin: httpx.AsyncClient, his: SandboxHis
) -> None:
    await add_fault(admin, operation="*", mode="refuse", count=2)
    for _ in range(2):
        with pytest.raises(zeep.exceptions.TransportError) as err:
            await charge(client, "T-REFUSE", ["B0001"], "12.50")
        assert err.value.status_code == 503
    assert his.state.application_count() == 0
    ok(await charge(client, "T-REFUSE", ["B0001"], "12.50"))
    assert his.state.application_count() == 1


async def test_error_and_http_500_do_not_apply(
    client: zeep.AsyncClient, admin: httpx.AsyncClient, his: SandboxHis
) -> None:
    await add_fault(admin, operation="CommitPrepay", mode="error", error_code="8888", count=1)
    await add_fault(admin, operation="CommitPrepay", mode="error", count=1)
    fields = {"TradeNo": "T-ERR", "PatientId": "P0003", "InpatientNo": "Z0001", "Amount": "1.00", **PAID}
    assert code(await call(client, "CommitPrepay", **fields)) == "8888"
    assert code(await call(client, "CommitPrepay", **fields)) == "9999"
    await add_fault(admin, operation="CommitPrepay", mode="http_500")
    with pytest.raises(zeep.exceptions.Fault) as fault:
        await call(client, "CommitPrepay", **fields)
    assert fault.value.code == "soap:Server"
    ok(await call(client, "QueryPatient", CardNo="C0001"))
    assert his.state.application_count() == 0
    assert (await admin.delete("/_admin/faults")).json() == {"cleared": 1}
    ok(await call(client, "CommitPrepay", **fields))
    assert his.state.application_count("CommitPrepay") == 1


async def test_latency_delays_then_answers(client: zeep.AsyncClient, admin: httpx.AsyncClient) -> None:
    rule = await add_fault(admin, operation="QueryPatient", mode="latency", latency_ms=300)
    started = time.monotonic()
    ok(await call(client, "QueryPatient", CardNo="C0001"))
    assert time.monotonic() - started >= 0.3
    listed = (await admin.get("/_admin/faults")).json()["faults"]
    assert listed == [{**rule, "hits": 1}]


async def test_admin_validates_fault_rules(admin: httpx.AsyncClient) -> None:
    bad_rules = [
        ({"operation": "CommitCharge", "mode": "explode"}, "mode must be one of"),
        ({"operation": "Nope", "mode": "refuse"}, "unknown operation"),
        ({"mode": "refuse"}, "operation is required"),
        ({"operation": "*", "mode": "latency", "latency_ms": -5}, "latency_ms"),
        ({"operation": "*", "mode": "error", "error_code": "abc"}, "error_code"),
        ({"operation": "*", "mode": "refuse", "count": 0}, "count"),
        ({"operation": "*", "mode": "refuse", "colour": "red"}, "unknown field"),
        ([1, 2], "JSON object"),
    ]
    for body, message in bad_rules:
        response = await admin.post("/_admin/faults", json=body)
        assert response.status_code == 400, body
        assert message in response.json()["error"]
    response = await admin.post("/_admin/faults", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert (await admin.get("/_admin/healthz")).json() == {"ok": True}


# --- malformed requests ------------------------------------------------------------------------------------


def envelope(body: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
        f"{body}</soap:Body></soap:Envelope>"
    ).encode()


async def post_raw(his: SandboxHis, body: bytes, action: str | None = None) -> tuple[int, etree._Element]:
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    if action is not None:
        headers["SOAPAction"] = f'"{action}"'
    async with httpx.AsyncClient() as http:
        response = await http.post(his.url, content=body, headers=headers)
    return response.status_code, etree.fromstring(response.content)


def fault_of(document: etree._Element) -> tuple[str | None, str]:
    fault = document.find(".//{http://schemas.xmlsoap.org/soap/envelope/}Fault")
    assert fault is not None
    return fault.findtext("faultcode"), fault.findtext("faultstring") or ""


async def test_malformed_requests_are_soap_faults(his: SandboxHis, client: zeep.AsyncClient) -> None:
    query = (
        '<QueryPatient xmlns="http://tempuri.org/">'
        "<inXml>&lt;Request&gt;&lt;CardNo&gt;C0001&lt;/CardNo&gt;&lt;/Request&gt;</inXml></QueryPatient>"
    )
    status, document = await post_raw(his, envelope(query), "http://tempuri.org/QueryPatient")
    assert status == 200
    result = document.findtext(".//{http://tempuri.org/}QueryPatientResult") or ""
    assert "<Name>张三</Name>" in result

    cases = [
        (b"<soap:Envelope", None, "not well-formed"),
        (b"<Envelope/>", None, "not a SOAP 1.1 envelope"),
        (envelope("<Drop xmlns='http://tempuri.org/'/>"), None, "did not recognize"),
        (envelope(query), "http://tempuri.org/CommitCharge", "SOAPAction"),
        (envelope(query.replace("&lt;/Request&gt;", "")), None, "inXml is not well-formed"),
        (b'<!DOCTYPE x [<!ENTITY e "boom">]>' + envelope(query)[38:], None, "DTD is prohibited"),
    ]
    for body, action, message in cases:
        status, document = await post_raw(his, body, action)
        assert status == 500, message
        faultcode, faultstring = fault_of(document)
        assert faultcode == "soap:Client"
        assert message in faultstring

    soap12 = envelope(query).replace(
        b"http://schemas.xmlsoap.org/soap/envelope/", b"http://www.w3.org/2003/05/soap-envelope"
    )
    status, document = await post_raw(his, soap12)
    assert status == 500
    assert fault_of(document)[0] == "soap:VersionMismatch"

    with pytest.raises(zeep.exceptions.Fault) as fault:
        await client.service.QueryPatient(inXml="<Request><CardNo>C0001</Request>")
    assert fault.value.code == "soap:Client"
    not_a_request = await client.service.QueryPatient(inXml="<Req/>")
    assert code(etree.fromstring(not_a_request.encode())) == "9001"
    assert his.state.application_count() == 0


# --- the command line --------------------------------------------------------------------------------------


def test_cli_prints_the_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    db = tmp_path / "state" / "his.sqlite3"
    command = [sys.executable, "-m", "sandbox.cli", "his", "--listen", "127.0.0.1:0", "--db", str(db)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("sandbox HIS listening on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            assert url.endswith("/his/HisService.asmx") and not url.endswith(":0/his/HisService.asmx")
            base = url.removesuffix("/his/HisService.asmx")
            assert httpx.get(base + "/_admin/healthz", timeout=5).json() == {"ok": True}
            assert "<wsdl:definitions" in httpx.get(url + "?wsdl", timeout=5).text
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert db.exists()
