"""The sandbox HIS's SOAP 1.1 endpoint, shaped like a .NET ASMX service with XML-in-a-string operations.

Each operation takes one string ``inXml`` holding ``<Request>…</Request>`` and returns one string
``<Operation>Result`` holding ``<Response><ResultCode>…</Response>``, as many Chinese HIS web services do.
Business refusals are ``ResultCode`` values; only a broken envelope, a broken inner document or an unknown
operation is a SOAP fault (HTTP 500, as ASMX answers).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Callable
from decimal import Decimal
from email.message import Message
from pathlib import Path
from typing import Any

from aiohttp import web
from lxml import etree

from bridge import clock
from sandbox.his.admin import FAULTS_KEY, STATE_KEY, setup_admin
from sandbox.his.faults import FaultBook, FaultMode
from sandbox.his.state import SOAP_OPERATIONS, TIME_FORMAT, HisError, HisState

log = logging.getLogger(__name__)

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
WSDL_SOAP = "http://schemas.xmlsoap.org/wsdl/soap/"
WSDL_SOAP12 = "http://schemas.xmlsoap.org/wsdl/soap12/"
TNS = "http://tempuri.org/"
ENDPOINT = "/his/HisService.asmx"
MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_WSDL = Path(__file__).with_name("HisService.wsdl")

_XML_DECL = re.compile(r"^\s*<\?xml\b[^>]*\?>")
_YUAN = re.compile(r"^[0-9]{1,10}(\.[0-9]{1,2})?$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_WSDL_KEY = web.AppKey("his_wsdl", bytes)


class SoapFault(Exception):
    """Answered as a SOAP 1.1 fault with HTTP 500."""

    def __init__(self, faultcode: str, message: str) -> None:
        super().__init__(message)
        self.faultcode = faultcode
        self.message = message


# --- XML and money helpers ---------------------------------------------------------------------------------


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_xml(data: bytes | str, what: str) -> etree._Element:
    """Parse untrusted XML: no DTDs, no entities, no network.

    A ``str`` is already decoded, so its XML declaration (often ``encoding="GBK"`` from Chinese HIS clients) is
    stale and dropped; ``bytes`` are decoded as their declaration says.
    """
    if isinstance(data, str):
        data = _XML_DECL.sub("", data.lstrip("\ufeff"), count=1)
    if not data.strip():
        raise SoapFault("soap:Client", f"{what} is empty")
    try:
        root = etree.fromstring(data, _parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise SoapFault("soap:Client", f"{what} is not well-formed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise SoapFault("soap:Client", f"{what}: DTD is prohibited")
    return root


def fen_to_yuan(fen: int) -> str:
    """Integer fen as a yuan string with exactly two decimals: 1250 → '12.50'."""
    return str((Decimal(int(fen)) / 100).quantize(Decimal("0.01")))


def yuan_to_fen(text: str, field: str = "Amount") -> int:
    """A yuan string back to exact integer fen; more than two decimals, signs or exponents are refused."""
    value = text.strip()
    if not _YUAN.fullmatch(value):
        raise HisError("9001", f"金额格式错误 ({field} must be yuan with at most two decimals, got {text!r})")
    return int(Decimal(value) * 100)


class _Request:
    """Typed access to the children of an inner ``<Request>``; bad values are ``9001``."""

    def __init__(self, root: etree._Element) -> None:
        self.root = root

    def text(self, path: str) -> str | None:
        node = self.root.find(path)
        if node is None or node.text is None or not node.text.strip():
            return None
        return node.text.strip()

    def required(self, path: str) -> str:
        value = self.text(path)
        if value is None:
            raise HisError("9001", f"缺少必填项 ({path} is required)")
        return value

    def texts(self, path: str) -> list[str]:
        return [n.text.strip() for n in self.root.findall(path) if n.text and n.text.strip()]

    def fen(self, path: str) -> int:
        return yuan_to_fen(self.required(path), path)

    def time(self, path: str) -> dt.datetime:
        value = self.required(path)
        try:
            return dt.datetime.strptime(value, TIME_FORMAT)
        except ValueError:
            raise HisError("9001", f"时间格式错误 ({path} must be YYYY-MM-DD HH:MM:SS, got {value!r})") from None

    def date(self, path: str) -> dt.date:
        value = self.required(path)
        try:
            if not _DATE.fullmatch(value):
                raise ValueError(value)
            return dt.date.fromisoformat(value)
        except ValueError:
            raise HisError("9001", f"日期格式错误 ({path} must be YYYY-MM-DD, got {value!r})") from None

    def integer(self, path: str, default: int) -> int:
        value = self.text(path)
        if value is None:
            return default
        if not value.isdigit() or len(value) > 9:
            raise HisError("9001", f"数值格式错误 ({path} must be a non-negative integer, got {value!r})")
        return int(value)


def add_element(parent: etree._Element, tag: str, value: Any = None) -> etree._Element:
    child = etree.SubElement(parent, tag)
    if value is not None:
        child.text = str(value)
    return child


# --- operations --------------------------------------------------------------------------------------------

Handler = Callable[[HisState, _Request, etree._Element], None]


def _query_patient(state: HisState, req: _Request, out: etree._Element) -> None:
    p = state.query_patient(req.text("CardNo"), req.text("IdCardNo"), req.text("Phone"))
    patient = add_element(out, "Patient")
    for tag, key in (
        ("PatientId", "patient_id"),
        ("Name", "name"),
        ("Gender", "gender"),
        ("BirthDate", "birth_date"),
        ("CardNo", "card_no"),
        ("Phone", "phone"),
    ):
        add_element(patient, tag, p[key])


def _unpaid_bills(state: HisState, req: _Request, out: etree._Element) -> None:
    bills = add_element(out, "Bills")
    for b in state.unpaid_bills(req.required("PatientId")):
        bill = add_element(bills, "Bill")
        add_element(bill, "BillNo", b["bill_no"])
        add_element(bill, "DeptName", b["dept_name"])
        add_element(bill, "Amount", fen_to_yuan(b["amount_fen"]))
        add_element(bill, "CreatedAt", b["created_at"])


def _lock(state: HisState, req: _Request, out: etree._Element) -> None:
    r = state.lock_registration(req.required("TradeNo"), req.required("PatientId"), req.required("ScheduleId"))
    add_element(out, "LockId", r["lock_id"])
    add_element(out, "Amount", fen_to_yuan(r["amount_fen"]))
    add_element(out, "ExpireTime", r["expire_time"])


def _unlock(state: HisState, req: _Request, out: etree._Element) -> None:
    state.unlock_registration(req.required("TradeNo"), req.required("LockId"))


def _paid(req: _Request) -> dict[str, Any]:
    return {
        "trade_no": req.required("TradeNo"),
        "patient_id": req.required("PatientId"),
        "amount_fen": req.fen("Amount"),
        "pay_mode": req.required("PayMode"),
        "channel_trade_no": req.required("ChannelTradeNo"),
        "pay_time": req.time("PayTime"),
    }


def _commit_registration(state: HisState, req: _Request, out: etree._Element) -> None:
    r = state.commit_registration(schedule_id=req.required("ScheduleId"), lock_id=req.text("LockId"), **_paid(req))
    add_element(out, "ReceiptNo", r["receipt_no"])
    add_element(out, "VisitNo", r["visit_no"])


def _commit_charge(state: HisState, req: _Request, out: etree._Element) -> None:
    r = state.commit_charge(bill_nos=req.texts("BillNos/BillNo"), **_paid(req))
    add_element(out, "ReceiptNo", r["receipt_no"])


def _commit_prepay(state: HisState, req: _Request, out: etree._Element) -> None:
    r = state.commit_prepay(inpatient_no=req.required("InpatientNo"), **_paid(req))
    add_element(out, "ReceiptNo", r["receipt_no"])
    add_element(out, "Balance", fen_to_yuan(r["balance_fen"]))


def _apply_refund(state: HisState, req: _Request, out: etree._Element) -> None:
    r = state.apply_refund(req.required("TradeNo"), req.required("RefundNo"), req.fen("Amount"), req.text("Reason"))
    add_element(out, "RefundableAmount", fen_to_yuan(r["refundable_fen"]))
    add_element(out, "HisRefundId", r["his_refund_id"])


def _writeback_refund(state: HisState, req: _Request, out: etree._Element) -> None:
    r = state.writeback_refund(
        req.required("TradeNo"),
        req.required("RefundNo"),
        req.fen("Amount"),
        req.required("ChannelRefundNo"),
        req.time("RefundTime"),
    )
    add_element(out, "ReceiptNo", r["receipt_no"])


def _cancel_refund(state: HisState, req: _Request, out: etree._Element) -> None:
    r = state.cancel_refund(req.required("TradeNo"), req.required("RefundNo"), req.text("Reason"))
    add_element(out, "ReceiptNo", r["receipt_no"])
    add_element(out, "Amount", fen_to_yuan(r["amount_fen"]))


def _check_trade(state: HisState, req: _Request, out: etree._Element) -> None:
    operation = req.required("Operation")
    operation = SOAP_OPERATIONS.get(operation, operation)
    r = state.check_trade(req.required("TradeNo"), operation, req.text("RefundNo"))
    add_element(out, "Found", "1" if r["found"] else "0")
    add_element(out, "ReceiptNo", r["receipt_no"])
    add_element(out, "Amount", None if r["amount_fen"] is None else fen_to_yuan(r["amount_fen"]))
    add_element(out, "Status", r["status"])


def _fetch_recon(state: HisState, req: _Request, out: etree._Element) -> None:
    r = state.recon(req.date("Date"), req.integer("PageNo", 1), req.integer("PageSize", 500))
    add_element(out, "Total", r["total"])
    add_element(out, "HasMore", "1" if r["has_more"] else "0")
    records = add_element(out, "Records")
    for rec in r["records"]:
        record = add_element(records, "Record")
        add_element(record, "TradeNo", rec["trade_no"])
        add_element(record, "Kind", rec["kind"])
        add_element(record, "ReceiptNo", rec["receipt_no"])
        add_element(record, "Amount", fen_to_yuan(rec["amount_fen"]))
        add_element(record, "PayMode", rec["pay_mode"])
        add_element(record, "ChannelTradeNo", rec["channel_trade_no"])
        add_element(record, "RefundNo", rec["refund_no"])
        add_element(record, "Time", rec["time"])
        add_element(record, "RefundState", rec["refund_state"])
        add_element(record, "ChannelRefundNo", rec["channel_refund_no"])
        add_element(record, "WrittenBackAt", rec["written_back_at"])


HANDLERS: dict[str, Handler] = {
    "QueryPatient": _query_patient,
    "QueryUnpaidBills": _unpaid_bills,
    "LockRegistration": _lock,
    "UnlockRegistration": _unlock,
    "CommitRegistration": _commit_registration,
    "CommitCharge": _commit_charge,
    "CommitPrepay": _commit_prepay,
    "ApplyRefund": _apply_refund,
    "WritebackRefund": _writeback_refund,
    "CancelRefund": _cancel_refund,
    "CheckTrade": _check_trade,
    "FetchRecon": _fetch_recon,
}


def inner_response(code: str = "0", message: str = "成功") -> etree._Element:
    root = etree.Element("Response")
    add_element(root, "ResultCode", code)
    add_element(root, "ResultMsg", message)
    return root


def serialize_inner(root: etree._Element) -> str:
    return '<?xml version="1.0" encoding="utf-8"?>' + etree.tostring(root, encoding="unicode")


def call_operation(state: HisState, operation: str, in_xml: str) -> str:
    """Run one operation on its inner request document and return the inner response document."""
    root = parse_xml(in_xml, "inXml")
    if etree.QName(root).localname != "Request":
        return serialize_inner(inner_response("9001", f"请求格式错误 (root element must be Request, not {root.tag})"))
    out = inner_response()
    try:
        HANDLERS[operation](state, _Request(root), out)
    except HisError as exc:
        out = inner_response(exc.code, exc.message)
    return serialize_inner(out)


# --- the SOAP envelope -------------------------------------------------------------------------------------


def read_envelope(body: bytes, *, soap12: bool = False) -> tuple[str, etree._Element]:
    """The envelope namespace (the SOAP version) and the first element of the Body.

    A service that serves only SOAP 1.1 answers a 1.2 envelope with ``VersionMismatch``, as ASMX does when
    its 1.2 protocol is switched off.
    """
    root = parse_xml(body, "SOAP envelope")
    versions = (SOAP_ENV, SOAP12_ENV) if soap12 else (SOAP_ENV,)
    ns = etree.QName(root).namespace
    if root.tag == f"{{{SOAP12_ENV}}}Envelope" and not soap12:
        raise SoapFault("soap:VersionMismatch", "SOAP 1.2 is not served here; use SOAP 1.1 (text/xml)")
    if etree.QName(root).localname != "Envelope" or ns not in versions:
        wanted = "SOAP 1.1 or 1.2" if soap12 else "SOAP 1.1"
        raise SoapFault("soap:Client", f"not a {wanted} envelope: root element is {root.tag}")
    soap_body = root.find(f"{{{ns}}}Body")
    if soap_body is None:
        raise SoapFault("soap:Client", "SOAP envelope has no Body")
    elements = [child for child in soap_body if isinstance(child.tag, str)]
    if not elements:
        raise SoapFault("soap:Client", "SOAP Body is empty")
    return str(ns), elements[0]


def soap_action(request: web.Request, version: str) -> str:
    """The action the client named: the ``SOAPAction`` header (1.1) or the ``action`` media-type parameter (1.2)."""
    if version == SOAP12_ENV:
        header = Message()
        header["content-type"] = request.headers.get("Content-Type", "")
        action = header.get_param("action")
        return action.strip() if isinstance(action, str) else ""
    return (request.headers.get("SOAPAction") or "").strip().strip('"')


def check_action(action: str, operation: str) -> None:
    """ASMX refuses a ``SOAPAction`` that names another operation than the body; an empty one is accepted."""
    if action and action != TNS + operation:
        raise SoapFault(
            "soap:Client",
            f"Server did not recognize the value of HTTP Header SOAPAction: {action} (body is {operation}).",
        )


def parse_envelope(body: bytes, soap_action: str | None) -> tuple[str, str]:
    """The operation name and the ``inXml`` string of a SOAP 1.1 request to HisService."""
    _, element = read_envelope(body)
    qname = etree.QName(element)
    operation = qname.localname
    if qname.namespace != TNS or operation not in HANDLERS:
        raise SoapFault("soap:Client", f"Server did not recognize the request element {element.tag}.")
    check_action((soap_action or "").strip().strip('"'), operation)
    in_xml = element.find(f"{{{TNS}}}inXml")
    return operation, "" if in_xml is None or in_xml.text is None else in_xml.text


def _envelope(payload: etree._Element, version: str = SOAP_ENV) -> bytes:
    nsmap = {
        "soap": version,
        "xsi": "http://www.w3.org/2001/XMLSchema-instance",
        "xsd": "http://www.w3.org/2001/XMLSchema",
    }
    envelope = etree.Element(f"{{{version}}}Envelope", nsmap=nsmap)
    etree.SubElement(envelope, f"{{{version}}}Body").append(payload)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def _content_type(version: str) -> str:
    return "application/soap+xml" if version == SOAP12_ENV else "text/xml"


def result_response(operation: str, inner: str, version: str = SOAP_ENV) -> web.Response:
    wrapper = etree.Element(f"{{{TNS}}}{operation}Response", nsmap={None: TNS})
    etree.SubElement(wrapper, f"{{{TNS}}}{operation}Result").text = inner
    return web.Response(body=_envelope(wrapper, version), content_type=_content_type(version), charset="utf-8")


_SOAP12_CODES = {"soap:Client": "soap:Sender", "soap:Server": "soap:Receiver"}


def fault_response(fault: SoapFault, version: str = SOAP_ENV) -> web.Response:
    """HTTP 500 with a SOAP fault in the request's SOAP version (1.2 renames Client/Server to Sender/Receiver)."""
    node = etree.Element(f"{{{version}}}Fault")
    if version == SOAP12_ENV:
        code = etree.SubElement(node, f"{{{version}}}Code")
        add_element(code, f"{{{version}}}Value", _SOAP12_CODES.get(fault.faultcode, fault.faultcode))
        reason = etree.SubElement(node, f"{{{version}}}Reason")
        add_element(reason, f"{{{version}}}Text", fault.message).set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        etree.SubElement(node, f"{{{version}}}Detail")
    else:
        add_element(node, "faultcode", fault.faultcode)
        add_element(node, "faultstring", fault.message)
        add_element(node, "detail")
    body = _envelope(node, version)
    return web.Response(status=500, body=body, content_type=_content_type(version), charset="utf-8")


