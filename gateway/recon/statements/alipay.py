"""Alipay trade statement (``alipay.data.dataservice.bill.downloadurl.query``, bill_type ``trade``).

A zip of two GBK CSVs: ``<pid>_<yyyymmdd>_业务明细.csv`` (``#`` comment lines around a header and one row per
payment or refund, each value followed by a tab) and ``…_业务明细(汇总).csv`` (one 合计 row). Columns are found
by name; full-width and ASCII parentheses are the same (订单金额（元） = 订单金额(元)), and the shorter column
sets of older exports parse the same. Refund rows (业务类型 退款) carry a negative 商家实收; the amount is made
positive and the type says the direction. 服务费 is negative on payments (deducted); ``fee_fen`` is positive for
a fee paid, negative for a fee returned, as for WeChat.

Checked before anything is used: the detail's ``#交易合计：N笔，退款合计：M笔`` line, and the summary's counts, 订单金额
(payments) and 商家实收 (net). A mismatch fails the batch.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile

from gateway.recon.normalize import ParsedStatement, StatementError, StatementRow, StatementTotals, check_totals
from gateway.recon.statements.fields import Header, TimeCache, fee_fen, fen, fen_abs

_TOTALS_RE = re.compile(r"交易合计[：:]\s*(\d+)\s*笔[，,]\s*退款合计[：:]\s*(\d+)\s*笔")


def _zip_name(info: zipfile.ZipInfo) -> str:
    """Real statements name their CSVs in GBK without the UTF-8 flag; Python reads those names as cp437."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("gbk")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError:
        return data.decode("utf-8")


def _norm(name: str) -> str:
    return name.strip().replace("（", "(").replace("）", ")")


def _split(line: str) -> list[str]:
    if '"' in line:
        return next(csv.reader([line]))
    return line.split(",")


def unpack(data: bytes) -> tuple[str, str | None]:
    """The detail CSV and the summary CSV (None when given a bare detail CSV) as text."""
    if not data.startswith(b"PK"):
        return _decode(data), None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            files = {_zip_name(i): archive.read(i) for i in archive.infolist() if not i.is_dir()}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise StatementError(f"alipay statement: not a sound zip: {exc}") from None
    detail = [n for n in files if n.endswith("业务明细.csv")]
    summary = [n for n in files if n.endswith("业务明细(汇总).csv")]
    if len(detail) != 1:
        raise StatementError(f"alipay statement: expected one 业务明细.csv, found {sorted(files)}")
    return _decode(files[detail[0]]), _decode(files[summary[0]]) if summary else None


def parse(data: bytes | str, *, merchant: str | None = None) -> ParsedStatement:
    detail, summary = (data, None) if isinstance(data, str) else unpack(data)
    pid = merchant or ""
    header: Header | None = None
    announced: tuple[int, int] | None = None
    rows: list[StatementRow] = []
    net_sum = 0
    when = TimeCache()
    to_fen, to_fen_abs, to_fee = fen, fen_abs, fee_fen
    cols: dict[str, int | None] = {}
    width = 0
    for n, raw in enumerate(detail.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if not pid and line.startswith("#账号"):
                pid = line.split("[", 1)[-1].rstrip("]").strip()
            m = _TOTALS_RE.search(line)
            if m:
                announced = (int(m.group(1)), int(m.group(2)))
            continue
        if header is None:
            header = Header([_norm(c) for c in _split(line)], "alipay statement")
            cols = {
                "trade": header.need("支付宝交易号"),
                "out": header.need("商户订单号"),
                "kind": header.need("业务类型"),
                "done": header.need("完成时间"),
                "created": header.find("创建时间"),
                "total": header.need("订单金额(元)"),
                "net": header.need("商家实收(元)"),
                "refund_no": header.find("退款批次号/请求号", "退款批次号", "退款请求号"),
                "fee": header.find("服务费(元)"),
            }
            width = len(header.names)
            continue
        v = _split(line)
        if len(v) < width:
            raise StatementError(f"alipay statement line {n}: {len(v)} values for {width} columns")
        i_fee, i_refund_no = cols["fee"], cols["refund_no"]
        net = to_fen(v[cols["net"]])  # type: ignore[index]
        net_sum += net
        kind = v[cols["kind"]].strip()  # type: ignore[index]
        fee = -to_fee(v[i_fee]) if i_fee is not None else 0
        t = v[cols["done"]].strip() or (v[cols["created"]].strip() if cols["created"] is not None else "")  # type: ignore[index]
        trade_no, out_trade_no = v[cols["trade"]].strip(), v[cols["out"]].strip()  # type: ignore[index]
        if kind == "退款" or net < 0:
            refund_no = v[i_refund_no].strip() if i_refund_no is not None else ""
            rows.append(
                StatementRow(
                    "alipay",
                    pid,
                    trade_no,
                    out_trade_no,
                    refund_no or None,
                    None,
                    "refund",
                    abs(net),
                    fee,
                    when(t),
                    "success",
                )
            )
        else:
            amount = to_fen_abs(v[cols["total"]])  # type: ignore[index]
            rows.append(
                StatementRow("alipay", pid, trade_no, out_trade_no, None, None, "pay", amount, fee, when(t), "success")
            )
    if header is None:
        raise StatementError("alipay statement: no header row (支付宝交易号, …)")
    pay_count = sum(r.type == "pay" for r in rows)
    if announced is None and summary is None:
        raise StatementError("alipay statement: neither 交易合计 line nor summary file: the file may be cut short")
    totals = StatementTotals(
        count=len(rows) if announced is None else sum(announced),
        pay_count=announced[0] if announced else None,
        refund_count=announced[1] if announced else None,
    )
    parsed = ParsedStatement(rows, totals)
    check_totals(parsed, "alipay statement")
    if summary is not None:
        _check_summary(summary, parsed, pay_count, net_sum)
    return parsed


def _check_summary(text: str, parsed: ParsedStatement, pay_count: int, net_sum: int) -> None:
    header: Header | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        v = [c.strip() for c in _split(line)]
        if header is None:
            header = Header([_norm(c) for c in v], "alipay summary")
            continue
        if v[0] != "合计":
            continue
        refund_count = len(parsed.rows) - pay_count
        problems = []
        pairs = [
            ("交易订单总笔数", int(v[header.need("交易订单总笔数")] or 0), pay_count),
            ("退款订单总笔数", int(v[header.need("退款订单总笔数")] or 0), refund_count),
            ("订单金额", fen(v[header.need("订单金额(元)")]), parsed.pay_fen),
            ("商家实收", fen(v[header.need("商家实收(元)")]), net_sum),
        ]
        for name, announced, actual in pairs:
            if announced != actual:
                problems.append(f"{name} {announced} announced, rows give {actual}")
        if problems:
            raise StatementError("alipay statement: summary mismatch: " + "; ".join(problems))
        return
    raise StatementError("alipay statement: the summary file has no 合计 row")
