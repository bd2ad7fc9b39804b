"""Statement parsers against the published WeChat trade bill samples (tests/fixtures/wechatpay), the
variants real files come in (BOM, CRLF, trailing tabs, GBK, legacy column sets, reordered columns), the bills
the sandbox channels serve (WeChat gzip checked by SHA-1, Alipay zip of GBK CSVs) and the CLI. A statement whose
summary rows disagree with its rows fails as a whole."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import zipfile

import aiohttp
import pytest

from gateway.channels.base import PaymentRequest, RefundRequest, RefundState, Scene
from gateway.cli import main
from gateway.recon.normalize import SHANGHAI, StatementError
from gateway.recon.statements import alipay as alipay_bill
from gateway.recon.statements import wechat as wechat_bill
from sandbox.channels import bills
from tests.support.gateway_rig import eventually
from tests.support.rig import FIXTURES

SAMPLES = FIXTURES / "wechatpay"


def sample(name: str) -> bytes:
    return (SAMPLES / f"tradebill_{name}_sample.csv").read_bytes()


def test_wechat_all_sample():
    parsed = wechat_bill.parse(sample("all"))
    assert [(r.type, r.out_trade_no, r.amount_fen, r.fee_fen) for r in parsed.rows] == [
        ("pay", "S20210128170702357723", 1, 0),
        ("pay", "S20210128153505214586", 1, 0),
        ("pay", "S20210128165824499930", 1, 0),
    ]
    first = parsed.rows[0]
    assert first.channel_trade_no == "4200000925202101284997714292" and first.merchant == "1601959334"
    assert first.time == dt.datetime(2021, 1, 28, 17, 7, 11, tzinfo=SHANGHAI) and first.status == "success"
    assert first.out_refund_no is None


def test_wechat_refund_sample_uses_refund_columns():
    rows = wechat_bill.parse(sample("refund")).rows
    assert [(r.type, r.out_refund_no, r.channel_refund_no, r.amount_fen) for r in rows] == [
        ("refund", "S20210201143320649393", "50300807172021020106006664916", 1),
        ("refund", "S20210201140044552846", "50300907032021020105978998710", 1),
    ]
    assert rows[0].time.isoformat() == "2021-02-01T14:33:24+08:00"  # 退款成功时间, not the payment's 交易时间
    assert rows[0].out_trade_no == "S20210124161554311546"


def test_wechat_success_sample():
    (row,) = wechat_bill.parse(sample("success")).rows
    assert (row.type, row.out_trade_no, row.amount_fen) == ("pay", "S20210201143829466741", 1)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("`3,`0.03,", "`4,`0.03,"),  # count
        ("`3,`0.03,", "`3,`0.04,"),  # 应结订单总金额
        (",`0.00000,`0.03,", ",`0.00100,`0.03,"),  # 手续费总金额
    ],
)
def test_wechat_summary_mismatch_fails_the_batch(old, new):
    text = sample("all").decode()
    assert text.count(old) == 1
    with pytest.raises(StatementError, match="summary mismatch"):
        wechat_bill.parse(text.replace(old, new).encode())


def test_wechat_cut_short_or_tampered_row_fails():
    lines = sample("all").decode().splitlines()
    with pytest.raises(StatementError, match="no summary"):
        wechat_bill.parse("\n".join(lines[:3]).encode())
    tampered = sample("all").decode().replace("`0.01,`0.00,`0,`0,", "`0.02,`0.00,`0,`0,", 1)
    with pytest.raises(StatementError, match="应结订单总金额"):
        wechat_bill.parse(tampered.encode())


def test_wechat_bom_crlf_trailing_tabs_and_gzip():
    text = sample("refund").decode()
    variant = "\ufeff" + "\r\n".join(line + "\t" for line in text.splitlines()) + "\r\n"
    assert wechat_bill.parse(gzip.compress(variant.encode())).rows == wechat_bill.parse(sample("refund")).rows


def test_wechat_legacy_v2_columns_in_gbk_and_reordered():
    header = "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,企业红包金额,微信退款单号,商户退款单号,退款金额,企业红包退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率"  # noqa: E501
    pay = "`2016-05-03 12:01:02,`wx1,`10000100,`0,`,`4001,`P1,`o1,`JSAPI,`SUCCESS,`CMB,`CNY,`12.50,`0.00,`0,`0,`0,`0,`,`,`挂号费,`,`0.08000,`0.60%"  # noqa: E501
    refund = "`2016-05-03 13:00:00,`wx1,`10000100,`0,`,`4001,`P1,`o1,`JSAPI,`REFUND,`CMB,`CNY,`0.00,`0.00,`5001,`R1,`-2.50,`0,`ORIGINAL,`SUCCESS,`挂号费,`,`-0.02000,`0.60%"  # noqa: E501
    summary = "总交易单数,总交易额,总退款金额,总企业红包退款金额,手续费总金额\n`2,`12.50,`2.50,`0.00,`0.06000"
    text = "\n".join([header, pay, refund, summary]) + "\n"
    rows = wechat_bill.parse(text.encode("gbk")).rows
    assert [(r.type, r.out_trade_no, r.out_refund_no, r.amount_fen, r.fee_fen) for r in rows] == [
        ("pay", "P1", None, 1250, 8),
        ("refund", "P1", "R1", 250, -2),
    ]
    # The same columns in another order parse the same (by name, never by position).
    cols = header.split(",")
    order = list(reversed(range(len(cols))))

    def reorder(line: str) -> str:
        values = line[1:].split(",`")
        return ",".join("`" + values[i] for i in order)

    shuffled = "\n".join([",".join(cols[i] for i in order), reorder(pay), reorder(refund), summary]) + "\n"
    assert wechat_bill.parse(shuffled.encode()).rows == rows


def test_wechat_missing_column_is_named():
    text = sample("all").decode().replace("商户订单号", "订单号", 1)
    with pytest.raises(StatementError, match="商户订单号"):
        wechat_bill.parse(text.encode())


def _ledger_rows() -> tuple[list[dict], list[dict]]:
    base = {"appid": "wx1", "payer_id": "o1", "scene": "native", "description": "门诊缴费", "attach": None}
    pays = [
        {
            **base,
            "trade_no": "42001",
            "out_trade_no": "P-1",
            "amount_fen": 12000,
            "created_at": "2025-03-14T09:00:00+08:00",
            "paid_at": "2025-03-14T09:00:05+08:00",
        },
        {
            **base,
            "trade_no": "42002",
            "out_trade_no": "P-2",
            "amount_fen": 3333,
            "created_at": "2025-03-14T23:59:00+08:00",
            "paid_at": "2025-03-14T23:59:58+08:00",
        },
    ]
    refunds = [
        {
            **base,
            "trade_no": "42001",
            "out_trade_no": "P-1",
            "refund_no": "50301",
            "out_refund_no": "R-1",
            "amount_fen": 2000,
            "total_fen": 12000,
            "created_at": "2025-03-14T10:00:00+08:00",
            "succeeded_at": "2025-03-14T10:00:03+08:00",
            "paid_at": "2025-03-14T09:00:05+08:00",
        },
    ]
    return pays, refunds


def test_sandbox_rendered_alipay_zip_gbk_tabs_negative_refunds():
    pays, refunds = _ledger_rows()
    packed = bills.alipay_tradebill(
        "2088102146225135", dt.date(2025, 3, 14), pays, refunds, generated=dt.datetime(2025, 3, 15, 9, 0)
    )
    parsed = alipay_bill.parse(packed)
    assert [(r.type, r.out_trade_no, r.out_refund_no, r.amount_fen, r.fee_fen) for r in parsed.rows] == [
        ("pay", "P-1", None, 12000, 72),
        ("pay", "P-2", None, 3333, 20),
        ("refund", "P-1", "R-1", 2000, -12),
    ]
    assert parsed.rows[0].merchant == "2088102146225135" and parsed.rows[0].channel_trade_no == "42001"
    assert parsed.rows[1].time.isoformat() == "2025-03-14T23:59:58+08:00"


def _rezip(packed: bytes, edit, *, gbk_names: bool = False) -> bytes:
    out = io.BytesIO()
    renames: list[tuple[bytes, bytes]] = []
    with zipfile.ZipFile(io.BytesIO(packed)) as src, zipfile.ZipFile(out, "w") as dst:
        for n, info in enumerate(src.infolist()):
            data = edit(info.filename, src.read(info).decode("gbk")).encode("gbk")
            name = info.filename
            if gbk_names:
                # As Alipay writes them: GBK bytes without the UTF-8 flag. zipfile cannot write that, so write
                # an ASCII name of the same length and swap the bytes afterwards.
                raw = name.encode("gbk")
                placeholder = (chr(ord("a") + n) * len(raw)).encode()
                renames.append((placeholder, raw))
                name = placeholder.decode()
            dst.writestr(name, data)
    packed = out.getvalue()
    for placeholder, raw in renames:
        packed = packed.replace(placeholder, raw)
    return packed


def test_alipay_gbk_file_names_and_summary_mismatch():
    pays, refunds = _ledger_rows()
    packed = bills.alipay_tradebill("2088", dt.date(2025, 3, 14), pays, refunds, generated=dt.datetime(2025, 3, 15))
    assert len(alipay_bill.parse(_rezip(packed, lambda n, t: t, gbk_names=True)).rows) == 3

    def wrong_total(name: str, text: str) -> str:
        return text.replace("合计,,2,1,153.33,", "合计,,2,1,153.34,") if "汇总" in name else text

    with pytest.raises(StatementError, match="订单金额"):
        alipay_bill.parse(_rezip(packed, wrong_total))

    def dropped_row(name: str, text: str) -> str:
        return (
            "\r\n".join(line for line in text.split("\r\n") if not line.startswith("42002"))
            if "汇总" not in name
            else text
        )

    with pytest.raises(StatementError, match="summary mismatch"):
        alipay_bill.parse(_rezip(packed, dropped_row))


def test_alipay_legacy_columns_ascii_parentheses_bare_csv():
    text = "\r\n".join(
        [
            "#支付宝业务明细查询",
            "#账号：[2088000000000001]",
            "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,对方账户,订单金额(元),商家实收(元),退款批次号/请求号,服务费(元),备注",
            "2016050321001004\t,P-9\t,交易\t,挂号\t,2016-05-03 10:00:00\t,2016-05-03 10:00:09\t,a***@b.com\t,25.00\t,25.00\t,\t,-0.15\t,\t",  # noqa: E501
            "2016050321001004\t,P-9\t,退款\t,挂号\t,2016-05-03 10:00:00\t,2016-05-03 11:00:00\t,a***@b.com\t,25.00\t,-5.00\t,R-9\t,0.03\t,\t",  # noqa: E501
            "#交易合计：1笔，退款合计：1笔",
        ]
    )
    rows = alipay_bill.parse(text.encode("gbk")).rows
    assert [(r.type, r.amount_fen, r.fee_fen, r.out_refund_no, r.merchant) for r in rows] == [
        ("pay", 2500, 15, None, "2088000000000001"),
        ("refund", 500, -3, "R-9", "2088000000000001"),
    ]
    with pytest.raises(StatementError, match="announced"):
        alipay_bill.parse(text.replace("退款合计：1笔", "退款合计：2笔").encode("gbk"))


async def _admin(sandbox, path: str, body: dict) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{sandbox.admin_url}{path}", json=body) as resp:
        assert resp.status < 300, await resp.text()


def _order(no: str, amount: int) -> PaymentRequest:
    return PaymentRequest(no, amount, "门诊缴费", Scene.native, "http://127.0.0.1:9/notify")


async def test_bills_the_sandbox_channels_serve(sandbox, wechat, alipay):
    for channel, name in ((wechat, "wechat"), (alipay, "alipay")):
        await channel.create(_order(f"{name}-B-1", 1250))
        await channel.create(_order(f"{name}-B-2", 999))
        if name == "alipay":
            for no in (f"{name}-B-1", f"{name}-B-2"):
                await _admin(sandbox, "/payer/scan", {"channel": name, "out_trade_no": no})
        for no in (f"{name}-B-1", f"{name}-B-2"):
            await _admin(sandbox, "/payer/pay", {"channel": name, "out_trade_no": no})
        await channel.refund(RefundRequest(f"{name}-B-1", f"{name}-R-1", 250, 1250))

        async def refunded(channel=channel, name=name) -> bool:
            status = await channel.query_refund(f"{name}-B-1", f"{name}-R-1")
            return status.state is RefundState.success

        await eventually(refunded, what=f"the {name} refund succeeded")  # WeChat refunds are asynchronous
    today = sandbox.ledger.now().date()

    served = wechat_bill.parse(await wechat.download_bill(today))
    assert {(r.type, r.out_trade_no, r.out_refund_no, r.amount_fen) for r in served.rows} == {
        ("pay", "wechat-B-1", None, 1250),
        ("pay", "wechat-B-2", None, 999),
        ("refund", "wechat-B-1", "wechat-R-1", 250),
    }
    assert served.pay_fen == 2249 and served.refund_fen == 250
    ali_rows = alipay_bill.parse(await alipay.download_bill(today)).rows
    assert {(r.type, r.out_trade_no, r.out_refund_no, r.amount_fen) for r in ali_rows} == {
        ("pay", "alipay-B-1", None, 1250),
        ("pay", "alipay-B-2", None, 999),
        ("refund", "alipay-B-1", "alipay-R-1", 250),
    }
    assert all(r.status == "success" and r.time.tzinfo is not None for r in ali_rows)


def test_cli_prints_json_lines_and_fails_loudly(tmp_path, capsys):
    assert main(["statements", "parse", "--channel", "wechat", str(SAMPLES / "tradebill_refund_sample.csv")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert {"channel_trade_no", "out_trade_no", "out_refund_no", "type", "amount_fen", "fee_fen", "time"} <= set(first)
    assert (first["type"], first["amount_fen"], first["time"]) == ("refund", 1, "2021-02-01T14:33:24+08:00")

    pays, refunds = _ledger_rows()
    path = tmp_path / "alipay.zip"
    path.write_bytes(
        bills.alipay_tradebill("2088", dt.date(2025, 3, 14), pays, refunds, generated=dt.datetime(2025, 3, 15))
    )
    assert main(["statements", "parse", "--channel", "alipay", str(path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["type"] for r in rows] == ["pay", "pay", "refund"] and rows[2]["amount_fen"] == 2000

    bad = tmp_path / "bad.csv"
    bad.write_text(sample("all").decode().replace("`3,`0.03,", "`2,`0.03,"), encoding="utf-8")
    assert main(["statements", "parse", "--channel", "wechat", str(bad)]) == 1
    assert "summary mismatch" in capsys.readouterr().err