def wsdl_response(wsdl: bytes, location: str) -> web.Response:
    """A WSDL with every ``soap:address`` and ``soap12:address`` pointing at ``location``."""
    document = parse_xml(wsdl, "WSDL")
    for tag in (f"{{{WSDL_SOAP}}}address", f"{{{WSDL_SOAP12}}}address"):
        for address in document.iter(tag):
            address.set("location", location)
    body = etree.tostring(document, xml_declaration=True, encoding="utf-8")
    return web.Response(body=body, content_type="text/xml", charset="utf-8")


def _trade_no(in_xml: str) -> str | None:
    """The request's ``TradeNo``, for fault rules aimed at one trade; None when the document does not say."""
    try:
        return parse_xml(in_xml, "inXml").findtext("TradeNo")
    except SoapFault:
        return None


def _drop_connection(request: web.Request) -> None:
    """Close the socket with no answer at all, so the client cannot tell whether the call was applied."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError


async def soap_post(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        operation, in_xml = parse_envelope(await request.read(), request.headers.get("SOAPAction"))
    except SoapFault as fault:
        return fault_response(fault)
    rule = request.app[FAULTS_KEY].take(operation, _trade_no(in_xml))
    if rule is not None:
        log.info("fault %s on %s (rule %d)", rule.mode.value, operation, rule.id)
        if rule.latency_ms:
            await clock.sleep(rule.latency_ms / 1000)  # processing time: on the shared clock
        if rule.mode is FaultMode.refuse:
            return web.Response(status=503, text="Service Unavailable")
        if rule.mode is FaultMode.http_500:
            return fault_response(SoapFault("soap:Server", "Server was unable to process request. (injected fault)"))
        if rule.mode is FaultMode.error:
            inner = serialize_inner(inner_response(rule.error_code, "系统错误 (injected error)"))
            return result_response(operation, inner)
    try:
        inner = call_operation(state, operation, in_xml)
    except SoapFault as fault:
        return fault_response(fault)
    except Exception as exc:
        log.exception("operation %s failed", operation)
        return fault_response(SoapFault("soap:Server", f"Server was unable to process request. ---> {exc}"))
    if rule is not None and rule.mode is FaultMode.drop_reply:
        _drop_connection(request)
    return result_response(operation, inner)


async def soap_get(request: web.Request) -> web.Response:
    if any(key.lower() == "wsdl" for key in request.query):
        return wsdl_response(request.app[_WSDL_KEY], f"{request.scheme}://{request.host}{ENDPOINT}")
    items = "".join(f"<li>{op}</li>" for op in HANDLERS)
    html = (
        "<html><head><title>HisService</title></head><body><h1>HisService (sandbox HIS)</h1>"
        f'<p><a href="{ENDPOINT}?wsdl">Service description (WSDL)</a></p><ul>{items}</ul></body></html>'
    )
    return web.Response(text=html, content_type="text/html")


def create_app(
    state: HisState, *, wsdl_path: str | Path | None = None, faults: FaultBook | None = None
) -> web.Application:
    """The sandbox HIS as an aiohttp application: the SOAP endpoint, its WSDL and the admin API."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[STATE_KEY] = state
    app[FAULTS_KEY] = faults if faults is not None else FaultBook()
    app[_WSDL_KEY] = Path(wsdl_path or DEFAULT_WSDL).read_bytes()
    app.router.add_get(ENDPOINT, soap_get)
    app.router.add_post(ENDPOINT, soap_post)
    setup_admin(app)
    return app
