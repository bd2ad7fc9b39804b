"""The sandbox HIS's HL7 v2.4 listener over MLLP, serving the same :class:`HisState` as the SOAP service.

Every message gets one answer on the connection it came on: an ACK (``ACK^<event>^ACK``) for a write, an
``RSP^K11`` for a query, with ``MSA-1`` ``AA`` and the result segments, ``AR`` with the HIS code in ``MSA-6`` for a
business refusal, ``AE`` only when nothing was applied and a resend may succeed. The contract (message types,
segments, fields, codes) is in docs/SANDBOX_HIS.md, "HL7 v2 over MLLP".

Like a Chinese HIS, it decodes each message by its MSH-18 (HL7 table 0211 name) or, when MSH-18 is empty, by its
default GB18030, before splitting fields, and answers in the same character set. This module deliberately
shares no code with ``adapters`` (the sandbox imports nothing of ours): two independent implementations of the
framing and the character-set rules meet on the wire.
"""

from __future__ import annotations

import asyncio
import codecs
import datetime as dt
import logging
import re
import secrets
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import hl7
import hl7.exceptions

from bridge import clock
from sandbox.his.faults import FaultBook, FaultMode, FaultRule
from sandbox.his.state import SHANGHAI, SOAP_OPERATIONS, HisError, HisState

log = logging.getLogger(__name__)

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
DEFAULT_ENCODING = "GB18030"
MAX_FRAME_BYTES = 1024 * 1024

CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "iso8859-1",
    "UNICODE UTF-8": "utf-8",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc_kr",
}
"""HL7 table 0211 names served; other MSH-18 values are tried as codec names (GBK, UTF-8)."""

MESSAGE_TYPES: dict[str, str] = {
    "SIU^S12": "registration.lock",
    "SIU^S15": "registration.unlock",
    "ADT^A04": "registration.commit",
}
TRANSACTION_TYPES: dict[str, str] = {
    "PY": "charge.commit",
    "DP": "prepay.commit",
    "CD": "refund.apply",
    "RF": "refund.writeback",
    "RV": "refund.cancel",
}
"""DFT^P03: the catalog operation named by FT1-6 of the first FT1 (HL7 table 0017 is site-defined). v2.4 has no
trigger event that cancels a posting, so a withdrawn refund application is posted as a reversal line ``RV``."""
QUERIES: dict[str, str] = {
    "ZPQ": "patient.query",
    "ZBQ": "bills.unpaid",
    "ZTQ": "trade.check",
    "ZRQ": "recon.fetch",
}
"""QBP^Q11: the catalog operation named by QPD-1.1."""

MLLP_OPERATIONS = frozenset({*SOAP_OPERATIONS.values(), *MESSAGE_TYPES, "DFT^P03", "QBP^Q11"})
"""What an MLLP fault rule may name: a catalog operation or a message type."""

