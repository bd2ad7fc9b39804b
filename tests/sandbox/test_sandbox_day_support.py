"""What a simulated day needs of the sandboxes: a day's worth of HIS fixtures loaded at once, the HIS's whole books
for the invariant checks, and faults aimed at one trade (a HIS rule with ``trade_no``, a callback rule with
``ref``, a refund held for one trade) so that one order can be broken while the rest of the day goes on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zeep
from lxml import etree
from zeep.transports import AsyncTransport

from sandbox.channels.faults import FaultBook, FaultError, RefundHolds
from sandbox.cli import SandboxHis, start_sandbox_his
from sandbox.his.state import HisError

FIXTURES = {
    "patients": [{"patient_id": "D00001", "name": "钱七", "card_no": "DC00001"}],
    "schedules": [{"schedule_id": "DS01", "dept_name": "内科", "fee_fen": 1200, "capacity": 500}],
    "bills": [
        {"bill_no": "DB000001", "patient_id": "D00001", "dept_name": "药房", "amount_fen": 4550},
        {"bill_no": "DB000002", "patient_id": "D00001", "dept_name": "检验科", "amount_fen": 3000},
    ],
    "inpatients": [{"inpatient_no": "DZ0001", "patient_id": "D00001", "ward": "外科二病区", "balance_fen": 0}],
}
PAID = {"PayMode": "WX", "ChannelTradeNo": "4200001", "PayTime": "2025-03-14 09:29:58"}


@pytest.fixture
async def his(tmp_path: Path) -> AsyncIterator[SandboxHis]:
    sandbox = await start_sandbox_his(db_path=tmp_path / "his.sqlite3")
    yield sandbox
    await sandbox.close()


@pytest.fixture
async def admin(his: SandboxHis) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=his.base_url, timeout=10) as http:
        yield http


@pytest.fixture
async def soap(his: SandboxHis) -> AsyncIterator[zeep.AsyncClient]:
    wsdl_client = httpx.Client(timeout=10)
    transport = AsyncTransport(client=httpx.AsyncClient(timeout=10), wsdl_client=wsdl_client)
    client = await asyncio.to_thread(zeep.AsyncClient, his.wsdl_url, transport=transport)
    yield client
    await transport.aclose()
    await asyncio.to_thread(wsdl_client.close)


async def call(client: zeep.AsyncClient, operation: str, **fields: Any) -> etree._Element:
    root = etree.Element("Request")
    for tag, value in fields.items():
        child = etree.SubElement(root, tag)
        if isinstance(value, list):
            for item in value:
                etree.SubElement(child, tag[:-1]).text = item
        else:
            child.text = str(value)
    result = await getattr(client.service, operation)(inXml=etree.tostring(root, encoding="unicode"))
    return etree.fromstring(result.encode("utf-8"))


async def test_a_days_fixtures_load_at_once_and_serve_the_business_calls(
    admin: httpx.AsyncClient, soap: zeep.AsyncClient
) -> None:
    answer = await admin.post("/_admin/fixtures", json=FIXTURES)
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"added": {"patients": 1, "schedules": 1, "bills": 2, "inpatients": 1}}
    bills = await call(soap, "QueryUnpaidBills", PatientId="D00001")
    assert [b.findtext("BillNo") for b in bills.iter("Bill")] == ["DB000001", "DB000002"]
    charged = await call(
        soap, "CommitCharge", TradeNo="T1", PatientId="D00001", BillNos=["DB000001"], Amount="45.50", **PAID
    )
    assert charged.findtext("ResultCode") == "0"
    booked = await call(
        soap, "CommitRegistration", TradeNo="T2", PatientId="D00001", ScheduleId="DS01", Amount="12.00", **PAID
    )
    assert booked.findtext("ResultCode") == "0"
    books = (await admin.get("/_admin/ledger")).json()
    assert [(t["trade_no"], t["kind"], t["amount_fen"]) for t in books["trades"]] == [
        ("T1", "charge", 4550),
        ("T2", "registration", 1200),
    ]
    assert books["refunds"] == []


async def test_a_bad_fixture_row_refuses_the_whole_load(admin: httpx.AsyncClient, his: SandboxHis) -> None:
    bad = {**FIXTURES, "bills": [*FIXTURES["bills"], {"bill_no": "DB9", "patient_id": "D00001", "amount_fen": 1.5}]}
    answer = await admin.post("/_admin/fixtures", json=bad)
    assert answer.status_code == 400
    assert "1.5 is not an amount in fen" in answer.json()["error"]
    orphan = {"bills": [{"bill_no": "DB8", "patient_id": "NOBODY", "amount_fen": 100}]}
    answer = await admin.post("/_admin/fixtures", json=orphan)
    assert answer.status_code == 400
    assert "conflict" in answer.json()["error"]
    assert (await admin.post("/_admin/fixtures", json={"wards": []})).status_code == 400
    with pytest.raises(HisError, match="not found"):
        his.state.query_patient(card_no="DC00001")


async def test_a_fault_aimed_at_one_trade_leaves_the_others_alone(
    admin: httpx.AsyncClient, soap: zeep.AsyncClient, his: SandboxHis
) -> None:
    assert (await admin.post("/_admin/fixtures", json=FIXTURES)).status_code == 201
    rule = {"operation": "CommitCharge", "mode": "drop_reply", "trade_no": "T-TARGET", "count": 1}
    added = await admin.post("/_admin/faults", json=rule)
    assert added.status_code == 201 and added.json()["trade_no"] == "T-TARGET"
    other = await call(
        soap, "CommitCharge", TradeNo="T-OTHER", PatientId="D00001", BillNos=["DB000001"], Amount="45.50", **PAID
    )
    assert other.findtext("ResultCode") == "0"
    assert (await admin.get("/_admin/faults")).json()["faults"][0]["hits"] == 0
    with pytest.raises(httpx.TransportError):
        await call(
            soap, "CommitCharge", TradeNo="T-TARGET", PatientId="D00001", BillNos=["DB000002"], Amount="30.00", **PAID
        )
    assert his.state.application_count("CommitCharge", "T-TARGET") == 1
    assert (await admin.get("/_admin/faults")).json() == {"faults": []}
    bad = await admin.post("/_admin/faults", json={"operation": "CommitCharge", "mode": "error", "trade_no": 7})
    assert bad.status_code == 400 and "trade_no" in bad.json()["error"]


def test_a_callback_rule_with_a_ref_takes_only_that_trades_callbacks() -> None:
    book = FaultBook()
    book.add({"kind": "notify", "match": "wechat.payment", "mode": "lost", "ref": "P-TARGET", "count": 1})
    assert book.take("notify", "wechat.payment", "P-OTHER") is None
    taken = book.take("notify", "wechat.payment", "P-TARGET")
    assert taken is not None and taken.mode == "lost"
    assert book.rules() == []
    with pytest.raises(FaultError, match="notify only"):
        book.add({"kind": "call", "match": "wechat.refund", "mode": "error", "ref": "P-TARGET"})


def test_a_refund_held_for_one_trade_leaves_the_others_alone() -> None:
    holds = RefundHolds(trades={"P-TARGET"})
    assert not holds.take("P-OTHER")
    assert holds.take("P-TARGET")
    assert not holds.take("P-TARGET")
    counted = RefundHolds(count=1)
    assert counted.take("P-ANY") and not counted.take("P-ANY")
