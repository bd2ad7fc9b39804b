"""Statements shaped like the real ones (tests/fixtures/statements, see SOURCES.md): an Alipay day with refunds
written as negative rows and a summary net of refunds, and WeChat bills with refunds. The summary fields each
format surely promises are checked, and a mismatch in any of them fails the batch; a field whose meaning the
channel leaves open is accepted in every documented reading (Alipay 汇总 订单金额 gross or net) or not checked
at all (实收净额, 服务费 totals, WeChat 订单总金额), so a day's run never fails on our guess at it."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from collections.abc import Callable

import pytest

from gateway.recon.normalize import SHANGHAI, StatementError
from gateway.recon.statements import alipay as alipay_bill
from gateway.recon.statements import wechat as wechat_bill
from sandbox.channels import bills
from tests.support.rig import REPO

ALIPAY = REPO / "tests" / "fixtures" / "statements" / "alipay"
ACCOUNT = "20881021462251350156"
DETAIL_NAME = f"{ACCOUNT}_20250314_业务明细.csv"
SUMMARY_NAME = f"{ACCOUNT}_20250314_业务明细(汇总).csv"

Edit = Callable[[str], str]


def _same(text: str) -> str:
    return text


def alipay_zip(detail: Edit = _same, summary: Edit = _same, *, with_summary: bool = True) -> bytes:
    """The fixture as downloaded: a zip whose member names are GBK bytes without the UTF-8 flag."""
    members = [(DETAIL_NAME, detail((ALIPAY / "trade_detail.csv").read_bytes().decode("gbk")))]
    if with_summary:
        members.append((SUMMARY_NAME, summary((ALIPAY / "trade_summary.csv").read_bytes().decode("gbk"))))
    out = io.BytesIO()
    swaps: list[tuple[bytes, bytes]] = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for n, (name, text) in enumerate(members):
            raw_name = name.encode("gbk")
            placeholder = (chr(ord("a") + n) * len(raw_name)).encode()  # zipfile cannot write GBK names itself
            swaps.append((placeholder, raw_name))
            archive.writestr(placeholder.decode(), text.encode("gbk"))
    packed = out.getvalue()
    for placeholder, raw_name in swaps:
        packed = packed.replace(placeholder, raw_name)
    return packed


def replace_once(old: str, new: str) -> Edit:
    def edit(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} is not in the fixture exactly once"
        return text.replace(old, new)

    return edit


EXPECTED_ALIPAY = [
    ("pay", "MZ2503140000101", None, 8650, 52),
    ("pay", "GH2503140000102", None, 1500, 9),
    ("pay", "ZY2503140000103", None, 300000, 1800),
    ("pay", "MZ2503140000104", None, 23480, 141),
    ("pay", "MZ2503140000105", None, 12000, 72),
    ("pay", "GH2503140000106", None, 5000, 30),
    ("pay", "ZY2503140000107", None, 100000, 600),
    ("pay", "MZ2503140000108", None, 4260, 26),
    ("refund", "GH2503140000102", "RF2503140000102-1", 1500, -9),
    ("refund", "MZ2503140000105", "RF2503140000105-1", 7200, -43),
    ("refund", "ZY2503140000107", "RF2503140000107-1", 40000, -240),
    ("refund", "MZ2503130000577", "RF2503130000577-1", 9900, -59),
]


def test_alipay_real_bill_refunds_are_negative_rows_and_the_summary_is_net():
    parsed = alipay_bill.parse(alipay_zip())
    assert [(r.type, r.out_trade_no, r.out_refund_no, r.amount_fen, r.fee_fen) for r in parsed.rows] == EXPECTED_ALIPAY
    assert {r.merchant for r in parsed.rows} == {"2088102146225135"}  # the 账号 is the PID with 0156 appended
    partial = parsed.rows[9]
    assert partial.channel_trade_no == "2025031422001446011409412267" and partial.status == "success"
    assert partial.time == dt.datetime(2025, 3, 14, 15, 10, 2, tzinfo=SHANGHAI)  # 完成时间: when the refund went
    t = parsed.totals
    assert (t.count, t.pay_count, t.refund_count) == (12, 8, 4)
    assert (t.pay_fen, t.refund_fen, t.fee_fen) == (454890, 58600, 2379)


def test_alipay_summary_order_amount_gross_is_accepted_too():
    gross = replace_once("合计,,8,4,3962.90,3962.90,", "合计,,8,4,4548.90,3962.90,")
    assert [r.amount_fen for r in alipay_bill.parse(alipay_zip(summary=gross)).rows] == [e[3] for e in EXPECTED_ALIPAY]


def test_alipay_fields_the_format_leaves_open_never_fail_the_day():
    # 实收净额, 服务费 and 分润 of the summary, and 商家优惠 of the closing lines, are not promised to add up in a
    # way we could check: a different figure there is not a reason to refuse the statement.
    loose = replace_once(",0.00,0.00,0.00,-23.79,0.00,3939.11", ",0.00,0.00,0.00,-20.00,1.00,3900.00")
    discount = replace_once("商家优惠共0.00元", "商家优惠共1.00元")
    assert len(alipay_bill.parse(alipay_zip(detail=discount, summary=loose)).rows) == 12


@pytest.mark.parametrize(
    ("where", "old", "new", "named"),
    [
        ("summary", "合计,,8,4,", "合计,,9,4,", "交易订单总笔数"),
        ("summary", "合计,,8,4,", "合计,,8,3,", "退款订单总笔数"),
        ("summary", "合计,,8,4,3962.90,3962.90,", "合计,,8,4,3962.90,3962.91,", "商家实收"),
        ("summary", "合计,,8,4,3962.90,3962.90,", "合计,,8,4,3962.91,3962.90,", "订单金额"),  # neither net nor gross
        ("detail", "#交易合计：8笔", "#交易合计：7笔", "#交易合计"),
        ("detail", "#退款合计：4笔", "#退款合计：5笔", "#退款合计"),
        ("detail", "商家实收共4548.90元", "商家实收共4548.80元", "商家实收"),
        ("detail", "商家实收退款共-586.00元", "商家实收退款共-585.00元", "商家实收退款"),
    ],
)
def test_alipay_a_promised_total_that_does_not_add_up_fails_the_batch(where, old, new, named):
    edit = replace_once(old, new)
    data = alipay_zip(summary=edit) if where == "summary" else alipay_zip(detail=edit)
    with pytest.raises(StatementError, match="summary mismatch") as failed:
        alipay_bill.parse(data)
    assert named in str(failed.value)


def test_alipay_a_tampered_or_missing_row_fails_the_batch():
    tampered = replace_once(",-72.00,-72.00,", ",-72.00,-62.00,")  # one refund's 商家实收
    with pytest.raises(StatementError, match="商家实收"):
        alipay_bill.parse(alipay_zip(detail=tampered))

    def drop_deposit_refund(text: str) -> str:
        return "\r\n".join(line for line in text.split("\r\n") if "RF2503140000107-1" not in line)

    with pytest.raises(StatementError, match="refunds announced, 3 parsed"):
        alipay_bill.parse(alipay_zip(detail=drop_deposit_refund))


def test_alipay_detail_alone_is_checked_by_its_closing_lines_and_refused_without_them():
    assert len(alipay_bill.parse(alipay_zip(with_summary=False)).rows) == 12
    bare = (ALIPAY / "trade_detail.csv").read_bytes()
    assert alipay_bill.parse(bare).rows == alipay_bill.parse(alipay_zip()).rows

    def cut_before_the_end(text: str) -> str:
        return text.split("#-----------------------------------------业务明细列表结束")[0]

    with pytest.raises(StatementError, match="cut short"):
        alipay_bill.parse(alipay_zip(detail=cut_before_the_end, with_summary=False))


def test_alipay_summary_without_total_row_or_with_a_bad_count_is_refused():
    with pytest.raises(StatementError, match="no 合计 row"):
        alipay_bill.parse(alipay_zip(summary=replace_once("合计,,8,4,", "小计,,8,4,")))
    with pytest.raises(StatementError, match="not numbers"):
        alipay_bill.parse(alipay_zip(summary=replace_once("合计,,8,4,", "合计,,八,4,")))


def _sandbox_ledger() -> tuple[list[dict], list[dict]]:
    base = {"appid": "wx1", "payer_id": "o1", "scene": "jsapi", "description": "住院预交金", "attach": None}
    pays = [
        {**base, "trade_no": f"4200{i}", "out_trade_no": f"P-{i}", "amount_fen": fen,
         "created_at": f"2025-03-14T0{i}:00:00+08:00", "paid_at": f"2025-03-14T0{i}:00:07+08:00"}
        for i, fen in ((1, 100000), (2, 25050), (3, 1999))
    ]  # fmt: skip
    refunds = [
        {**base, "trade_no": "42001", "out_trade_no": "P-1", "refund_no": "50301", "out_refund_no": "R-1",
         "amount_fen": 30000, "total_fen": 100000, "created_at": "2025-03-14T22:59:00+08:00",
         "succeeded_at": "2025-03-14T23:00:02+08:00", "paid_at": "2025-03-14T01:00:07+08:00"},
    ]  # fmt: skip
    return pays, refunds


def test_sandbox_alipay_bill_is_written_as_the_real_one():
    pays, refunds = _sandbox_ledger()
    packed = bills.alipay_tradebill(
        "2088102146225135", dt.date(2025, 3, 14), pays, refunds, generated=dt.datetime(2025, 3, 15, 9)
    )
    with zipfile.ZipFile(io.BytesIO(packed)) as archive:
        texts = {info.filename: archive.read(info).decode("gbk") for info in archive.infolist()}
    detail = texts[DETAIL_NAME.replace("20250314", "20250314")]
    refund_line = next(line for line in detail.split("\r\n") if "\t,退款\t," in line)
    assert ",-300.00,-300.00," in refund_line  # 订单金额 and 商家实收 of the refund, negative
    assert "#交易合计：3笔，商家实收共1270.49元" in detail and "#退款合计：1笔，商家实收退款共-300.00元" in detail
    summary = texts[SUMMARY_NAME]
    assert "合计,,3,1,970.49,970.49," in summary  # net of the refund
    rows = alipay_bill.parse(packed).rows
    assert [(r.type, r.out_refund_no, r.amount_fen) for r in rows][-1] == ("refund", "R-1", 30000)


WECHAT_HEADER = bills.WECHAT_COLUMNS["ALL"]


def _wechat_all_with_refund() -> str:
    pays, refunds = _sandbox_ledger()
    return bills.wechat_tradebill("1230000109", pays, refunds).decode()


def _summary_edit(text: str, **values: str) -> str:
    """The bill with some summary fields replaced (by name), the rest as written."""
    lines = text.rstrip("\n").split("\n")
    names = lines[-2].split(",")
    fields = [v.lstrip("`") for v in lines[-1].split(",")]
    for name, value in values.items():
        fields[names.index(name)] = value
    return "\n".join([*lines[:-1], ",".join("`" + v for v in fields)]) + "\n"


def test_wechat_bill_with_refunds_checks_count_settled_refund_and_fee_totals():
    text = _wechat_all_with_refund()
    parsed = wechat_bill.parse(text.encode())
    assert [(r.type, r.amount_fen) for r in parsed.rows] == [("pay", 100000), ("pay", 25050), ("pay", 1999),
                                                             ("refund", 30000)]  # fmt: skip
    lines = text.rstrip("\n").split("\n")
    assert lines[-1] == "`4,`1270.49,`300.00,`0.00,`5.82000,`1270.49,`300.00"  # the sandbox's own summary
    for field, wrong in (("总交易单数", "5"), ("应结订单总金额", "1270.50"), ("退款总金额", "300.01"),
                         ("手续费总金额", "5.82001")):  # fmt: skip
        with pytest.raises(StatementError, match="summary mismatch"):
            wechat_bill.parse(_summary_edit(text, **{field: wrong}).encode())


def test_wechat_totals_in_either_documented_reading_are_accepted():
    text = _wechat_all_with_refund()
    # 应结订单总金额 net of refunds, and 手续费总金额 of the payments alone (7.62 − 1.80 returned = 5.82 signed).
    accepted = _summary_edit(text, 应结订单总金额="970.49", 手续费总金额="7.62000")
    assert len(wechat_bill.parse(accepted.encode()).rows) == 4
    # Fields with no documented relation to the rows are not checked.
    loose = _summary_edit(text, 订单总金额="1.00", 申请退款总金额="2.00", 充值券退款总金额="3.00")
    assert len(wechat_bill.parse(loose.encode()).rows) == 4


def test_wechat_refund_sample_has_zero_settled_amounts_on_refund_rows():
    # The published REFUND bill: refund rows carry 0.00 in 应结订单金额, and the total agrees (0.00).
    sample = (REPO / "tests" / "fixtures" / "wechatpay" / "tradebill_refund_sample.csv").read_bytes()
    assert wechat_bill.parse(sample).totals.refund_fen == 2
    bad = sample.decode().replace("`2,`0.00,`0.02,", "`2,`0.01,`0.02,")
    with pytest.raises(StatementError, match="应结订单总金额"):
        wechat_bill.parse(bad.encode())
