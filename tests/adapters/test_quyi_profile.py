"""A profile for a real published HIS interface: the quyiServiceNo WSDL, loaded by the SOAP adapter and called
over a real socket against the sandbox's quyi-compatible service, for every operation the profile binds."""

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from adapters.base import PermanentError
from adapters.profile import load_profile
from adapters.soap import SoapAdapter
from bridge import catalog
from sandbox.cli import SandboxHis, start_sandbox_his
from sandbox.his.state import SHANGHAI
from tests.support.rig import QUYI_WSDL

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "tests" / "fixtures" / "profiles" / "quyi-subset.toml"
NOW = dt.datetime(2025, 3, 14, 9, 30, tzinfo=SHANGHAI)


@pytest.fixture
async def his(tmp_path: Path) -> AsyncIterator[SandboxHis]:
    sandbox = await start_sandbox_his(db_path=tmp_path / "his.sqlite3", clock=lambda: NOW, quyi_wsdl=QUYI_WSDL)
    yield sandbox
    await sandbox.close()


def make_adapter(his: SandboxHis, **overrides: Any) -> SoapAdapter:
    profile = load_profile(
        PROFILE,
        catalog.OPERATIONS,
        read_operations=catalog.READ_OPERATIONS,
        overrides={"soap.base_url": his.base_url, **overrides},
        environ={},
    )
    assert profile.operations < frozenset(catalog.OPERATIONS)
    adapter = profile.build_adapter()
    assert isinstance(adapter, SoapAdapter)
    return adapter


@pytest.fixture
async def adapter(his: SandboxHis) -> AsyncIterator[SoapAdapter]:
    adapter = make_adapter(his)
    await adapter.start()
    yield adapter
    await adapter.close()


async def call(adapter: SoapAdapter, name: str, /, **params: Any) -> dict[str, Any]:
    """As the bridge calls: input validated and dumped to JSON, output validated against the catalog."""
    op = catalog.OPERATIONS[name]
    result = await adapter.call(name, op.input.model_validate(params).model_dump(mode="json"))
    op.output.model_validate(result)
    return result


def paid(trade_no: str, patient_id: str, amount_fen: int, channel: str = "wechat", **more: Any) -> dict[str, Any]:
    return {
        "request_id": f"request-{trade_no}",
        "trade_no": trade_no,
        "patient_id": patient_id,
        "amount_fen": amount_fen,
        "channel": channel,
        "channel_trade_no": f"{channel[:2]}{trade_no}",
        "paid_at": "2025-03-14T01:29:58Z",
        **more,
    }


def db_value(his: SandboxHis, sql: str) -> Any:
    with closing(sqlite3.connect(his.state.db_path)) as db:
        return db.execute(sql).fetchone()[0]


async def test_reads_through_the_real_wsdl(his: SandboxHis, adapter: SoapAdapter) -> None:
    assert adapter.address == his.quyi_url
    assert len(adapter.wsdl_operations()) == 57
    assert await call(adapter, "patient.query", card_no="C0001") == {
        "found": True,
        "patient_id": "P0001",
        "name": "张三",
        "gender": "M",
        "birth_date": "1985-03-12",
        "card_no": "C0001",
        "phone": "13800000001",
    }
    id_card_no = db_value(his, "SELECT id_card_no FROM patients WHERE patient_id = 'P0002'")
    by_id = await call(adapter, "patient.query", id_card_no=id_card_no)
    assert (by_id["patient_id"], by_id["gender"]) == ("P0002", "F")
    assert await call(adapter, "patient.query", card_no="C9999") == {"found": False}
    with pytest.raises(PermanentError) as refused:
        await call(adapter, "patient.query", phone="13800000001")
    assert refused.value.code == "9001"

    created = "2025-03-14T09:30:00+08:00"
    assert await call(adapter, "bills.unpaid", patient_id="P0001") == {
        "bills": [
            {"bill_no": "B0001", "dept_name": "内科", "amount_fen": 1250, "created_at": created},
            {"bill_no": "B0002", "dept_name": "检验科", "amount_fen": 8600, "created_at": created},
        ]
    }
    unknown = {"trade_no": "T-NONE", "operation": "charge.commit"}
    assert await call(adapter, "trade.check", **unknown) == {
        "found": False,
        "receipt_no": None,
        "amount_fen": None,
        "status": "unpaid",
    }


