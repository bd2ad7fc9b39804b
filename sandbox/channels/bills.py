"""Statements rendered from the sandbox ledger in the channels' own file formats.

WeChat trade bill (v3 ``tradebill``): UTF-8 CSV, a header row, one row per payment (and per refund, for ALL and
REFUND), every value prefixed with a backtick; then a summary header and one backticked summary row. Columns are
exactly those of the published samples (bill_type ALL/SUCCESS/REFUND). Amounts are yuan with 2 decimals, the fee
with 5; the hash announced is the SHA-1 of the uncompressed file.

Alipay trade bill: a zip of two GBK CSVs, ``<account>_<yyyymmdd>_业务明细.csv`` (comment lines starting with ``#``,
numbers and names followed by a tab as Alipay writes them so spreadsheets keep them as text; refunds as negative
rows) and its ``(汇总)`` summary.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import zipfile
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

WECHAT_COLUMNS = {
    "ALL": (
        "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
        "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
        "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
    ),
    "SUCCESS": (
        "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
        "货币种类,应结订单金额,代金券金额,商品名称,商户数据包,手续费,费率,订单金额,费率备注"
    ),
    "REFUND": (
        "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
        "货币种类,应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,"
        "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
    ),
}
WECHAT_SUMMARY = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"


def yuan(fen: int) -> str:
    return str((Decimal(fen) / 100).quantize(Decimal("0.01")))


def _fee(fen: int, rate_pct: Decimal) -> Decimal:
    return (Decimal(fen) * rate_pct / 100 / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _local(value: str | None) -> str:
    return dt.datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def wechat_tradebill(
    mchid: str,
    payments: list[dict[str, Any]],
    refunds: list[dict[str, Any]],
    *,
    bill_type: str = "ALL",
    rate_pct: Decimal = Decimal("0.60"),
) -> bytes:
    columns = WECHAT_COLUMNS[bill_type].split(",")
    rows: list[dict[str, str]] = []
    fee_total, settled_total, order_total, refund_total = Decimal(0), 0, 0, 0
    rate = f"{rate_pct:.2f}%"
    if bill_type in ("ALL", "SUCCESS"):
        for t in payments:
            fee = _fee(t["amount_fen"], rate_pct)
            fee_total += fee
            settled_total += t["amount_fen"]
            order_total += t["amount_fen"]
            rows.append(
                {
                    "交易时间": _local(t["paid_at"]),
                    "公众账号ID": t["appid"] or "",
                    "商户号": mchid,
                    "特约商户号": "0",
                    "设备号": "",
                    "微信订单号": t["trade_no"],
                    "商户订单号": t["out_trade_no"],
                    "用户标识": t["payer_id"] or "",
                    "交易类型": t["scene"].upper(),
                    "交易状态": "SUCCESS",
                    "付款银行": "OTHERS",
                    "货币种类": "CNY",
                    "应结订单金额": yuan(t["amount_fen"]),
                    "代金券金额": "0.00",
                    "微信退款单号": "0",
                    "商户退款单号": "0",
                    "退款金额": "0.00",
                    "充值券退款金额": "0.00",
                    "商品名称": t["description"] or "",
                    "商户数据包": t["attach"] or "",
                    "手续费": f"{fee:.5f}",
                    "费率": rate,
                    "订单金额": yuan(t["amount_fen"]),
                    "申请退款金额": "0.00",
                }
            )
    if bill_type in ("ALL", "REFUND"):
        for r in refunds:
            fee = -_fee(r["amount_fen"], rate_pct)
            fee_total += fee
            refund_total += r["amount_fen"]
            rows.append(
                {
                    "交易时间": _local(r["paid_at"]),
                    "公众账号ID": r["appid"] or "",
                    "商户号": mchid,
                    "特约商户号": "0",
                    "设备号": "",
                    "微信订单号": r["trade_no"],
                    "商户订单号": r["out_trade_no"],
                    "用户标识": r["payer_id"] or "",
                    "交易类型": r["scene"].upper(),
                    "交易状态": "REFUND",
                    "付款银行": "OTHERS",
                    "货币种类": "CNY",
                    "应结订单金额": "0.00",
                    "代金券金额": "0.00",
                    "退款申请时间": _local(r["created_at"]),
                    "退款成功时间": _local(r["succeeded_at"]),
                    "微信退款单号": r["refund_no"],
                    "商户退款单号": r["out_refund_no"],
                    "退款金额": yuan(r["amount_fen"]),
                    "充值券退款金额": "0.00",
                    "退款类型": "ORIGINAL",
                    "退款状态": "SUCCESS",
                    "商品名称": r["description"] or "",
                    "商户数据包": r["attach"] or "",
                    "手续费": f"{fee:.5f}",
                    "费率": rate,
                    "订单金额": "0.00",
                    "申请退款金额": yuan(r["amount_fen"]),
                }
            )
    lines = [",".join(columns)]
    lines += [",".join("`" + row.get(c, "") for c in columns) for row in rows]
    summary = [
        str(len(rows)),
        yuan(settled_total),
        yuan(refund_total),
        "0.00",
        f"{fee_total:.5f}",
        yuan(order_total),
        yuan(refund_total),
    ]
    lines += [WECHAT_SUMMARY, ",".join("`" + v for v in summary)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def wechat_package(bill: bytes, tar_type: str | None) -> tuple[bytes, str]:
    """The file as served and the SHA-1 announced for it (of the uncompressed bill)."""
    digest = hashlib.sha1(bill).hexdigest()
    return (gzip.compress(bill, mtime=0) if tar_type == "GZIP" else bill), digest


ALIPAY_DETAIL_COLUMNS = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,"
    "订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,"
    "券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注"
)


ALIPAY_SUMMARY_COLUMNS = (
    "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,支付宝优惠（元）,商家优惠（元）,"
    "卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）"
)
ALIPAY_TABBED = frozenset({0, 1, 2, 6, 7, 8, 9, 10, 19, 21})
"""The detail columns whose values Alipay follows with a tab (numbers and names a spreadsheet would mangle)."""


def _alipay_row(values: list[str]) -> str:
    return ",".join(v + "\t" if i in ALIPAY_TABBED else v for i, v in enumerate(values))


def alipay_tradebill(
    pid: str, day: dt.date, payments: list[dict[str, Any]], refunds: list[dict[str, Any]], *, generated: dt.datetime
) -> bytes:
    """As Alipay writes it: a refund row carries the refund as a negative 订单金额 and 商家实收 (its 创建时间 is the
    payment's), the detail closes with one count-and-商家实收 line per type, and the summary's 订单金额 and
    商家实收 are the signed column sums (net of refunds)."""
    stamp = day.strftime("%Y%m%d")
    account = f"{pid}0156"  # the 账号 Alipay prints: the PID with 0156 appended
    start = f"{day:%Y年%m月%d日} 00:00:00"
    end = f"{day + dt.timedelta(days=1):%Y年%m月%d日} 00:00:00"
    rows: list[str] = []
    fee_rate = Decimal("0.60")
    fees = Decimal(0)
    for t in payments:
        fee = _fee(t["amount_fen"], fee_rate)
        fees -= fee
        amount = yuan(t["amount_fen"])
        rows.append(
            _alipay_row(
                [t["trade_no"], t["out_trade_no"], "交易", t["description"] or "", _local(t["created_at"]),
                 _local(t["paid_at"]), "", "", "", "", t["payer_id"] or "", amount, amount, "0.00", "0.00", "0.00",
                 "0.00", "0.00", "", "0.00", "0.00", "", f"-{fee:.2f}", "0.00", ""]
            )
        )  # fmt: skip
    for r in refunds:
        fee = _fee(r["amount_fen"], fee_rate)
        fees += fee
        amount = f"-{yuan(r['amount_fen'])}"
        rows.append(
            _alipay_row(
                [r["trade_no"], r["out_trade_no"], "退款", r["description"] or "", _local(r["created_at"]),
                 _local(r["succeeded_at"]), "", "", "", "", r["payer_id"] or "", amount, amount, "0.00", "0.00",
                 "0.00", "0.00", "0.00", "", "0.00", "0.00", r["out_refund_no"], f"{fee:.2f}", "0.00", ""]
            )
        )  # fmt: skip
    income = sum(t["amount_fen"] for t in payments)
    refunded = sum(r["amount_fen"] for r in refunds)
    exported = f"#导出时间：[{generated:%Y年%m月%d日 %H:%M:%S}]"
    detail = [
        "#支付宝业务明细查询",
        f"#账号：[{account}]",
        f"#起始日期：[{start}]   终止日期：[{end}]",
        "#-----------------------------------------业务明细列表----------------------------------------",
        ALIPAY_DETAIL_COLUMNS,
        *rows,
        "#-----------------------------------------业务明细列表结束------------------------------------",
        f"#交易合计：{len(payments)}笔，商家实收共{yuan(income)}元，商家优惠共0.00元",
        f"#退款合计：{len(refunds)}笔，商家实收退款共{yuan(-refunded)}元，商家优惠退款共0.00元",
        exported,
    ]
    net = yuan(income - refunded)
    summary = [
        "#支付宝业务汇总查询",
        f"#账号：[{account}]",
        f"#起始日期：[{start}]   终止日期：[{end}]",
        "#-----------------------------------------业务汇总列表----------------------------------------",
        ALIPAY_SUMMARY_COLUMNS,
        f"合计,,{len(payments)},{len(refunds)},{net},{net},0.00,0.00,0.00,{fees:.2f},0.00,"
        f"{yuan(income - refunded + int(fees * 100))}",
        "#----------------------------------------业务汇总列表结束-------------------------------------",
        exported,
    ]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{account}_{stamp}_业务明细.csv", ("\r\n".join(detail) + "\r\n").encode("gbk"))
        archive.writestr(f"{account}_{stamp}_业务明细(汇总).csv", ("\r\n".join(summary) + "\r\n").encode("gbk"))
    return out.getvalue()
