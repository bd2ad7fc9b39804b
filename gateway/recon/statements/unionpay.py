"""UnionPay online-payment reconciliation file (file transfer, txnType 76): a zip whose ``INN<yymmdd>88ZM_<merId>``
file lists the day's settled transactions as fixed-width records (全渠道商户对账文件, 一般交易流水).

The record layout is UnionPay's: 42 fields of fixed byte widths in GBK, one space between fields (the widths
are those of UnionPay's SDK demo ``parseZMFile``). Byte widths, so each line is cut as bytes before decoding: a
Chinese character in a field takes two. Signed amounts are ``C`` (to the merchant) or ``D`` (from it) and 12
digits of fen. The settlement day ends at 23:00, so a payment after 23:00 is on the next day's file.

Rows: a consume (交易类型 01) is a payment keyed by its order id; a refund (04) or a consume cancel (31) is a
refund keyed by its own order id (our out_refund_no), its original trade taken from 原始交易订单号 and
原交易查询流水号. The file carries no trailer, so what is checked is what each record says of itself, every
record: its length; 商户代码 the merchant of the file name; 清算净额 = 结算金额 + 商户手续费 (signed); 结算金额 =
交易金额 − 优惠金额; the direction of the money agrees with the transaction type. One record that does not add up
fails the whole file.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
import zlib
from collections.abc import Iterable

from gateway.recon.normalize import ParsedStatement, StatementError, StatementRow, StatementTotals, check_totals
from gateway.recon.statements.fields import TimeCache

FIELDS = (
    ("交易代码", 3), ("代理机构标识码", 11), ("发送机构标识码", 11), ("系统跟踪号", 6), ("交易传输时间", 10),
    ("帐号", 19), ("交易金额", 12), ("商户类别", 4), ("终端类型", 2), ("查询流水号", 21), ("支付方式（旧）", 2),
    ("商户订单号", 32), ("支付卡类型", 2), ("原始交易的系统跟踪号", 6), ("原始交易日期时间", 10), ("商户手续费", 13),
    ("结算金额", 13), ("支付方式", 4), ("集团商户代码", 15), ("交易类型", 2), ("交易子类", 2), ("业务类型", 6),
    ("帐号类型", 2), ("账单类型", 4), ("账单号码", 32), ("交互方式", 1), ("原交易查询流水号", 21), ("商户代码", 15),
    ("分账入账方式", 1), ("二级商户代码", 15), ("二级商户简称", 32), ("二级商户分账入账金额", 13), ("清算净额", 13),
    ("终端号", 8), ("商户自定义域", 32), ("优惠金额", 13), ("发票金额", 13), ("分期付款附加手续费", 12),
    ("分期付款期数", 2), ("交易介质", 1), ("原始交易订单号", 32), ("保留使用", 98),
)  # fmt: skip
RECORD_BYTES = sum(w for _, w in FIELDS) + len(FIELDS) - 1
_SPANS: dict[str, tuple[int, int]] = {}
_at = 0
for _name, _width in FIELDS:
    _SPANS[_name] = (_at, _at + _width)
    _at += _width + 1
ZM_NAME = re.compile(r"INN(\d{6})\d\dZM_(\w+)$")
PAYMENT = b"01"
REFUNDS = frozenset({b"04", b"31"})


def _text(line: bytes, span: tuple[int, int], name: str, n: int) -> str:
    """An identifier field: ASCII in every record (ids, codes, times); anything else fails the file."""
    try:
        return line[span[0] : span[1]].decode("ascii").strip()
    except UnicodeDecodeError:
        raise StatementError(f"unionpay file record {n}: {name} is not ASCII") from None


def _signed(raw: bytes, name: str, n: int) -> int:
    """``C``/``D`` and 12 digits of fen, as a signed number (C: to the merchant)."""
    value = raw.strip()
    if len(value) != 13 or value[:1] not in (b"C", b"D") or not value[1:].isdigit():
        raise StatementError(f"unionpay file record {n}: {name} {value!r} is not C/D and 12 digits of fen")
    amount = int(value[1:])
    return amount if value[:1] == b"C" else -amount


def _fen(raw: bytes, name: str, n: int) -> int:
    value = raw.strip()
    if not value.isdigit():
        raise StatementError(f"unionpay file record {n}: {name} {value!r} is not a number of fen")
    return int(value)


def _zm_member(archive: zipfile.ZipFile) -> tuple[dt.date, str, str]:
    """(settlement day, merId, member name) of the zip's ZM file: its name carries the day, which the records'
    MMDDhhmmss times need for their year."""
    found = [(ZM_NAME.search(n), n) for n in archive.namelist()]
    zm = [(m, n) for m, n in found if m is not None]
    if len(zm) != 1:
        raise StatementError(f"unionpay file: expected one INN…ZM_<merId> file, found {archive.namelist()}")
    match, name = zm[0]
    try:
        day = dt.datetime.strptime(match.group(1), "%y%m%d").date()
    except ValueError:
        raise StatementError(f"unionpay file: {name} does not name a day") from None
    return day, match.group(2), name


def _record_time(mmddhhmmss: str, day: dt.date, n: int) -> str:
    """A record's MMDDhhmmss in the year that puts it at most a day after the settlement day (the file of 1
    January holds 31 December's late trades)."""
    if len(mmddhhmmss) != 10 or not mmddhhmmss.isdigit():
        raise StatementError(f"unionpay file record {n}: 交易传输时间 {mmddhhmmss!r} is not MMDDhhmmss")
    for year in (day.year, day.year - 1):
        try:
            at = dt.date(year, int(mmddhhmmss[:2]), int(mmddhhmmss[2:4]))
        except ValueError:
            continue
        if at <= day + dt.timedelta(days=1):
            h, m, sec = mmddhhmmss[4:6], mmddhhmmss[6:8], mmddhhmmss[8:]
            return f"{at.isoformat()} {h}:{m}:{sec}"
    raise StatementError(f"unionpay file record {n}: 交易传输时间 {mmddhhmmss!r} is not a time near {day}")


