"""WeChat Pay trade bill (v3 ``tradebill``, and the v2 column sets still found in archives).

The file: a header row, data rows with every value prefixed by a backtick (so spreadsheets keep long numbers
as text), then a summary header (总交易单数, …) and one summary row. Columns are found by name; the v2 names
(总金额, 企业红包金额, 子商户号, 总交易额, 总退款金额) are aliases. A row is a refund when its 交易状态 is
REFUND or it carries a refund number; its amount is 退款金额, its time 退款成功时间 when the bill has it.

The summary is checked against the rows, field by field, only as far as the format surely promises (see
docs/RECONCILIATION.md, "Summary checks"); a mismatch fails the whole batch:

- 总交易单数: the number of detail rows.
- 退款总金额: the sum of 退款金额 (in fen).
- 应结订单总金额: the sum of the 应结订单金额 column. The published samples write 0.00 there on refund rows, so
  the column sum is also the payments' sum; the bill's page does not say the total is never netted of refunds,
  so "column sum − 退款总金额" is accepted too.
- 手续费总金额: exactly, in 10⁻⁵ yuan: the signed sum of 手续费 (refund rows return fees as negatives), or the
  payments' fees alone — the two readings the name allows.

充值券退款总金额, 订单总金额 and 申请退款总金额 are not checked: their relation to the rows is not documented, and
the amounts they would guard are reconciled row by row against the HIS and the platform anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from gateway.recon.normalize import (
    ParsedStatement,
    StatementError,
    StatementRow,
    StatementTally,
    StatementTotals,
    check_tally,
    collect,
)
from gateway.recon.statements.fields import Header, TimeCache, fee_units, fen, fen_abs, units_to_fen
from gateway.recon.statements.source import text_lines

SUMMARY_FIRST = "总交易单数"
WHAT = "wechat bill"


def _yuan5(units: int) -> Decimal:
    return Decimal(units).scaleb(-5)


def _fields(line: str) -> list[str]:
    line = line.rstrip("\r\n\t ")
    if line.startswith("`"):
        return line[1:].split(",`")
    return [v.strip().lstrip("`") for v in line.split(",")]


SUMMARY_AT = len(SUMMARY_FIRST) + 2
"""The summary header starts with 总交易单数, after a BOM or a backtick at most."""


def rows(
    data: bytes | str, *, merchant: str | None = None, tally: StatementTally | None = None
) -> Iterator[StatementRow]:
    """Every row of the bill, normalized, as the file streams; once the last row is out, the summary is checked
    (StatementError if it does not add up) and ``tally`` holds the rows' counts and sums."""
    tally = tally if tally is not None else StatementTally()
    lines = text_lines(data, WHAT)
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise StatementError(f"{WHAT}: empty file")
    h = Header(_fields(first), WHAT)
    i_time = h.need("交易时间")
    i_mch = h.need("商户号")
    i_sub = h.find("特约商户号", "子商户号")
    i_trade = h.need("微信订单号")
    i_out = h.need("商户订单号")
    i_state = h.need("交易状态")
    i_settled = h.need("应结订单金额", "总金额")
    i_total = h.find("订单金额", "总金额")
    i_refund_id = h.find("微信退款单号")
    i_out_refund = h.find("商户退款单号")
    i_refund = h.find("退款金额")
    i_refund_state = h.find("退款状态")
    i_refund_time = h.find("退款成功时间")
    i_fee = h.need("手续费")
    width = len(h.names)
    when = TimeCache()
    to_fen, to_fen_abs, to_fee = fen, fen_abs, fee_units

    settled_sum = refund_sum = fee_sum = pay_fee_sum = 0
    n_pay = n_refund = pay_fen = refund_rows_fen = row_fee_fen = 0
    summary_header: str | None = None
    n = 1
    for line in lines:
        n += 1
        if SUMMARY_FIRST in line[:SUMMARY_AT] and line.lstrip("\ufeff`").startswith(SUMMARY_FIRST):
            summary_header = line
            break
        if not line.strip():
            continue
        v = _fields(line)
        if len(v) < width:
            raise StatementError(f"{WHAT} line {n}: {len(v)} values for {width} columns")
        settled_sum += to_fen(v[i_settled])
        refund_fen = to_fen_abs(v[i_refund]) if i_refund is not None else 0
        refund_sum += refund_fen
        fee = to_fee(v[i_fee])
        fee_sum += fee
        out_refund = v[i_out_refund].strip() if i_out_refund is not None else ""
        state = v[i_state].strip().upper()
        sub = v[i_sub].strip() if i_sub is not None else ""
        mch = merchant or (sub if sub and sub != "0" else v[i_mch].strip())
        fee_fen = units_to_fen(fee)
        row_fee_fen += fee_fen
        if state == "REFUND" or (out_refund and out_refund != "0" and refund_fen):
            refund_state = v[i_refund_state].strip().lower() if i_refund_state is not None else "success"
            t = v[i_refund_time] if i_refund_time is not None and v[i_refund_time].strip() else v[i_time]
            refund_id = v[i_refund_id].strip() if i_refund_id is not None else ""
            n_refund += 1
            refund_rows_fen += refund_fen
            yield StatementRow(
                channel="wechat",
                merchant=mch,
                channel_trade_no=v[i_trade].strip(),
                out_trade_no=v[i_out].strip(),
                out_refund_no=out_refund or None,
                channel_refund_no=refund_id or None,
                type="refund",
                amount_fen=refund_fen,
                fee_fen=fee_fen,
                time=when(t),
                status=refund_state or "success",
            )
        else:
            amount = to_fen_abs(v[i_total] if i_total is not None and v[i_total].strip() else v[i_settled])
            n_pay += 1
            pay_fen += amount
            pay_fee_sum += fee
            yield StatementRow(
                channel="wechat",
                merchant=mch,
                channel_trade_no=v[i_trade].strip(),
                out_trade_no=v[i_out].strip(),
                out_refund_no=None,
                channel_refund_no=None,
                type="pay",
                amount_fen=amount,
                fee_fen=fee_fen,
                time=when(v[i_time]),
                status=state.lower() or "success",
            )
    tally.count, tally.pay_count, tally.refund_count = n_pay + n_refund, n_pay, n_refund
    tally.pay_fen, tally.refund_fen, tally.fee_fen = pay_fen, refund_rows_fen, row_fee_fen
    summary_values = next((line for line in lines if line.strip()), None)
    if summary_header is None or summary_values is None:
        raise StatementError(f"{WHAT}: no summary rows (总交易单数 …): the file may be cut short")
    _check_summary(summary_header, summary_values, tally, settled_sum, refund_sum, fee_sum, pay_fee_sum)


