"""A stand-in for a real hospital's ``quyiServiceNo`` ASMX service, over the sandbox HIS's own state.

The WSDL is the real one (its path is given at start; the repository carries no copy, it has no licence), so a
profile can be tried against an interface a HIS vendor actually published rather than one we designed. A
subset of its 57 operations is answered the way such a HIS answers: plain string parameters (or one ``input``
string holding an XML document), and one string result holding an XML document that declares
``encoding="GBK"`` although it travels as text in a UTF-8 envelope. Every other operation of the WSDL is a
SOAP fault saying it is not implemented in the sandbox. The contract is in docs/SANDBOX_HIS.md.

Both of the WSDL's bindings are served: SOAP 1.1 (``text/xml`` with ``SOAPAction``) and SOAP 1.2
(``application/soap+xml`` with ``action``), each answered in its own version, as ASMX does.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from lxml import etree

from sandbox.his.admin import STATE_KEY
from sandbox.his.soap import (
    SOAP_ENV,
    TNS,
    SoapFault,
    add_element,
    check_action,
    fault_response,
    fen_to_yuan,
    parse_xml,
    read_envelope,
    result_response,
    soap_action,
    wsdl_response,
    yuan_to_fen,
)
from sandbox.his.state import TIME_FORMAT, HisError, HisState

log = logging.getLogger(__name__)

QUYI_ENDPOINT = "/quyiService/quyiServiceNo.asmx"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
GBK_DECLARATION = '<?xml version="1.0" encoding="GBK"?>'
PAY_MODE_SEPARATOR = "|"
RECIPE_SEPARATOR = ","
MAX_RECON_DAYS = 31

TRANS_TYPES = {"registration": "1", "charge": "2", "prepay": "3", "refund": "4"}
"""Our record kinds → the ``TRANS_TYPE`` codes of ``QueryInvoiceInfoOper`` rows."""
REFUND_STATES = {"applied": "1", "written_back": "2"}
"""Refund rows of ``QueryInvoiceInfoOper``: ``1`` 已申请 (booked, not paid out), ``2`` 已退款 (written back)."""
SEX_CODES = {"M": "1", "F": "2", "U": "0"}
"""GB/T 2261.1 sex codes, as HIS patient tables store them."""

Args = Mapping[str, str]
Handler = Callable[[HisState, Args, etree._Element], None]


@dataclass(frozen=True)
class QuyiWsdl:
    """The served WSDL and what the service needs from it: each operation's parameter names, in order."""

    content: bytes
    operations: dict[str, tuple[str, ...]]

    @classmethod
    def parse(cls, content: bytes) -> QuyiWsdl:
        root = parse_xml(content, "quyi WSDL")
        schema_elements = {
            element.get("name"): tuple(c.get("name") or "" for c in element.iterdescendants(f"{{{XSD_NS}}}element"))
            for schema in root.iter(f"{{{XSD_NS}}}schema")
            for element in schema.findall(f"{{{XSD_NS}}}element")
        }
        operations: dict[str, tuple[str, ...]] = {}
        for port_type in root.iter(f"{{{WSDL_NS}}}portType"):
            for operation in port_type.findall(f"{{{WSDL_NS}}}operation"):
                name = operation.get("name") or ""
                operations[name] = tuple(p for p in schema_elements.get(name, ()) if p)
        if not operations:
            raise ValueError("the quyi WSDL declares no operations")
        return cls(content, operations)


_WSDL_KEY = web.AppKey("quyi_wsdl", QuyiWsdl)


# --- request helpers ---------------------------------------------------------------------------------------


def _required(args: Args, name: str) -> str:
    value = (args.get(name) or "").strip()
    if not value:
        raise HisError("9001", f"缺少必填项 ({name} is required)")
    return value


def _optional(args: Args, name: str) -> str | None:
    return (args.get(name) or "").strip() or None


def _his_time(value: str, name: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, TIME_FORMAT)
    except ValueError:
        raise HisError("9001", f"时间格式错误 ({name} must be YYYY-MM-DD HH:MM:SS, got {value!r})") from None