async def test_writes_their_checks_and_the_days_records(his: SandboxHis, adapter: SoapAdapter) -> None:
    charge = paid("T-Q1", "P0001", 9850, bill_nos=["B0001", "B0002"])
    preview = await adapter.preview("charge.commit", catalog.OPERATIONS["charge.commit"].input(**charge).model_dump())
    assert preview.details["parameters"] == {
        "clinicCode": "P0001",
        "recipeNo": "B0001,B0002",
        "operCode": "QY01",
        "payMode": "WX|T-Q1|weT-Q1",
        "totCost": "98.50",
    }
    receipt = (await call(adapter, "charge.commit", **charge))["receipt_no"]
    assert receipt == "SF20250314000001" and his.state.receipts_for("T-Q1") == [receipt]
    assert db_value(his, "SELECT channel_trade_no FROM trades WHERE trade_no = 'T-Q1'") == "weT-Q1"
    assert await call(adapter, "bills.unpaid", patient_id="P0001") == {"bills": []}
    assert await call(adapter, "trade.check", trade_no="T-Q1", operation="charge.commit") == {
        "found": True,
        "receipt_no": receipt,
        "amount_fen": 9850,
        "status": "paid",
    }
    with pytest.raises(PermanentError) as again:
        await call(adapter, "charge.commit", **{**charge, "trade_no": "T-Q1b"})
    assert again.value.code == "2002"

    registration = paid("T-Q2", "P0002", 1000, "alipay", schedule_id="S001")
    assert await call(adapter, "registration.commit", **registration) == {
        "receipt_no": "GH20250314000002",
        "visit_no": "MZ00000002",
    }
    assert db_value(his, "SELECT pay_time FROM trades WHERE trade_no = 'T-Q2'") == "2025-03-14 09:29:58"
    with pytest.raises(PermanentError) as wrong_fee:
        await call(adapter, "registration.commit", **{**registration, "trade_no": "T-Q3", "amount_fen": 999})
    assert wrong_fee.value.code == "2003"

    # Refunds booked through HisService on the same books are listed on the day the HIS applied them, with their
    # state; a withdrawn one is not listed at all.
    his.state.apply_refund("T-Q1", "R-Q1", 1250)
    his.state.writeback_refund("T-Q1", "R-Q1", 1250, "wxr-Q1", NOW)
    his.state.apply_refund("T-Q1", "R-Q2", 100)
    his.state.apply_refund("T-Q1", "R-Q3", 200)
    his.state.cancel_refund("T-Q1", "R-Q3")

    day = await call(adapter, "recon.fetch", date="2025-03-14")
    assert (day["total"], day["has_more"]) == (4, False)
    payment = {"refund_no": None, "refund_state": None, "channel_refund_no": None, "written_back_at": None}
    refund = {"kind": "refund", "trade_no": "T-Q1", "channel": "wechat", "channel_trade_no": "weT-Q1"}
    assert day["records"] == [
        {
            "trade_no": "T-Q1",
            "kind": "charge",
            "receipt_no": receipt,
            "amount_fen": 9850,
            "channel": "wechat",
            "channel_trade_no": "weT-Q1",
            "time": "2025-03-14T09:30:00+08:00",
            **payment,
        },
        {
            "trade_no": "T-Q2",
            "kind": "registration",
            "receipt_no": "GH20250314000002",
            "amount_fen": 1000,
            "channel": "alipay",
            "channel_trade_no": "alT-Q2",
            "time": "2025-03-14T09:30:00+08:00",
            **payment,
        },
        {
            **refund,
            "receipt_no": "TF20250314000001",
            "amount_fen": 1250,
            "refund_no": "R-Q1",
            "time": "2025-03-14T09:30:00+08:00",
            "refund_state": "written_back",
            "channel_refund_no": "wxr-Q1",
            "written_back_at": "2025-03-14T09:30:00+08:00",
        },
        {
            **refund,
            "receipt_no": None,
            "amount_fen": 100,
            "refund_no": "R-Q2",
            "time": "2025-03-14T09:30:00+08:00",
            "refund_state": "applied",
            "channel_refund_no": None,
            "written_back_at": None,
        },
    ]
    assert await call(adapter, "recon.fetch", date="2025-03-15") == {"records": [], "total": 0, "has_more": False}


async def test_the_wsdl_file_and_the_soap12_binding(his: SandboxHis) -> None:
    """The same WSDL read from the file (its soap:address names another host; ``endpoint`` wins), and the
    SOAP 1.2 binding the WSDL also publishes."""
    cases = [
        ({"soap.wsdl": f"file://{QUYI_WSDL}"}, paid("T-FILE", "P0004", 3550, bill_nos=["B0006"])),
        ({"soap.binding": "quyiServiceNoSoap12"}, paid("T-SOAP12", "P0003", 2000, bill_nos=["B0005"])),
    ]
    for overrides, charge in cases:
        adapter = make_adapter(his, **overrides)
        await adapter.start()
        try:
            assert adapter.address == his.quyi_url
            assert (await call(adapter, "patient.query", card_no="C0003"))["name"] == "王五"
            receipt = (await call(adapter, "charge.commit", **charge))["receipt_no"]
            assert his.state.receipts_for(charge["trade_no"]) == [receipt]
        finally:
            await adapter.close()
