"""Alipay trade statement (``alipay.data.dataservice.bill.downloadurl.query``, bill_type ``trade``).

A zip of two GBK CSVs: ``<account>_<yyyymmdd>_业务明细.csv`` (``#`` comment lines around a header and one row per
payment or refund, many values followed by a tab) and ``…_业务明细(汇总).csv`` (rows per store and one 合计 row).
Columns are found by name; full-width and ASCII parentheses are the same (订单金额（元） = 订单金额(元)), and the
shorter or longer column sets of other export versions parse the same.

Rows: 业务类型 交易 is a payment, its amount 订单金额. 业务类型 退款 is a refund: Alipay writes it with a negative
订单金额 (the refund's amount) and a negative 商家实收; the amount is made positive and the type says the
direction. (A refund row whose 订单金额 is not negative — some exports repeat the payment's amount there — takes
|商家实收|.) 服务费 is negative on payments (deducted); ``fee_fen`` is positive for a fee paid, negative for a fee
returned, as for WeChat.

Checked, only as far as the format surely promises (docs/RECONCILIATION.md, "Summary checks"); a mismatch fails
the batch:

- the detail's closing lines ``#交易合计：N笔，商家实收共X元，…`` and ``#退款合计：M笔，商家实收退款共-Y元，…``: the
  counts of 交易 and 退款 rows, and the sums of their 商家实收 (the lines name that column). Older exports say
  ``交易金额共`` without naming a column: only their counts are checked.
- the summary's 合计 row: 交易订单总笔数 and 退款订单总笔数 (counts), 商家实收 (the signed column sum: net of
  refunds), and 订单金额 as either reading Alipay leaves open: the signed column sum (net of refunds) or the
  payments' sum (gross). 服务费, 分润 and 实收净额 are not checked.
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Iterator

from gateway.recon.normalize import ParsedStatement, StatementError, StatementRow, StatementTally, collect
from gateway.recon.statements.fields import Header, TimeCache, fee_fen, fen
from gateway.recon.statements.source import ZIP_MAGIC, open_zip, text_lines, zip_lines, zip_name

WHAT = "alipay statement"
_AMOUNT = r"([-+]?[\d,]*\.?\d+)"
_PAY_COUNT_RE = re.compile(r"交易合计[：:]\s*(\d+)\s*笔")
_REFUND_COUNT_RE = re.compile(r"退款合计[：:]\s*(\d+)\s*笔")
_PAY_NET_RE = re.compile(r"商家实收共\s*" + _AMOUNT + r"\s*元")
_REFUND_NET_RE = re.compile(r"商家实收退款共\s*" + _AMOUNT + r"\s*元")
_ACCOUNT_SUFFIX = "0156"
"""The ``#账号`` line gives the PID with 0156 appended (as the bill's download URL does)."""


def _norm(name: str) -> str:
    return name.strip().replace("（", "(").replace("）", ")")


def _split(line: str) -> list[str]:
    if '"' in line:
        return next(csv.reader([line]))
    return line.split(",")


def _account(line: str) -> str:
    account = line.split("[", 1)[-1].rstrip("]").strip()
    if len(account) == 20 and account.startswith("2088") and account.endswith(_ACCOUNT_SUFFIX):
        return account[:16]
    return account


def _amount(text: str, what: str) -> int:
    return fen(text.replace(",", ""), what)


class _Announced:
    """What the detail's ``#`` closing lines announce; ``None`` where a line does not say."""

    def __init__(self) -> None:
        self.pay_count: int | None = None
        self.refund_count: int | None = None
        self.pay_net: int | None = None
        self.refund_net: int | None = None

    def read(self, line: str) -> None:
        if m := _PAY_COUNT_RE.search(line):
            self.pay_count = int(m.group(1))
            if n := _PAY_NET_RE.search(line):
                self.pay_net = _amount(n.group(1), "#交易合计 商家实收")
        if m := _REFUND_COUNT_RE.search(line):
            self.refund_count = int(m.group(1))
            if n := _REFUND_NET_RE.search(line):
                self.refund_net = _amount(n.group(1), "#退款合计 商家实收退款")

    @property
    def any(self) -> bool:
        return self.pay_count is not None or self.refund_count is not None