def _his_date(value: str, name: str) -> dt.date:
    """A date, or the date of a date-time (``2025-03-14 00:00:00``): such HIS take either in date ranges."""
    for fmt in ("%Y-%m-%d", TIME_FORMAT):
        try:
            return dt.datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    raise HisError("9001", f"日期格式错误 ({name} must be YYYY-MM-DD, got {value!r})")


def _input_document(args: Args) -> etree._Element:
    """The ``input`` XML document of an ``Insert…`` operation; a broken one is a SOAP fault, as in HisService."""
    root = parse_xml(args.get("input") or "", "input")
    if etree.QName(root).localname != "Request":
        raise HisError("9001", f"请求格式错误 (root element must be Request, not {root.tag})")
    return root


def _child(root: etree._Element, tag: str) -> str | None:
    return (root.findtext(tag) or "").strip() or None


# --- operations --------------------------------------------------------------------------------------------


def _patient_card_no(state: HisState, args: Args, out: etree._Element) -> None:
    name = _optional(args, "name")
    card_no, iden = _optional(args, "cardNo"), _optional(args, "iden")
    if not (card_no or iden):
        raise HisError("9001", "请提供就诊卡号或身份证号 (give cardNo or iden)")
    patient = state.query_patient(card_no, iden)
    if name is not None and name != patient["name"]:
        raise HisError("1001", "姓名与证件不符 (name does not match the card or ID)")
    info = add_element(out, "PatientInfo")
    add_element(info, "PATIENT_NO", patient["patient_id"])
    add_element(info, "CARD_NO", patient["card_no"])
    add_element(info, "NAME", patient["name"])
    add_element(info, "SEX_CODE", SEX_CODES[patient["gender"]])
    add_element(info, "BIRTHDAY", f"{patient['birth_date']} 00:00:00" if patient["birth_date"] else None)
    add_element(info, "HOME_TEL", patient["phone"])


def _fee_list(state: HisState, args: Args, out: etree._Element) -> None:
    if (_optional(args, "isFee") or "0") != "0":
        raise HisError("9001", "沙箱仅支持查询未缴费处方 (isFee must be 0: the sandbox lists unpaid bills only)")
    rows = add_element(out, "FeeList")
    for bill in state.unpaid_bills(_required(args, "clinicCode")):
        row = add_element(rows, "FeeInfo")
        add_element(row, "RECIPE_NO", bill["bill_no"])
        add_element(row, "DEPT_NAME", bill["dept_name"])
        add_element(row, "TOT_COST", fen_to_yuan(bill["amount_fen"]))
        add_element(row, "PAY_FLAG", "0")
        add_element(row, "OPER_DATE", bill["created_at"])


def _insert_register(state: HisState, args: Args, out: etree._Element) -> None:
    root = _input_document(args)

    def required(tag: str) -> str:
        value = _child(root, tag)
        if value is None:
            raise HisError("9001", f"缺少必填项 ({tag} is required)")
        return value

    result = state.commit_registration(
        trade_no=required("OrderNo"),
        patient_id=required("PatientNo"),
        schedule_id=required("ShemaId"),
        lock_id=_child(root, "LockId"),
        amount_fen=yuan_to_fen(required("RegFee"), "RegFee"),
        pay_mode=required("PayMode"),
        channel_trade_no=required("PayTradeNo"),
        pay_time=_his_time(required("PayTime"), "PayTime"),
    )
    add_element(out, "ClinicCode", result["visit_no"])
    add_element(out, "InvoiceNo", result["receipt_no"])


