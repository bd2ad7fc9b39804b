"""Our Alipay client against the sandbox channel: every method, trade.pay's WAIT_BUYER_PAY dance, partial
refunds, notifications (genuine, tampered, foreign, stale) and the statement zip."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from decimal import Decimal
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
from pydantic import ValidationError

from gateway.channels.base import (
    ChannelError,
    NotificationRejected,
    PaymentRequest,
    RefundRequest,
    RefundState,
    Scene,
    TradeState,
)
from gateway.channels.money import fen_to_yuan, yuan_to_fen
from sandbox.channels import crypto as sandbox_crypto
from sandbox.channels.alipay import signing_content
from tests.support.channelrig import alipay_config


async def admin(sandbox, path: str, body: dict, *, expect: int | None = None) -> dict:
    async with aiohttp.ClientSession() as http, http.post(f"{sandbox.admin_url}{path}", json=body) as resp:
        data = await resp.json()
        if expect is None:
            assert resp.status < 300, data
        else:
            assert resp.status == expect, data
        return data


def order(no: str, scene: Scene = Scene.native, amount: int = 1250, **kw) -> PaymentRequest:
    kw.setdefault("notify_url", "http://127.0.0.1:9/notify")
    return PaymentRequest(out_trade_no=no, amount_fen=amount, description="门诊缴费", scene=scene, **kw)


def test_money_conversion_is_exact():
    assert fen_to_yuan(1250) == "12.50" and fen_to_yuan(1) == "0.01" and fen_to_yuan(0) == "0.00"
    assert yuan_to_fen("12.50") == 1250 and yuan_to_fen("0.1") == 10 and yuan_to_fen(Decimal("99999.99")) == 9999999
    for bad in ("1.005", "abc", "NaN", "Infinity"):
        with pytest.raises(ValueError):
            yuan_to_fen(bad)
    with pytest.raises(TypeError):
        yuan_to_fen(0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fen_to_yuan(12.5)  # type: ignore[arg-type]


async def test_precreate_scan_pay_notify_query(sandbox, alipay, receiver):
    started = await alipay.create(order("ALI-QR-00001", notify_url=receiver.url + "/qr"))
    assert started.state is TradeState.notpay and started.pay_params["qr_code"].startswith("https://qr.alipay.com/")
    assert (await alipay.query("ALI-QR-00001")).state is TradeState.not_found
    await admin(sandbox, "/payer/scan", {"channel": "alipay", "out_trade_no": "ALI-QR-00001"})
    assert (await alipay.query("ALI-QR-00001")).state is TradeState.notpay
    await admin(sandbox, "/payer/pay", {"channel": "alipay", "out_trade_no": "ALI-QR-00001"})
    (cb,) = await receiver.wait_for(1)
    note = alipay.verify_notification(cb.headers, cb.body)
    assert note.kind == "payment" and note.trade.state is TradeState.success and note.trade.amount_fen == 1250
    assert note.trade.merchant_id == "2088102146225135"
    ack = alipay.acknowledge(True)
    assert (ack.status, ack.body) == (200, b"success")
    status = await alipay.query("ALI-QR-00001")
    assert status.state is TradeState.success and status.amount_fen == 1250 and status.paid_at is not None
    await sandbox.notifier.idle()
    assert sandbox.ledger.notifications("alipay")[0]["status"] == "delivered"


async def test_closing_an_unscanned_qr_makes_the_scan_fail(sandbox, alipay):
    await alipay.create(order("ALI-QR-00002"))
    await alipay.close("ALI-QR-00002")
    await admin(sandbox, "/payer/scan", {"channel": "alipay", "out_trade_no": "ALI-QR-00002"}, expect=409)


async def test_close_scanned_unpaid_and_paid(sandbox, alipay):
    await alipay.create(order("ALI-CLOSE-01"))
    await admin(sandbox, "/payer/scan", {"channel": "alipay", "out_trade_no": "ALI-CLOSE-01"})
    await alipay.close("ALI-CLOSE-01")
    assert (await alipay.query("ALI-CLOSE-01")).state is TradeState.closed
    await alipay.close("ALI-CLOSE-01")
    await alipay.create(order("ALI-CLOSE-02"))
    await admin(sandbox, "/payer/pay", {"channel": "alipay", "out_trade_no": "ALI-CLOSE-02"})
    with pytest.raises(ChannelError) as info:
        await alipay.close("ALI-CLOSE-02")
    assert info.value.code == "ORDERPAID"


async def test_wap_app_and_jsapi(sandbox, alipay):
    wap = await alipay.create(order("ALI-WAP-0001", Scene.h5))
    async with aiohttp.ClientSession() as http, http.get(wap.pay_params["url"]) as resp:
        assert resp.status == 200 and "ALI-WAP-0001" in await resp.text()
    app = await alipay.create(order("ALI-APP-0001", Scene.app, amount=990))
    params = dict(parse_qsl(app.pay_params["order_string"]))
    assert params["method"] == "alipay.trade.app.pay" and params["sign_type"] == "RSA2"
    trade = await admin(sandbox, "/payer/app-pay", {"order_string": app.pay_params["order_string"]})
    assert trade["amount_fen"] == 990
    assert (await alipay.query("ALI-APP-0001")).state is TradeState.success
    jsapi = await alipay.create(order("ALI-JS-00001", Scene.jsapi, payer_id="2088102177846880"))
    assert jsapi.channel_trade_no and jsapi.pay_params["trade_no"] == jsapi.channel_trade_no


async def test_tampered_app_order_string_is_refused_by_the_sandbox(sandbox, alipay):
    app = await alipay.create(order("ALI-APP-0002", Scene.app))
    params = dict(parse_qsl(app.pay_params["order_string"]))
    params["biz_content"] = params["biz_content"].replace("12.50", "0.01")
    data = await admin(sandbox, "/payer/app-pay", {"order_string": urlencode(params)}, expect=409)
    assert "invalid-signature" in data["error"]


async def test_codepay_paid_waiting_then_paid_and_reversed(sandbox, alipay):
    assert (await alipay.create(order("ALI-BAR-0001", Scene.codepay, auth_code="28001"))).state is TradeState.success
    await admin(
        sandbox, "/codepay", {"channel": "alipay", "auth_code": "28002", "outcome": "userpaying", "after_queries": 2}
    )
    started = await alipay.create(order("ALI-BAR-0002", Scene.codepay, auth_code="28002"))
    assert started.state is TradeState.success
    await admin(
        sandbox, "/codepay", {"channel": "alipay", "auth_code": "28003", "outcome": "userpaying", "then": "wait"}
    )
    started = await alipay.create(order("ALI-BAR-0003", Scene.codepay, auth_code="28003"))
    assert started.state is TradeState.revoked
    assert sandbox.ledger.trade("alipay", "2016080300157187", "ALI-BAR-0003")["state"] == "REVOKED"
    await admin(
        sandbox,
        "/codepay",
        {"channel": "alipay", "auth_code": "28004", "outcome": "error", "code": "ACQ.PAYMENT_AUTH_CODE_INVALID"},
    )
    with pytest.raises(ChannelError) as info:
        await alipay.create(order("ALI-BAR-0004", Scene.codepay, auth_code="28004"))
    assert info.value.code == "ACQ.PAYMENT_AUTH_CODE_INVALID"


async def paid(sandbox, alipay, no: str, amount: int = 10000, notify_url: str = "http://127.0.0.1:9/n") -> None:
    await alipay.create(order(no, amount=amount, notify_url=notify_url))
    await admin(sandbox, "/payer/pay", {"channel": "alipay", "out_trade_no": no})


async def test_partial_refunds(sandbox, alipay, receiver):
    await paid(sandbox, alipay, "ALI-RF-00001", notify_url=receiver.url + "/rf")
    first = await alipay.refund(RefundRequest("ALI-RF-00001", "RF-A", 3000, 10000, reason="医保结算"))
    assert first.state is RefundState.success and first.refund_fen == 3000
    again = await alipay.refund(RefundRequest("ALI-RF-00001", "RF-A", 3000, 10000))
    assert again.state is RefundState.success and again.refund_fen == 3000
    second = await alipay.refund(RefundRequest("ALI-RF-00001", "RF-B", 7000, 10000))
    assert second.state is RefundState.success
    with pytest.raises(ChannelError) as info:
        await alipay.refund(RefundRequest("ALI-RF-00001", "RF-C", 1, 10000))
    assert info.value.code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    assert (await alipay.query_refund("ALI-RF-00001", "RF-B")).refund_fen == 7000
    assert (await alipay.query("ALI-RF-00001")).state is TradeState.refund
    callbacks = await receiver.wait_for(3)
    notes = [alipay.verify_notification(c.headers, c.body) for c in callbacks]
    assert [n.kind for n in notes] == ["payment", "refund", "refund"]
    assert [n.refund.out_refund_no for n in notes[1:]] == ["RF-A", "RF-B"]
    assert notes[-1].trade.state is TradeState.refund


async def test_held_refund_and_unknown_refund(sandbox, alipay):
    await paid(sandbox, alipay, "ALI-RF-00002")
    await admin(sandbox, "/refunds/hold", {"channel": "alipay", "count": 1})
    held = await alipay.refund(RefundRequest("ALI-RF-00002", "RF-H", 100, 10000))
    assert held.state is RefundState.processing
    assert (await alipay.query_refund("ALI-RF-00002", "RF-H")).state is RefundState.processing
    await admin(sandbox, "/refunds/release", {"channel": "alipay"})
    assert (await alipay.query_refund("ALI-RF-00002", "RF-H")).state is RefundState.success
    with pytest.raises(ChannelError) as info:
        await alipay.query_refund("ALI-RF-00002", "RF-NONE")
    assert info.value.code == "NOT_FOUND"


async def test_faults_map_to_retryable_and_in_doubt(sandbox, alipay):
    await admin(sandbox, "/faults", {"match": "alipay.trade.query", "mode": "error", "count": 1})
    with pytest.raises(ChannelError) as info:
        await alipay.query("ALI-ANY-0001")
    assert info.value.retryable and info.value.in_doubt
    await admin(sandbox, "/faults", {"match": "alipay.trade.query", "mode": "bad_signature", "count": 1})
    with pytest.raises(ChannelError) as info:
        await alipay.query("ALI-ANY-0001")
    assert info.value.code == "BAD_RESPONSE_SIGNATURE"
    await paid(sandbox, alipay, "ALI-RF-00003")
    await admin(sandbox, "/faults", {"match": "alipay.trade.refund", "mode": "drop_after", "count": 1})
    request = RefundRequest("ALI-RF-00003", "RF-D", 500, 10000)
    with pytest.raises(ChannelError) as info:
        await alipay.refund(request)
    assert info.value.in_doubt
    assert (await alipay.refund(request)).state is RefundState.success
    assert sandbox.ledger.trade("alipay", "2016080300157187", "ALI-RF-00003")["refunded_fen"] == 500


def forged(sandbox, fields: dict[str, str], *, key=None) -> bytes:
    fields = {k: v for k, v in fields.items() if k not in ("sign", "sign_type")}
    fields["sign"] = sandbox_crypto.rsa_sign(key or sandbox.alipay.alipay_key, signing_content(fields, ("sign",)))
    fields["sign_type"] = "RSA2"
    return urlencode(fields).encode()


def rejected(alipay, headers, body, **kw) -> str:
    with pytest.raises(NotificationRejected) as info:
        alipay.verify_notification(headers, body, **kw)
    return info.value.reason


async def test_notification_rejections(sandbox, alipay, receiver):
    await paid(sandbox, alipay, "ALI-CB-00001", notify_url=receiver.url + "/cb")
    (cb,) = await receiver.wait_for(1)
    fields = dict(parse_qsl(cb.body.decode()))
    assert alipay.verify_notification(cb.headers, cb.body).kind == "payment"
    tampered = urlencode(dict(fields, total_amount="0.01")).encode()
    assert rejected(alipay, cb.headers, tampered) == "bad_signature"
    assert rejected(alipay, cb.headers, forged(sandbox, fields, key=sandbox_crypto.new_rsa_key())) == "bad_signature"
    assert rejected(alipay, cb.headers, forged(sandbox, dict(fields, app_id="2021000000000000"))) == "wrong_merchant"
    assert rejected(alipay, cb.headers, forged(sandbox, dict(fields, seller_id="2088000000000000"))) == "wrong_merchant"
    no_seller = {k: v for k, v in fields.items() if k != "seller_id"}
    assert rejected(alipay, cb.headers, forged(sandbox, no_seller)) == "wrong_merchant", "seller_id is required"
    sent = dt.datetime.strptime(fields["notify_time"], "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=dt.timezone(dt.timedelta(hours=8))
    )
    assert rejected(alipay, cb.headers, cb.body, now=sent.timestamp() + 27 * 3600) == "stale"
    assert rejected(alipay, cb.headers, b"hello=world") == "malformed"
    assert rejected(alipay, cb.headers, forged(sandbox, dict(fields, trade_status="WHATEVER"))) == "malformed"


async def test_merchant_must_answer_exactly_success(sandbox, alipay, receiver):
    from aiohttp import web

    answers = iter([b"ok", b"SUCCESS ", b"success"])
    receiver.respond = lambda _r: web.Response(body=next(answers))
    await paid(sandbox, alipay, "ALI-CB-00002", notify_url=receiver.url + "/retry")
    deliveries = await receiver.wait_for(3)
    assert len({d.body for d in deliveries}) == 1
    await sandbox.notifier.idle()
    (record,) = sandbox.ledger.notifications("alipay")
    assert (record["status"], record["attempts"]) == ("delivered", 3)


async def test_statement_zip(sandbox, alipay):
    with pytest.raises(ChannelError) as info:
        await alipay.download_bill(dt.date(2021, 1, 1))
    assert info.value.code == "NO_STATEMENT_EXIST"
    await paid(sandbox, alipay, "ALI-BILL-001", 1250)
    await alipay.refund(RefundRequest("ALI-BILL-001", "RF-BILL", 250, 1250))
    packed = await alipay.download_bill(sandbox.ledger.now().date())
    with zipfile.ZipFile(io.BytesIO(packed)) as archive:
        names = archive.namelist()
        detail = next(n for n in names if n.endswith("业务明细.csv"))
        text = archive.read(detail).decode("gbk")
    assert any(n.endswith("业务明细(汇总).csv") for n in names)
    assert "ALI-BILL-001\t" in text and "RF-BILL\t" in text and ",-2.50,-2.50," in text  # the refund, negative
    assert "#交易合计：1笔，商家实收共12.50元" in text and "#退款合计：1笔，商家实收退款共-2.50元" in text
    await admin(sandbox, "/faults", {"match": "alipay.billdownload", "mode": "tamper", "count": 1})
    with pytest.raises(ChannelError) as info:
        await alipay.download_bill(sandbox.ledger.now().date())
    assert info.value.code == "BILL_CORRUPT"


def test_seller_id_is_required_in_the_config(sandbox):
    with pytest.raises(ValidationError) as info:
        alipay_config(sandbox, seller_id=None)
    assert "seller_id" in str(info.value)
    with pytest.raises(ValidationError):
        alipay_config(sandbox, seller_id="12345")