class _Sums:
    """Column sums of the detail rows that the checks compare (fen, signed as written)."""

    def __init__(self, pay_total: int, pay_net: int, refund_total: int, refund_net: int) -> None:
        self.pay_total, self.pay_net, self.refund_total, self.refund_net = pay_total, pay_net, refund_total, refund_net


def _members(data: bytes) -> tuple[zipfile.ZipFile, zipfile.ZipInfo, zipfile.ZipInfo | None]:
    archive = open_zip(data, WHAT)
    files = {zip_name(i): i for i in archive.infolist() if not i.is_dir()}
    detail = [n for n in files if n.endswith("业务明细.csv")]
    summary = [n for n in files if n.endswith("业务明细(汇总).csv")]
    if len(detail) != 1:
        archive.close()
        raise StatementError(f"{WHAT}: expected one 业务明细.csv, found {sorted(files)}")
    return archive, files[detail[0]], files[summary[0]] if summary else None


def rows(
    data: bytes | str, *, merchant: str | None = None, tally: StatementTally | None = None
) -> Iterator[StatementRow]:
    """Every row of the statement (a zip, or a bare detail CSV), as it streams; once the last row is out, the
    closing lines and the summary file are checked (StatementError if they do not add up) and ``tally`` holds
    the rows' counts and sums."""
    tally = tally if tally is not None else StatementTally()
    if isinstance(data, str) or not data.startswith(ZIP_MAGIC):
        yield from _detail(text_lines(data, WHAT), merchant, tally, None)
        return
    archive, detail, summary = _members(data)
    with archive:
        summary_member = (archive, summary) if summary is not None else None
        yield from _detail(zip_lines(archive, detail, WHAT), merchant, tally, summary_member)


def _detail(
    lines: Iterator[str],
    merchant: str | None,
    tally: StatementTally,
    summary: tuple[zipfile.ZipFile, zipfile.ZipInfo] | None,
) -> Iterator[StatementRow]:
    pid = merchant or ""
    header: Header | None = None
    announced = _Announced()
    when = TimeCache()
    to_fen, to_fee = fen, fee_fen
    i_trade = i_out = i_kind = i_done = i_total = i_net = 0
    i_created = i_refund_no = i_fee = None
    width = 0
    n_pay = n_refund = pay_fen = refund_fen = fee_sum = 0
    pay_total = pay_net = refund_total = refund_net = 0
    n = 0
    for raw in lines:
        n += 1
        line = raw.strip()
        if not line:
            continue
        if line[0] == "#":
            if not pid and line.startswith("#账号"):
                pid = _account(line)
            elif "合计" in line:
                announced.read(line)
            continue
        if header is None:
            header = Header([_norm(c) for c in _split(line)], WHAT)
            i_trade, i_out = header.need("支付宝交易号"), header.need("商户订单号")
            i_kind, i_done = header.need("业务类型"), header.need("完成时间")
            i_total, i_net = header.need("订单金额(元)"), header.need("商家实收(元)")
            i_created = header.find("创建时间")
            i_refund_no = header.find("退款批次号/请求号", "退款批次号", "退款请求号")
            i_fee = header.find("服务费(元)")
            width = len(header.names)
            continue
        v = _split(line)
        if len(v) < width:
            raise StatementError(f"{WHAT} line {n}: {len(v)} values for {width} columns")
        total = to_fen(v[i_total], "订单金额")
        net = to_fen(v[i_net], "商家实收")
        kind = v[i_kind].strip()
        fee = -to_fee(v[i_fee]) if i_fee is not None else 0
        fee_sum += fee
        t = v[i_done].strip() or (v[i_created].strip() if i_created is not None else "")
        trade_no, out_trade_no = v[i_trade].strip(), v[i_out].strip()
        if kind == "退款" or net < 0:
            refund_no = v[i_refund_no].strip() if i_refund_no is not None else ""
            amount = -total if total < 0 else abs(net)
            n_refund += 1
            refund_fen += amount
            refund_total += total
            refund_net += net
            yield StatementRow(
                channel="alipay",
                merchant=pid,
                channel_trade_no=trade_no,
                out_trade_no=out_trade_no,
                out_refund_no=refund_no or None,
                channel_refund_no=None,
                type="refund",
                amount_fen=amount,
                fee_fen=fee,
                time=when(t),
                status="success",
            )
        else:
            amount = abs(total)
            n_pay += 1
            pay_fen += amount
            pay_total += total
            pay_net += net
            yield StatementRow(
                channel="alipay",
                merchant=pid,
                channel_trade_no=trade_no,
                out_trade_no=out_trade_no,
                out_refund_no=None,
                channel_refund_no=None,
                type="pay",
                amount_fen=amount,
                fee_fen=fee,
                time=when(t),
                status="success",
            )
    if header is None:
        raise StatementError(f"{WHAT}: no header row (支付宝交易号, …)")
    tally.count, tally.pay_count, tally.refund_count = n_pay + n_refund, n_pay, n_refund
    tally.pay_fen, tally.refund_fen, tally.fee_fen = pay_fen, refund_fen, fee_sum
    sums = _Sums(pay_total, pay_net, refund_total, refund_net)
    if not announced.any and summary is None:
        raise StatementError(f"{WHAT}: neither 交易合计 lines nor a summary file: the file may be cut short")
    problems = _check_closing_lines(announced, tally, sums)
    if summary is not None:
        archive, info = summary
        problems += _check_summary(zip_lines(archive, info, f"{WHAT} summary"), tally, sums)
    if problems:
        raise StatementError(f"{WHAT}: summary mismatch: " + "; ".join(problems))