_ESCAPES = str.maketrans(
    {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": "\\X0D\\", "\n": "\\X0A\\"}
)
_YUAN = re.compile(r"-?[0-9]{1,10}(?:\.[0-9]{1,2})?")
_TS = re.compile(r"([0-9]{14})(?:([+-])([0-9]{2})([0-9]{2}))?")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class Undecodable(ValueError):
    pass


# --- bytes, text and frames --------------------------------------------------------------------------------


def codec_for(name: str) -> str:
    codec = CHARSETS.get(name.strip().upper()) or codecs.lookup(name.strip()).name
    if "MSH|\r\n".encode(codec) != b"MSH|\r\n":
        raise LookupError(f"{name} is not ASCII-compatible")
    return codecs.lookup(codec).name


def charset_field(msh: str) -> str | None:
    """MSH-18 (first repetition) of one MSH segment."""
    fields = msh.split(msh[3]) if len(msh) > 8 else []
    value = fields[17].split(msh[5])[0].split(msh[4])[0].strip() if len(fields) > 17 else ""
    return value or None


def decode(frame: bytes, default: str) -> tuple[str, str, str | None]:
    """``(text with CR segment ends, codec, MSH-18)``: MSH-18 is read from the bytes and confirmed by decoding the
    MSH segment with the codec it names; a GB18030 trail byte can look like ``|`` and shift it, so the default
    and any table 0211 name among the later MSH fields are tried the same way."""
    data = frame.lstrip(b" \t\r\n")
    if not data.startswith(b"MSH"):
        raise Undecodable("the message does not start with MSH")
    msh = _LINE_BREAK.split(data.decode("latin-1"), maxsplit=1)[0].encode("latin-1")
    bytewise = msh.decode("latin-1")
    naive = charset_field(bytewise)
    shifted = [f for f in bytewise.split(bytewise[3])[12:] if f.strip().upper() in CHARSETS]
    for name in dict.fromkeys([naive, default, *shifted]):
        if name is None:
            continue
        try:
            codec = codec_for(name)
            declared = charset_field(msh.decode(codec))
            named = codec_for(declared) if declared is not None else None
        except (LookupError, UnicodeDecodeError):
            continue
        if named != codec and not (named is None and name == default):
            continue
        try:
            text = data.decode(codec)
        except UnicodeDecodeError as exc:
            raise Undecodable(f"the message is not valid {codec} (MSH-18 {declared!r}): {exc}") from None
        lines = [line for line in _LINE_BREAK.split(text.strip()) if line.strip()]
        return "\r".join(lines) + "\r", codec, declared
    raise Undecodable(f"cannot tell the message's character set (MSH-18 read as {naive!r})")


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """One frame's content: skip CR/LF between frames, expect VT, read to FS (a CR after it is skipped later)."""
    while True:
        byte = await reader.readexactly(1)
        if byte == VT:
            break
        if byte not in b"\r\n \t":
            raise ValueError(f"expected <VT>, got 0x{byte[0]:02X}")
    try:
        data = await reader.readuntil(FS)
    except asyncio.LimitOverrunError:
        raise OverflowError(f"frame longer than {max_bytes} bytes") from None
    if len(data) - 1 > max_bytes:
        raise OverflowError(f"frame longer than {max_bytes} bytes")
    return data[:-1]


def escape(value: Any) -> str:
    return "" if value is None else str(value).translate(_ESCAPES)


def _field(value: Any) -> str:
    if isinstance(value, list):
        return "~".join(_field(repetition) for repetition in value)
    if isinstance(value, tuple):
        return "^".join(escape(component) for component in value).rstrip("^")
    return escape(value)


def segment(name: str, *fields: Any) -> str:
    """One segment: a list field is repetitions, a tuple components, ``None`` empty; trailing empties dropped."""
    texts = [_field(value) for value in fields]
    while texts and not texts[-1]:
        texts.pop()
    return "|".join([name, *texts])


# --- reading a request -------------------------------------------------------------------------------------


class Request:
    """Typed access to a parsed message; a missing or bad value is ``9001``, as on the SOAP side."""

    def __init__(self, message: hl7.Message) -> None:
        self.message = message

    def text(self, seg: str, field: int, component: int = 1, *, repetition: int = 1, occurrence: int = 1) -> str | None:
        try:
            value = self.message.extract_field(seg, occurrence, field, repetition, component, 1)
        except (KeyError, IndexError):
            return None
        return str(value).strip() or None

    def required(self, seg: str, field: int, component: int = 1, *, occurrence: int = 1) -> str:
        value = self.text(seg, field, component, occurrence=occurrence)
        if value is None:
            raise HisError("9001", f"缺少必填项 ({seg}-{field} is required)")
        return value

    def count(self, seg: str) -> int:
        return sum(1 for s in self.message if str(s[0]) == seg)

    def fen(self, seg: str, field: int, *, occurrence: int = 1, credit: bool = False) -> int:
        value = self.required(seg, field, occurrence=occurrence)
        if not _YUAN.fullmatch(value) or value.startswith("-") != credit:
            sign = "negative" if credit else "positive"
            raise HisError("9001", f"金额格式错误 ({seg}-{field} must be a {sign} yuan amount, got {value!r})")
        return abs(int(Decimal(value) * 100))

    def time(self, seg: str, field: int, *, occurrence: int = 1) -> dt.datetime:
        value = self.required(seg, field, occurrence=occurrence)
        match = _TS.fullmatch(value)
        if match is None:
            raise HisError("9001", f"时间格式错误 ({seg}-{field} must be YYYYMMDDHHMMSS[+ZZZZ], got {value!r})")
        moment = dt.datetime.strptime(match[1], "%Y%m%d%H%M%S")
        if match[2]:
            offset = dt.timedelta(hours=int(match[3]), minutes=int(match[4]))
            moment = moment.replace(tzinfo=dt.timezone(offset if match[2] == "+" else -offset))
        return moment

    def date(self, seg: str, field: int) -> dt.date:
        value = self.required(seg, field)
        try:
            return dt.datetime.strptime(value, "%Y%m%d").date()
        except ValueError:
            raise HisError("9001", f"日期格式错误 ({seg}-{field} must be YYYYMMDD, got {value!r})") from None

    def integer(self, seg: str, field: int, default: int) -> int:
        value = self.text(seg, field)
        if value is None:
            return default
        if not value.isdigit() or len(value) > 9:
            raise HisError("9001", f"数值格式错误 ({seg}-{field} must be a non-negative integer, got {value!r})")
        return int(value)

    def payment(self, kind: str) -> dict[str, Any]:
        """The FT1 payment line (FT1-6 = ``kind``): trade, amount, pay mode, channel trade number, pay time."""
        occurrence = self.ft1(kind)
        return {
            "trade_no": self.required("FT1", 2, occurrence=occurrence),
            "channel_trade_no": self.required("FT1", 3, occurrence=occurrence),
            "pay_time": self.time("FT1", 4, occurrence=occurrence),
            "pay_mode": self.required("FT1", 7, occurrence=occurrence),
            "amount_fen": self.fen("FT1", 11, occurrence=occurrence),
            "patient_id": self.required("PID", 3),
        }

    def ft1(self, kind: str) -> int:
        for occurrence in range(1, self.count("FT1") + 1):
            if self.text("FT1", 6, occurrence=occurrence) == kind:
                return occurrence
        raise HisError("9001", f"缺少 FT1 交易行 (no FT1 with FT1-6 = {kind})")


def _his_time(text: str | None) -> str | None:
    """``2025-03-14 09:29:58`` (state) → ``20250314092958`` (HL7 TS)."""
    return None if text is None else re.sub(r"[^0-9]", "", text)


def _yuan(fen: int | None) -> str | None:
    return None if fen is None else str((Decimal(int(fen)) / 100).quantize(Decimal("0.01")))


def _yn(flag: bool) -> str:
    return "Y" if flag else "N"


# --- operations --------------------------------------------------------------------------------------------

Handler = Callable[[HisState, Request], list[str]]


def _lock(state: HisState, req: Request) -> list[str]:
    r = state.lock_registration(req.required("SCH", 1), req.required("PID", 3), req.required("SCH", 5))
    return [segment("ZLK", r["lock_id"], _yuan(r["amount_fen"]), _his_time(r["expire_time"]))]


def _unlock(state: HisState, req: Request) -> list[str]:
    state.unlock_registration(req.required("SCH", 1), req.required("SCH", 2))
    return []


def _commit_registration(state: HisState, req: Request) -> list[str]:
    r = state.commit_registration(schedule_id=req.required("ZRG", 1), lock_id=req.text("ZRG", 2), **req.payment("PY"))
    return [segment("ZRC", r["receipt_no"], r["visit_no"])]


def _commit_charge(state: HisState, req: Request) -> list[str]:
    bills = [
        req.required("FT1", 7, occurrence=i)
        for i in range(1, req.count("FT1") + 1)
        if req.text("FT1", 6, occurrence=i) == "CG"
    ]
    r = state.commit_charge(bill_nos=bills, **req.payment("PY"))
    return [segment("ZRC", r["receipt_no"])]


def _commit_prepay(state: HisState, req: Request) -> list[str]:
    r = state.commit_prepay(inpatient_no=req.required("PV1", 19), **req.payment("DP"))
    return [segment("ZRC", r["receipt_no"], None, _yuan(r["balance_fen"]))]


def _apply_refund(state: HisState, req: Request) -> list[str]:
    line = req.ft1("CD")
    r = state.apply_refund(
        req.required("FT1", 2, occurrence=line),
        req.required("FT1", 3, occurrence=line),
        req.fen("FT1", 11, occurrence=line, credit=True),
        req.text("FT1", 8, occurrence=line),
    )
    return [segment("ZRF", r["his_refund_id"], _yuan(r["refundable_fen"]))]


def _writeback_refund(state: HisState, req: Request) -> list[str]:
    line = req.ft1("RF")
    r = state.writeback_refund(
        req.required("FT1", 2, occurrence=line),
        req.required("FT1", 3, occurrence=line),
        req.fen("FT1", 11, occurrence=line, credit=True),
        req.required("FT1", 7, occurrence=line),
        req.time("FT1", 4, occurrence=line),
    )
    return [segment("ZRC", r["receipt_no"])]


def _cancel_refund(state: HisState, req: Request) -> list[str]:
    line = req.ft1("RV")
    r = state.cancel_refund(
        req.required("FT1", 2, occurrence=line),
        req.required("FT1", 3, occurrence=line),
        req.text("FT1", 8, occurrence=line),
    )
    return [segment("ZRV", r["receipt_no"], _yuan(r["amount_fen"]))]


def _query_patient(state: HisState, req: Request) -> list[str]:
    p = state.query_patient(req.text("QPD", 3), req.text("QPD", 4), req.text("QPD", 5))
    ids = [(p["patient_id"], None, None, None, "PI")]
    if p["card_no"]:
        ids.append((p["card_no"], None, None, None, "PT"))
    birth = _his_time(p["birth_date"])
    return [segment("PID", "1", None, ids, None, (p["name"],), None, birth, p["gender"], *[None] * 4, p["phone"])]


def _unpaid_bills(state: HisState, req: Request) -> list[str]:
    return [
        segment("ZBL", b["bill_no"], b["dept_name"], _yuan(b["amount_fen"]), _his_time(b["created_at"]))
        for b in state.unpaid_bills(req.required("QPD", 3))
    ]


def _check_trade(state: HisState, req: Request) -> list[str]:
    r = state.check_trade(req.required("QPD", 3), req.required("QPD", 4), req.text("QPD", 5))
    return [segment("ZTC", _yn(r["found"]), r["receipt_no"], _yuan(r["amount_fen"]), r["status"])]


def _fetch_recon(state: HisState, req: Request) -> list[str]:
    r = state.recon(req.date("QPD", 3), req.integer("QPD", 4, 1), req.integer("QPD", 5, 500))
    out = [segment("ZRS", r["total"], _yn(r["has_more"]))]
    for rec in r["records"]:
        out.append(
            segment(
                "ZRD",
                rec["trade_no"],
                rec["kind"],
                rec["receipt_no"],
                _yuan(rec["amount_fen"]),
                rec["pay_mode"],
                rec["channel_trade_no"],
                rec["refund_no"],
                _his_time(rec["time"]),
                rec["refund_state"],
                rec["channel_refund_no"],
                _his_time(rec["written_back_at"]),
            )
        )
    return out


HANDLERS: dict[str, Handler] = {
    "registration.lock": _lock,
    "registration.unlock": _unlock,
    "registration.commit": _commit_registration,
    "charge.commit": _commit_charge,
    "prepay.commit": _commit_prepay,
    "refund.apply": _apply_refund,
    "refund.writeback": _writeback_refund,
    "refund.cancel": _cancel_refund,
    "patient.query": _query_patient,
    "bills.unpaid": _unpaid_bills,
    "trade.check": _check_trade,
    "recon.fetch": _fetch_recon,
}


def catalog_operation(req: Request) -> str | None:
    """Which catalog operation a message asks for, from MSH-9 and, for DFT and QBP, FT1-6 or QPD-1."""
    message_type = f"{req.text('MSH', 9, 1)}^{req.text('MSH', 9, 2)}"
    if message_type == "DFT^P03":
        return TRANSACTION_TYPES.get(req.text("FT1", 6) or "")
    if message_type == "QBP^Q11":
        return QUERIES.get(req.text("QPD", 1) or "")
    return MESSAGE_TYPES.get(message_type)


# --- answering ---------------------------------------------------------------------------------------------

_DROP = object()


class Reply:
    """The answer to one message, built from the request's MSH (sender and receiver swapped)."""

    def __init__(self, req: Request | None, control_id: str, charset: str | None) -> None:
        self.req = req
        self.control_id = control_id
        self.charset = charset

    def message(self, ack: str, segments: list[str], *, text: str = "成功", code: str | None = None) -> str:
        req = self.req
        get = (lambda *a: req.text(*a)) if req is not None else (lambda *a: None)
        query = get("MSH", 9, 1) == "QBP"
        kind = ("RSP", "K11", "RSP_K11") if query else ("ACK", get("MSH", 9, 2), "ACK")
        msh = [
            "^~\\&",
            get("MSH", 5),
            get("MSH", 6),
            get("MSH", 3),
            get("MSH", 4),
            clock.utcnow().astimezone(SHANGHAI).strftime("%Y%m%d%H%M%S"),
            None,
            kind,
            secrets.token_hex(10).upper(),
            "P",
            get("MSH", 12) or "2.4",
            *([None] * 5),
            self.charset,
        ]
        header = "MSH|^~\\&|" + segment("", *msh[1:])[1:]
        lines = [header, segment("MSA", ack, self.control_id, text, None, None, (code, text) if code else None)]
        if query and req is not None:
            status = {"AA": "OK" if segments else "NF"}.get(ack, ack)
            lines.append(segment("QAK", req.text("QPD", 2), status, (req.text("QPD", 1), req.text("QPD", 1, 2))))
        lines += segments
        return "\r".join(lines) + "\r"


class MllpListener:
    """An asyncio MLLP server answering catalog-shaped HL7 messages from one :class:`HisState`."""

    def __init__(
        self,
        state: HisState,
        faults: FaultBook | None = None,
        *,
        default_encoding: str = DEFAULT_ENCODING,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.state = state
        self.faults = faults if faults is not None else FaultBook()
        self.default_encoding = default_encoding
        self.max_frame_bytes = max_frame_bytes
        self.undecodable = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=self.max_frame_bytes + 1)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"mllp://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def open_connections(self) -> int:
        """Connections currently open to this listener (tests check that a client closed its socket)."""
        return len(self._connections)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                try:
                    frame = await read_frame(reader, self.max_frame_bytes)
                except asyncio.IncompleteReadError:
                    return
                except (OverflowError, ValueError) as exc:
                    log.warning("MLLP: %s; closing the connection", exc)
                    return
                answer = await self.answer(frame)
                if answer is _DROP:
                    writer.transport.abort()
                    return
                if isinstance(answer, bytes):
                    writer.write(VT + answer + FS + CR)
                    await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            self._connections.discard(writer)
            writer.transport.abort()

    async def answer(self, frame: bytes) -> bytes | object | None:
        """The encoded reply to one frame, ``None`` for no answer, or ``_DROP`` to drop the connection."""
        try:
            text, codec, charset = decode(frame, self.default_encoding)
        except Undecodable as exc:
            self.undecodable += 1
            msh = frame.split(b"\r")[0].split(b"\n")[0].decode("latin-1").split("|")
            control_id = msh[9] if len(msh) > 9 else ""
            reply = Reply(None, control_id, None).message("AR", [], text=f"undecodable: {exc}", code="9001")
            return reply.encode("ascii", "replace")
        try:
            req = Request(hl7.parse(text))
        except (hl7.exceptions.ParseException, ValueError, IndexError) as exc:
            reply = Reply(None, "", charset).message("AR", [], text=f"not HL7: {exc}", code="9001")
            return reply.encode(codec, "replace")
        reply = Reply(req, req.text("MSH", 10) or "", charset)
        operation = catalog_operation(req)
        message_type = f"{req.text('MSH', 9, 1)}^{req.text('MSH', 9, 2)}"
        rule = self._fault(operation, message_type)
        if rule is not None:
            log.info("fault %s on %s (rule %d)", rule.mode.value, operation or message_type, rule.id)
            if rule.latency_ms:
                await clock.sleep(rule.latency_ms / 1000)  # processing time: on the shared clock
            if rule.mode is FaultMode.refuse:
                return reply.message("AE", [], text="系统忙 (injected busy)", code=rule.error_code).encode(codec)
            if rule.mode in (FaultMode.error, FaultMode.http_500):
                return reply.message("AR", [], text="系统错误 (injected error)", code=rule.error_code).encode(codec)
        if operation is None:
            text = f"不支持的消息 (unsupported message {message_type})"
            return reply.message("AR", [], text=text, code="9001").encode(codec)
        try:
            segments = HANDLERS[operation](self.state, req)
            ack, note, code = "AA", "成功", None
        except HisError as exc:
            if operation == "patient.query" and exc.code == "1001":
                segments, ack, note, code = [], "AA", exc.message, None
            else:
                segments, ack, note, code = [], "AR", exc.message, exc.code
        except Exception as exc:
            log.exception("MLLP %s failed", operation)
            segments, ack, note, code = [], "AE", f"内部错误 ({exc})", "9999"
        if rule is not None and rule.mode is FaultMode.drop_reply:
            return _DROP
        if rule is not None and rule.mode is FaultMode.no_ack:
            return None
        if rule is not None and rule.mode is FaultMode.wrong_ack_id:
            reply.control_id = f"X{reply.control_id}"[:20]
        return reply.message(ack, segments, text=note, code=code).encode(codec, "replace")

    def _fault(self, operation: str | None, message_type: str) -> FaultRule | None:
        if operation is not None:
            rule = self.faults.take(operation)
            if rule is not None:
                return rule
        return self.faults.take(message_type)