def _check_summary(
    header_line: str,
    values_line: str,
    tally: StatementTally,
    settled_sum: int,
    refund_sum: int,
    fee_sum: int,
    pay_fee_sum: int,
) -> None:
    sh = Header(_fields(header_line), f"{WHAT} summary")
    sv = _fields(values_line)
    if len(sv) < len(sh.names):
        raise StatementError(f"{WHAT} summary: {len(sv)} values for {len(sh.names)} columns")
    i_count = sh.need(SUMMARY_FIRST)
    try:
        count = int(sv[i_count].strip())
    except ValueError:
        raise StatementError(f"{WHAT} summary: count {sv[i_count]!r} is not a number") from None
    settled_total = fen(sv[sh.need("应结订单总金额", "总交易额")], "应结订单总金额")
    i_refund_total = sh.find("退款总金额", "总退款金额")
    refund_total = fen_abs(sv[i_refund_total], "退款总金额") if i_refund_total is not None else None
    i_fee_total = sh.find("手续费总金额")
    problems = []
    if settled_total not in (settled_sum, settled_sum - refund_sum):
        problems.append(
            f"应结订单总金额 {settled_total} fen announced, rows sum to {settled_sum} fen"
            + (f" ({settled_sum - refund_sum} net of refunds)" if refund_sum else "")
        )
    if refund_total is not None and refund_total != refund_sum:
        problems.append(f"退款总金额 {refund_total} fen announced, rows sum to {refund_sum} fen")
    if i_fee_total is not None:
        announced_fee = fee_units(sv[i_fee_total])
        if announced_fee not in (fee_sum, pay_fee_sum):
            problems.append(f"手续费总金额 {_yuan5(announced_fee)} announced, rows sum to {_yuan5(fee_sum)}")
    if problems:
        raise StatementError(f"{WHAT}: summary mismatch: " + "; ".join(problems))
    check_tally(StatementTotals(count=count), tally, WHAT)


def parse(data: bytes | str, *, merchant: str | None = None) -> ParsedStatement:
    """The whole bill in memory (tests, the CLI); StatementError if the file or its summary does not add up."""
    return collect(rows(data, merchant=merchant))