def _save_fee(state: HisState, args: Args, out: etree._Element) -> None:
    _required(args, "operCode")
    parts = _required(args, "payMode").split(PAY_MODE_SEPARATOR)
    if len(parts) != 3 or not all(part.strip() for part in parts):
        raise HisError("9001", "支付方式格式错误 (payMode must be PAYMODE|ORDER_NO|PAY_TRADE_NO)")
    pay_mode, order_no, pay_trade_no = (part.strip() for part in parts)
    bills = [b.strip() for b in _required(args, "recipeNo").split(RECIPE_SEPARATOR) if b.strip()]
    result = state.commit_charge(
        trade_no=order_no,
        patient_id=_required(args, "clinicCode"),
        bill_nos=bills,
        amount_fen=yuan_to_fen(_required(args, "totCost"), "totCost"),
        pay_mode=pay_mode,
        channel_trade_no=pay_trade_no,
        pay_time=state.clock(),  # SaveFee carries no payment time: the HIS stamps its own, as at a till
    )
    add_element(out, "InvoiceNo", result["receipt_no"])


FEE_STATES = {"paid": "1", "refunded": "2", "partial": "3"}
"""``check_trade`` statuses → ``FeeState`` codes; ``0`` is 未缴费 (nothing recorded)."""


def _reciept_status(state: HisState, args: Args, out: etree._Element) -> None:
    order_no = _required(args, "recipeNo")
    for operation in ("charge.commit", "registration.commit"):
        found = state.check_trade(order_no, operation)
        if found["found"]:
            add_element(out, "FeeState", FEE_STATES[found["status"]])
            add_element(out, "InvoiceNo", found["receipt_no"])
            add_element(out, "TotCost", fen_to_yuan(found["amount_fen"]))
            return
    add_element(out, "FeeState", "0")
    add_element(out, "InvoiceNo")
    add_element(out, "TotCost")


def _reciept_refund_status(state: HisState, args: Args, out: etree._Element) -> None:
    receipt = state.receipt(_required(args, "receiptNum"))
    if receipt is None:
        raise HisError("3001", "收据不存在 (receipt unknown)")
    refunded = receipt["refunded_fen"]
    flag = "0" if refunded == 0 else "1" if refunded >= receipt["amount_fen"] else "2"
    add_element(out, "RefundFlag", flag)
    add_element(out, "TotCost", fen_to_yuan(receipt["amount_fen"]))
    add_element(out, "RefundCost", fen_to_yuan(refunded))


def _invoice_info(state: HisState, args: Args, out: etree._Element) -> None:
    oper_code = _required(args, "operCode")
    begin = _his_date(_required(args, "beginDate"), "beginDate")
    end = _his_date(_required(args, "endDate"), "endDate")
    if not begin <= end <= begin + dt.timedelta(days=MAX_RECON_DAYS - 1):
        raise HisError("9001", f"日期范围无效 (endDate must be from beginDate up to {MAX_RECON_DAYS} days on)")
    rows = add_element(out, "InvoiceList")
    day = begin
    while day <= end:
        page = 1
        while True:
            chunk = state.recon(day, page, 1000)
            for record in chunk["records"]:
                row = add_element(rows, "InvoiceInfo")
                add_element(row, "INVOICE_NO", record["receipt_no"])
                add_element(row, "ORDER_NO", record["trade_no"])
                add_element(row, "TRANS_TYPE", TRANS_TYPES[record["kind"]])
                add_element(row, "TOT_COST", fen_to_yuan(record["amount_fen"]))
                add_element(row, "PAY_MODE", record["pay_mode"])
                add_element(row, "PAY_TRADE_NO", record["channel_trade_no"])
                add_element(row, "REFUND_NO", record["refund_no"])
                add_element(row, "REFUND_STATE", REFUND_STATES.get(record["refund_state"] or ""))
                add_element(row, "REFUND_TRADE_NO", record["channel_refund_no"])
                add_element(row, "REFUND_DATE", record["written_back_at"])
                add_element(row, "OPER_CODE", oper_code)
                add_element(row, "OPER_DATE", record["time"])
            if not chunk["has_more"]:
                break
            page += 1
        day += dt.timedelta(days=1)