def parse(data: bytes | str, *, merchant: str | None = None) -> ParsedStatement:
    """Every record of the zip as downloaded, normalized; records are read one at a time from the compressed
    member, so a busy day is never held in memory twice."""
    if isinstance(data, str) or not data.startswith(b"PK"):
        raise StatementError("unionpay file: give the zip as downloaded (its ZM file's name carries the date)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            day, file_merchant, name = _zm_member(archive)
            with archive.open(name) as zm:
                return _records(zm, day, file_merchant, merchant or file_merchant)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise StatementError(f"unionpay file: not a sound zip: {exc}") from None


def _records(zm: Iterable[bytes], day: dt.date, file_merchant: str, mer_id: str) -> ParsedStatement:
    sp = _SPANS
    s_mer, s_type, s_amount = sp["商户代码"], sp["交易类型"], sp["交易金额"]
    s_settle, s_fee, s_net, s_discount = sp["结算金额"], sp["商户手续费"], sp["清算净额"], sp["优惠金额"]
    s_time, s_query, s_order = sp["交易传输时间"], sp["查询流水号"], sp["商户订单号"]
    s_orig_query, s_orig_order = sp["原交易查询流水号"], sp["原始交易订单号"]
    shortest, merchant_bytes = sp["交易介质"][1], file_merchant.encode("ascii")
    times: dict[bytes, dt.datetime] = {}
    when = TimeCache()
    rows: list[StatementRow] = []
    for n, raw in enumerate(zm, start=1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        if not shortest <= len(line) <= RECORD_BYTES:
            raise StatementError(f"unionpay file record {n}: {len(line)} bytes, a record has {RECORD_BYTES}")
        if line[s_mer[0] : s_mer[1]].strip() != merchant_bytes:
            row_merchant = line[s_mer[0] : s_mer[1]].strip()
            raise StatementError(f"unionpay file record {n}: merchant {row_merchant!r} in the file of {file_merchant}")
        txn_type = line[s_type[0] : s_type[1]]
        if txn_type != PAYMENT and txn_type not in REFUNDS:
            shown = txn_type.decode("ascii", "replace")
            raise StatementError(f"unionpay file record {n}: txnType {shown!r} is neither consume nor refund")
        amount = _fen(line[s_amount[0] : s_amount[1]], "交易金额", n)
        settle = _signed(line[s_settle[0] : s_settle[1]], "结算金额", n)
        fee = _signed(line[s_fee[0] : s_fee[1]], "商户手续费", n)
        net = _signed(line[s_net[0] : s_net[1]], "清算净额", n)
        discount = abs(_signed(line[s_discount[0] : s_discount[1]], "优惠金额", n))
        if (
            net != settle + fee
            or abs(settle) != amount - discount
            or (settle and (txn_type == PAYMENT) != (settle > 0))
        ):
            problems = []
            if net != settle + fee:
                problems.append(f"清算净额 {net} is not 结算金额 {settle} + 手续费 {fee}")
            if abs(settle) != amount - discount:
                problems.append(f"结算金额 {abs(settle)} is not 交易金额 {amount} − 优惠金额 {discount}")
            if settle and (txn_type == PAYMENT) != (settle > 0):
                direction = "to" if settle > 0 else "from"
                problems.append(f"money {direction} the merchant on a txnType {txn_type.decode('ascii', 'replace')}")
            raise StatementError(f"unionpay file record {n}: " + "; ".join(problems))
        raw_time = line[s_time[0] : s_time[1]]
        t = times.get(raw_time)
        if t is None:
            t = times[raw_time] = when(_record_time(raw_time.decode("ascii", "replace"), day, n))
        query_id, order_id = _text(line, s_query, "查询流水号", n), _text(line, s_order, "商户订单号", n)
        if txn_type == PAYMENT:
            rows.append(
                StatementRow(
                    channel="unionpay",
                    merchant=mer_id,
                    channel_trade_no=query_id,
                    out_trade_no=order_id,
                    out_refund_no=None,
                    channel_refund_no=None,
                    type="pay",
                    amount_fen=amount,
                    fee_fen=-fee,
                    time=t,
                    status="success",
                )
            )
        else:
            rows.append(
                StatementRow(
                    channel="unionpay",
                    merchant=mer_id,
                    channel_trade_no=_text(line, s_orig_query, "原交易查询流水号", n),
                    out_trade_no=_text(line, s_orig_order, "原始交易订单号", n),
                    out_refund_no=order_id,
                    channel_refund_no=query_id,
                    type="refund",
                    amount_fen=amount,
                    fee_fen=-fee,
                    time=t,
                    status="success",
                )
            )
    parsed = ParsedStatement(rows, StatementTotals(count=len(rows)))
    check_totals(parsed, "unionpay file")
    return parsed