def _check_closing_lines(announced: _Announced, tally: StatementTally, sums: _Sums) -> list[str]:
    problems = []
    if announced.pay_count is not None and announced.pay_count != tally.pay_count:
        problems.append(f"#交易合计 {announced.pay_count} payments announced, {tally.pay_count} parsed")
    if announced.refund_count is not None and announced.refund_count != tally.refund_count:
        problems.append(f"#退款合计 {announced.refund_count} refunds announced, {tally.refund_count} parsed")
    if announced.pay_net is not None and announced.pay_net != sums.pay_net:
        problems.append(f"#交易合计 商家实收 {announced.pay_net} fen announced, rows sum to {sums.pay_net} fen")
    if announced.refund_net is not None and abs(announced.refund_net) != abs(sums.refund_net):
        problems.append(
            f"#退款合计 商家实收退款 {announced.refund_net} fen announced, rows sum to {sums.refund_net} fen"
        )
    return problems


def _check_summary(lines: Iterator[str], tally: StatementTally, sums: _Sums) -> list[str]:
    header: Header | None = None
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        v = [c.strip() for c in _split(line)]
        if header is None:
            header = Header([_norm(c) for c in v], f"{WHAT} summary")
            continue
        if v[0] != "合计":
            continue
        if len(v) < len(header.names):
            return [f"the summary's 合计 row has {len(v)} values for {len(header.names)} columns"]
        try:
            pay_count = int(v[header.need("交易订单总笔数")] or 0)
            refund_count = int(v[header.need("退款订单总笔数")] or 0)
        except ValueError:
            return ["the summary's 合计 counts are not numbers"]
        total = _amount(v[header.need("订单金额(元)")], "汇总 订单金额")
        net = _amount(v[header.need("商家实收(元)")], "汇总 商家实收")
        problems = []
        if pay_count != tally.pay_count:
            problems.append(f"交易订单总笔数 {pay_count} announced, {tally.pay_count} payments parsed")
        if refund_count != tally.refund_count:
            problems.append(f"退款订单总笔数 {refund_count} announced, {tally.refund_count} refunds parsed")
        if net != sums.pay_net + sums.refund_net:
            problems.append(f"商家实收 {net} fen announced, rows sum to {sums.pay_net + sums.refund_net} fen")
        column_sum = sums.pay_total + sums.refund_total
        if total not in (column_sum, sums.pay_total):
            problems.append(
                f"订单金额 {total} fen announced, rows sum to {column_sum} fen (payments alone {sums.pay_total} fen)"
            )
        return problems
    return ["the summary file has no 合计 row"]


def parse(data: bytes | str, *, merchant: str | None = None) -> ParsedStatement:
    """The whole statement in memory (tests, the CLI); StatementError if it does not add up."""
    return collect(rows(data, merchant=merchant))
