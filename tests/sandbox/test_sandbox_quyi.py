"""The sandbox's quyi-compatible service on the wire: the real WSDL served, SOAP 1.1 and 1.2, faults, and the
operations no catalog profile binds (GetRecieptRefundStatus)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from xml.sax.saxutils import escape

import httpx
import pytest
from lxml import etree

from sandbox.cli import SandboxHis, start_sandbox_his
from sandbox.his.soap import SOAP12_ENV, SOAP_ENV, TNS
from sandbox.his.state import SHANGHAI
from tests.support.rig import QUYI_WSDL

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2025, 3, 14, 9, 30, tzinfo=SHANGHAI)


@pytest.fixture
async def his(tmp_path: Path) -> AsyncIterator[SandboxHis]:
    sandbox = await start_sandbox_his(db_path=tmp_path / "his.sqlite3", clock=lambda: NOW, quyi_wsdl=QUYI_WSDL)
    yield sandbox
    await sandbox.close()


async def post(
    his: SandboxHis, operation: str, *, version: str = SOAP_ENV, action: str | None = None, **params: str
) -> tuple[int, etree._Element]:
    args = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in params.items())
    body = (
        f'<s:Envelope xmlns:s="{version}"><s:Body><{operation} xmlns="{TNS}">{args}</{operation}></s:Body></s:Envelope>'
    )
    soap_action = TNS + operation if action is None else action
    if version == SOAP12_ENV:
        headers = {"Content-Type": f'application/soap+xml; charset=utf-8; action="{soap_action}"'}
    else:
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{soap_action}"'}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(his.quyi_url, content=body.encode(), headers=headers)
    return response.status_code, etree.fromstring(response.content)


async def result(his: SandboxHis, operation: str, **params: str) -> etree._Element:
    status, envelope = await post(his, operation, **params)
    assert status == 200, etree.tostring(envelope, encoding="unicode")
    text = envelope.findtext(f".//{{{TNS}}}{operation}Result") or ""
    assert text.startswith('<?xml version="1.0" encoding="GBK"?><Response>')
    return etree.fromstring(text.split("?>", 1)[1])


async def test_the_real_wsdl_is_served_pointing_at_the_sandbox(his: SandboxHis) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        served = etree.fromstring((await http.get(his.quyi_url + "?wsdl")).content)
        page = (await http.get(his.quyi_url)).text
    original = etree.parse(str(QUYI_WSDL)).getroot()
    addresses = served.xpath("//*[local-name()='address']/@location")
    assert addresses == [his.quyi_url, his.quyi_url]
    for element in original.xpath("//*[local-name()='address']"):
        element.set("location", his.quyi_url)
    assert etree.tostring(served, method="c14n") == etree.tostring(original, method="c14n")
    assert "SaveFee" in page and "HelloWorld (not implemented in the sandbox)" in page


async def test_refund_status_of_a_receipt(his: SandboxHis) -> None:
    saved = await result(
        his, "SaveFee", clinicCode="P0002", recipeNo="B0003", operCode="QY01", payMode="ZFB|T-R|ali-R", totCost="260.00"
    )
    receipt = saved.findtext("InvoiceNo") or ""
    states = []
    for refund_no, amount_fen in (("R1", 6000), ("R2", 20000)):
        refund = await result(his, "GetRecieptRefundStatus", receiptNum=receipt)
        states.append((refund.findtext("RefundFlag"), refund.findtext("RefundCost")))
        his.state.apply_refund("T-R", refund_no, amount_fen)
        his.state.writeback_refund("T-R", refund_no, amount_fen, f"ali-{refund_no}", NOW)
    refund = await result(his, "GetRecieptRefundStatus", receiptNum=receipt)
    states.append((refund.findtext("RefundFlag"), refund.findtext("RefundCost")))
    assert states == [("0", "0.00"), ("2", "60.00"), ("1", "260.00")]
    assert (await result(his, "GetRecieptStatus", recipeNo="T-R")).findtext("FeeState") == "2"

    unknown = await result(his, "GetRecieptRefundStatus", receiptNum="SF0")
    assert [unknown.findtext(t) for t in ("ResultCode", "ErrorCode")] == ["0", "3001"]

    day = await result(his, "QueryInvoiceInfoOper", beginDate="2025-03-14 00:00:00", endDate="2025-03-14", operCode="A")
    rows = [
        (r.findtext("TRANS_TYPE"), r.findtext("TOT_COST"), r.findtext("REFUND_NO")) for r in day.iter("InvoiceInfo")
    ]
    assert rows == [("2", "260.00", ""), ("4", "60.00", "R1"), ("4", "200.00", "R2")]


async def test_business_refusals_are_result_codes(his: SandboxHis) -> None:
    cases = [
        (
            "SaveFee",
            {"clinicCode": "P0001", "recipeNo": "B0001", "operCode": "QY01", "payMode": "WX", "totCost": "12.50"},
        ),
        ("SaveFee", {"clinicCode": "P0001", "recipeNo": "B0001", "payMode": "WX|T|w", "totCost": "12.50"}),
        (
            "SaveFee",
            {"clinicCode": "P0001", "recipeNo": "B0001", "operCode": "Q", "payMode": "WX|T|w", "totCost": "12.5x"},
        ),
        ("GetFeeListByClinicCode", {"clinicCode": "P0001", "isFee": "1"}),
        ("GetPatientCardNo1", {"name": "李四", "cardNo": "C0001"}),
        ("InsertRegisterTemp", {"input": "<Req/>"}),
        ("QueryInvoiceInfoOper", {"beginDate": "2025-03-14", "endDate": "2025-05-14", "operCode": "QY01"}),
    ]
    codes = []
    for operation, params in cases:
        reply = await result(his, operation, **params)
        codes.append((reply.findtext("ResultCode"), reply.findtext("ErrorCode")))
    assert codes == [
        ("0", "9001"),
        ("0", "9001"),
        ("0", "9001"),
        ("0", "9001"),
        ("0", "1001"),
        ("0", "9001"),
        ("0", "9001"),
    ]
    assert his.state.application_count() == 0


async def test_faults_in_both_soap_versions(his: SandboxHis) -> None:
    status, envelope = await post(his, "HelloWorld")
    assert status == 500
    assert envelope.findtext(".//faultcode") == "soap:Server"
    assert "HelloWorld is not implemented in the sandbox" in (envelope.findtext(".//faultstring") or "")

    status, envelope = await post(his, "GetDeptInfo", version=SOAP12_ENV, deptCode="01")
    assert status == 500
    assert envelope.findtext(f".//{{{SOAP12_ENV}}}Value") == "soap:Receiver"
    assert "not implemented" in (envelope.findtext(f".//{{{SOAP12_ENV}}}Text") or "")

    status, envelope = await post(his, "GetRecieptStatus", version=SOAP12_ENV, recipeNo="T-X")
    assert status == 200 and envelope.tag == f"{{{SOAP12_ENV}}}Envelope"

    for operation, action, params, message in [
        ("DropTables", None, {}, "did not recognize the request element"),
        ("SaveFee", TNS + "GetRecieptStatus", {}, "SOAPAction"),
        ("InsertRegisterTemp", None, {"input": "<Request>"}, "input is not well-formed"),
    ]:
        status, envelope = await post(his, operation, action=action, **params)
        assert status == 500
        assert envelope.findtext(".//faultcode") == "soap:Client"
        assert message in (envelope.findtext(".//faultstring") or "")


def test_cli_serves_quyi_with_the_wsdl_path(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "sandbox.cli", "his", "--listen", "127.0.0.1:0", "--quyi-wsdl", str(QUYI_WSDL)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("sandbox HIS listening on http://127.0.0.1:")
            line = proc.stdout.readline().strip()
            assert line.startswith("quyi service listening on ") and line.endswith("/quyiService/quyiServiceNo.asmx")
            assert "quyiServiceNoSoap12" in httpx.get(line.rsplit(" ", 1)[1] + "?WSDL", timeout=5).text
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
