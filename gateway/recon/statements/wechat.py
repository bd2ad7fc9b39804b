"""WeChat Pay trade bill (v3 ``tradebill``, and the v2 column sets still found in archives).

The file: a header row, data rows with every value prefixed by a backtick (so spreadsheets keep long numbers
as text), then a summary header (总交易单数, …) and one summary row. Columns are found by name; the v2 names
(总金额, 企业红包金额, 子商户号, 总交易额, 总退款金额) are aliases. A row is a refund when its 交易状态 is
REFUND or it carries a refund number; its amount is 退款金额, its time 退款成功时间 when the bill has it.
The summary is checked against the rows: row count, 应结订单总金额 and 退款总金额 as column sums in fen, and
手续费总金额 exactly (5 decimals). A mismatch fails the whole batch.
"""

from __future__ import annotations

import gzip
from decimal import Decimal

from gateway.recon.normalize import ParsedStatement, StatementError, StatementRow, StatementTotals, check_totals
from gateway.recon.statements.fields import Header, TimeCache, fee_units, fen, fen_abs, units_to_fen

SUMMARY_FIRST = "总交易单数"


def _yuan5(units: int) -> Decimal:
    return Decimal(units).scaleb(-5)


def _fields(line: str) -> list[str]:
    line = line.rstrip("\r\n\t ")
    if line.startswith("`"):
        return line[1:].split(",`")
    return [v.strip().lstrip("`") for v in line.split(",")]


def decode(data: bytes) -> str:
    """The bill as text: gunzipped if it is the download, BOM dropped; UTF-8, with GB18030 for old exports."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030")


def parse(data: bytes | str, *, merchant: str | None = None) -> ParsedStatement:
    """Every row of the bill, normalized; raises StatementError if the file or its summary does not add up."""
    text = data if isinstance(data, str) else decode(data)
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise StatementError("wechat bill: empty file")
    h = Header(_fields(lines[0]), "wechat bill")
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

    rows: list[StatementRow] = []
    settled_sum = refund_sum = fee_sum = 0
    end = len(lines)
    for n in range(1, len(lines)):
        line = lines[n]
        if line.startswith(SUMMARY_FIRST) or line.lstrip("\ufeff`").startswith(SUMMARY_FIRST):
            end = n
            break
        if not line.strip():
            continue
        v = _fields(line)
        if len(v) < width:
            raise StatementError(f"wechat bill line {n + 1}: {len(v)} values for {width} columns")
        settled_sum += to_fen(v[i_settled])
        refund_fen = to_fen_abs(v[i_refund]) if i_refund is not None else 0
        refund_sum += refund_fen
        fee = to_fee(v[i_fee])
        fee_sum += fee
        out_refund = v[i_out_refund].strip() if i_out_refund is not None else ""
        state = v[i_state].strip().upper()
        sub = v[i_sub].strip() if i_sub is not None else ""
        mch = merchant or (sub if sub and sub != "0" else v[i_mch].strip())
        if state == "REFUND" or (out_refund and out_refund != "0" and refund_fen):
            refund_state = v[i_refund_state].strip().lower() if i_refund_state is not None else "success"
            t = v[i_refund_time] if i_refund_time is not None and v[i_refund_time].strip() else v[i_time]
            refund_id = v[i_refund_id].strip() if i_refund_id is not None else ""
            rows.append(
                StatementRow(
                    "wechat",
                    mch,
                    v[i_trade].strip(),
                    v[i_out].strip(),
                    out_refund or None,
                    refund_id or None,
                    "refund",
                    refund_fen,
                    units_to_fen(fee),
                    when(t),
                    refund_state or "success",
                )
            )
        else:
            amount = to_fen_abs(v[i_total] if i_total is not None and v[i_total].strip() else v[i_settled])
            rows.append(
                StatementRow(
                    "wechat",
                    mch,
                    v[i_trade].strip(),
                    v[i_out].strip(),
                    None,
                    None,
                    "pay",
                    amount,
                    units_to_fen(fee),
                    when(v[i_time]),
                    state.lower() or "success",
                )
            )
    if end >= len(lines) - 1:
        raise StatementError("wechat bill: no summary rows (总交易单数 …): the file may be cut short")
    sh = Header(_fields(lines[end]), "wechat bill summary")
    sv = _fields(lines[end + 1])
    if len(sv) < len(sh.names):
        raise StatementError(f"wechat bill summary: {len(sv)} values for {len(sh.names)} columns")
    try:
        count = int(sv[sh.need(SUMMARY_FIRST)].strip())
    except ValueError:
        raise StatementError(f"wechat bill summary: count {sv[0]!r} is not a number") from None
    settled_total = fen(sv[sh.need("应结订单总金额", "总交易额")])
    i_refund_total = sh.find("退款总金额", "总退款金额")
    refund_total = fen_abs(sv[i_refund_total]) if i_refund_total is not None else None
    i_fee_total = sh.find("手续费总金额")
    parsed = ParsedStatement(rows, StatementTotals(count=count))
    problems = []
    if settled_total != settled_sum:
        problems.append(f"应结订单总金额 {settled_total} fen announced, rows sum to {settled_sum} fen")
    if refund_total is not None and refund_total != refund_sum:
        problems.append(f"退款总金额 {refund_total} fen announced, rows sum to {refund_sum} fen")
    if i_fee_total is not None:
        announced_fee = fee_units(sv[i_fee_total])
        if announced_fee != fee_sum:
            problems.append(f"手续费总金额 {_yuan5(announced_fee)} announced, rows sum to {_yuan5(fee_sum)}")
    if problems:
        raise StatementError("wechat bill: summary mismatch: " + "; ".join(problems))
    check_totals(parsed, "wechat bill")
    return parsed