HANDLERS: dict[str, Handler] = {
    "GetPatientCardNo1": _patient_card_no,
    "GetFeeListByClinicCode": _fee_list,
    "InsertRegisterTemp": _insert_register,
    "SaveFee": _save_fee,
    "GetRecieptStatus": _reciept_status,
    "GetRecieptRefundStatus": _reciept_refund_status,
    "QueryInvoiceInfoOper": _invoice_info,
}

QUYI_OPERATIONS: dict[str, str] = {
    "GetPatientCardNo1": "patient.query",
    "GetFeeListByClinicCode": "bills.unpaid",
    "InsertRegisterTemp": "registration.commit",
    "SaveFee": "charge.commit",
    "GetRecieptStatus": "trade.check",
    "GetRecieptRefundStatus": "trade.check",
    "QueryInvoiceInfoOper": "recon.fetch",
}
"""Implemented quyi operation → the catalog operation it serves."""


def _inner(code: str, error_code: str | None, message: str) -> etree._Element:
    root = etree.Element("Response")
    add_element(root, "ResultCode", code)
    add_element(root, "ErrorCode", error_code)
    add_element(root, "ResultMsg", message)
    return root


def call_quyi(state: HisState, operation: str, args: Args) -> str:
    """Run one implemented operation and return its result document, declared GBK as this HIS does."""
    out = _inner("1", None, "成功")
    try:
        HANDLERS[operation](state, args, out)
    except HisError as exc:
        out = _inner("0", exc.code, exc.message)
    return GBK_DECLARATION + etree.tostring(out, encoding="unicode")


# --- HTTP --------------------------------------------------------------------------------------------------


def _arguments(element: etree._Element, params: tuple[str, ...]) -> dict[str, str]:
    args: dict[str, str] = {}
    for name in params:
        child = element.find(f"{{{TNS}}}{name}")
        if child is not None:
            args[name] = child.text or ""
    return args


async def quyi_post(request: web.Request) -> web.Response:
    wsdl = request.app[_WSDL_KEY]
    body = await request.read()
    version = SOAP_ENV
    try:
        version, element = read_envelope(body, soap12=True)
        qname = etree.QName(element)
        operation = qname.localname
        if qname.namespace != TNS or operation not in wsdl.operations:
            raise SoapFault("soap:Client", f"Server did not recognize the request element {element.tag}.")
        check_action(soap_action(request, version), operation)
        if operation not in HANDLERS:
            raise SoapFault(
                "soap:Server",
                f"Server was unable to process request. ---> {operation} is not implemented in the sandbox.",
            )
        inner = call_quyi(request.app[STATE_KEY], operation, _arguments(element, wsdl.operations[operation]))
    except SoapFault as fault:
        return fault_response(fault, version)
    except Exception as exc:
        log.exception("quyi operation failed")
        return fault_response(SoapFault("soap:Server", f"Server was unable to process request. ---> {exc}"), version)
    return result_response(operation, inner, version)


async def quyi_get(request: web.Request) -> web.Response:
    wsdl = request.app[_WSDL_KEY]
    if any(key.lower() == "wsdl" for key in request.query):
        return wsdl_response(wsdl.content, f"{request.scheme}://{request.host}{QUYI_ENDPOINT}")
    items = "".join(
        f"<li>{op}{'' if op in HANDLERS else ' (not implemented in the sandbox)'}</li>" for op in wsdl.operations
    )
    html = (
        "<html><head><title>quyiServiceNo</title></head><body><h1>quyiServiceNo (sandbox HIS)</h1>"
        f'<p><a href="{QUYI_ENDPOINT}?wsdl">Service description (WSDL)</a></p><ul>{items}</ul></body></html>'
    )
    return web.Response(text=html, content_type="text/html")


def setup_quyi(app: web.Application, wsdl: bytes) -> None:
    """Mount the quyi service on a sandbox HIS app (which holds the shared ``STATE_KEY``)."""
    app[_WSDL_KEY] = QuyiWsdl.parse(wsdl)
    app.router.add_get(QUYI_ENDPOINT, quyi_get)
    app.router.add_post(QUYI_ENDPOINT, quyi_post)
