"""Our WeChat Pay v3 client against the sandbox channel: every method, codepay's USERPAYING dance, refunds."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib

import aiohttp
import pytest

from gateway.channels import wechat_crypto
from gateway.channels.base import (
    ChannelError,
    PaymentRequest,
    RefundRequest,
    RefundState,
    Scene,
    TradeState,
)
from tests.support.channelrig import WECHAT_FIXTURES, WECHAT_KEY


def order(no: str, scene: Scene = Scene.native, amount: int = 1250, **kw) -> PaymentRequest:
    kw.setdefault("notify_url", "http://127.0.0.1:9/notify")
    return PaymentRequest(out_trade_no=no, amount_fen=amount, description="挂号费", scene=scene, **kw)


async def admin(sandbox, path: str, body: dict | None = None, method: str = "POST") -> dict:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{sandbox.admin_url}{path}", json=body) as resp,
    ):
        data = await resp.json()
        assert resp.status < 300, data
        return data


async def test_native_pay_callback_and_query(sandbox, wechat, receiver):
    started = await wechat.create(order("WX-NATIVE-0001", notify_url=receiver.url + "/pay"))
    assert started.state is TradeState.notpay
    assert started.pay_params["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
    assert (await wechat.query("WX-NATIVE-0001")).state is TradeState.notpay

    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "WX-NATIVE-0001"})
    (callback,) = await receiver.wait_for(1)
    note = wechat.verify_notification(callback.headers, callback.body)
    assert note.kind == "payment"
    assert note.trade is not None
    assert (note.trade.out_trade_no, note.trade.state, note.trade.amount_fen) == ("WX-NATIVE-0001", "SUCCESS", 1250)
    assert note.trade.merchant_id == "1230000109" and note.trade.payer_id

    status = await wechat.query("WX-NATIVE-0001")
    assert status.state is TradeState.success
    assert status.channel_trade_no == note.trade.channel_trade_no
    assert status.paid_at is not None and status.paid_at.utcoffset() == dt.timedelta(hours=8)
    await sandbox.notifier.idle()
    assert [n["status"] for n in sandbox.ledger.notifications("wechat")] == ["delivered"]


async def test_jsapi_sign_package_verifies_with_the_merchant_key(wechat):
    started = await wechat.create(order("WX-JSAPI-0001", Scene.jsapi, payer_id="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"))
    p = started.pay_params
    assert p["package"].startswith("prepay_id=wx") and p["signType"] == "RSA"
    message = f"{p['appId']}\n{p['timeStamp']}\n{p['nonceStr']}\n{p['package']}\n".encode()
    public = wechat_crypto.load_private_key(WECHAT_KEY.read_bytes()).public_key()
    assert wechat_crypto.verify(public, message, p["paySign"])


async def test_jsapi_without_openid_is_refused_before_the_call(wechat):
    with pytest.raises(ChannelError) as info:
        await wechat.create(order("WX-JSAPI-0002", Scene.jsapi))
    assert info.value.code == "PARAM_ERROR"


async def test_h5_and_app(wechat):
    h5 = await wechat.create(order("WX-H5-000001", Scene.h5, client_ip="127.0.0.1"))
    assert "checkmweb?prepay_id=" in h5.pay_params["h5_url"]
    app = await wechat.create(order("WX-APP-00001", Scene.app))
    assert app.pay_params["package"] == "Sign=WXPay" and app.pay_params["prepayid"].startswith("wx")


async def test_same_order_twice_gives_the_same_prepay_and_a_changed_one_is_refused(wechat):
    first = await wechat.create(order("WX-REPEAT-01"))
    again = await wechat.create(order("WX-REPEAT-01"))
    assert first.pay_params == again.pay_params
    with pytest.raises(ChannelError) as info:
        await wechat.create(order("WX-REPEAT-01", amount=999))
    assert info.value.code == "OUT_TRADE_NO_USED"


async def test_codepay_paid_at_once(wechat):
    started = await wechat.create(order("WX-CODE-0001", Scene.codepay, auth_code="134567890123456789"))
    assert started.state is TradeState.success and started.channel_trade_no


async def test_codepay_userpaying_then_paid(sandbox, wechat):
    await admin(
        sandbox,
        "/codepay",
        {"channel": "wechat", "auth_code": "134567890000000001", "outcome": "userpaying", "after_queries": 3},
    )
    started = await wechat.create(order("WX-CODE-0002", Scene.codepay, auth_code="134567890000000001"))
    assert started.state is TradeState.success
    trade = sandbox.ledger.trade("wechat", "1230000109", "WX-CODE-0002")
    assert trade["state"] == "SUCCESS" and trade["queries"] == 3


async def test_codepay_userpaying_never_decided_is_reversed(sandbox, wechat):
    await admin(
        sandbox,
        "/codepay",
        {"channel": "wechat", "auth_code": "134567890000000002", "outcome": "userpaying", "then": "wait"},
    )
    started = await wechat.create(order("WX-CODE-0003", Scene.codepay, auth_code="134567890000000002"))
    assert started.state is TradeState.revoked
    assert (await wechat.query("WX-CODE-0003")).state is TradeState.revoked


async def test_codepay_payerror_is_reported_not_reversed(sandbox, wechat):
    await admin(
        sandbox,
        "/codepay",
        {"channel": "wechat", "auth_code": "134567890000000003", "outcome": "userpaying", "then": "payerror"},
    )
    started = await wechat.create(order("WX-CODE-0004", Scene.codepay, auth_code="134567890000000003"))
    assert started.state is TradeState.payerror


async def test_codepay_refused_barcode_raises(sandbox, wechat):
    await admin(
        sandbox,
        "/codepay",
        {"channel": "wechat", "auth_code": "134567890000000004", "outcome": "error", "code": "NOTENOUGH"},
    )
    with pytest.raises(ChannelError) as info:
        await wechat.create(order("WX-CODE-0005", Scene.codepay, auth_code="134567890000000004"))
    assert info.value.code == "NOTENOUGH" and not info.value.in_doubt


async def test_codepay_lost_answer_is_polled_not_repeated(sandbox, wechat):
    await admin(sandbox, "/faults", {"match": "wechat.create.codepay", "mode": "drop_after", "count": 1})
    started = await wechat.create(order("WX-CODE-0006", Scene.codepay, auth_code="134567890123456789"))
    assert started.state is TradeState.success


async def test_close_unpaid_and_paid(sandbox, wechat):
    await wechat.create(order("WX-CLOSE-001"))
    await wechat.close("WX-CLOSE-001")
    assert (await wechat.query("WX-CLOSE-001")).state is TradeState.closed
    await wechat.create(order("WX-CLOSE-002"))
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "WX-CLOSE-002"})
    with pytest.raises(ChannelError) as info:
        await wechat.close("WX-CLOSE-002")
    assert info.value.code == "ORDERPAID"


async def test_success_after_close_is_visible_to_query(sandbox, wechat):
    await wechat.create(order("WX-LATE-0001"))
    await wechat.close("WX-LATE-0001")
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "WX-LATE-0001", "force": True})
    assert (await wechat.query("WX-LATE-0001")).state is TradeState.success


async def test_unknown_trade_and_refund(wechat):
    assert (await wechat.query("WX-NOPE-0001")).state is TradeState.not_found
    with pytest.raises(ChannelError) as info:
        await wechat.query_refund("WX-NOPE-0001", "RF-NOPE")
    assert info.value.code == "NOT_FOUND"


async def paid(sandbox, wechat, no: str, amount: int = 10000) -> None:
    await wechat.create(order(no, amount=amount))
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": no})


async def test_partial_refunds_processing_then_success_with_callbacks(sandbox, wechat, receiver):
    await paid(sandbox, wechat, "WX-REFUND-01")
    first = await wechat.refund(
        RefundRequest("WX-REFUND-01", "RF-01-A", 3000, 10000, reason="医保结算", notify_url=receiver.url + "/refund")
    )
    assert first.state is RefundState.processing and first.refund_fen == 3000 and first.channel_refund_no
    second = await wechat.refund(RefundRequest("WX-REFUND-01", "RF-01-B", 7000, 10000, notify_url=receiver.url + "/r"))
    assert second.state is RefundState.processing
    with pytest.raises(ChannelError) as info:
        await wechat.refund(RefundRequest("WX-REFUND-01", "RF-01-C", 1, 10000))
    assert info.value.code == "INVALID_REQUEST"

    callbacks = await receiver.wait_for(2)
    notes = sorted(
        (wechat.verify_notification(c.headers, c.body) for c in callbacks), key=lambda n: n.refund.refund_fen
    )
    assert [(n.kind, n.refund.out_refund_no, n.refund.state, n.refund.refund_fen) for n in notes] == [
        ("refund", "RF-01-A", "SUCCESS", 3000),
        ("refund", "RF-01-B", "SUCCESS", 7000),
    ]
    done = await wechat.query_refund("WX-REFUND-01", "RF-01-A")
    assert done.state is RefundState.success and done.succeeded_at is not None
    assert (await wechat.query("WX-REFUND-01")).state is TradeState.refund


async def test_refund_retry_with_the_same_number_refunds_once(sandbox, wechat):
    await paid(sandbox, wechat, "WX-REFUND-02")
    await admin(sandbox, "/faults", {"match": "wechat.refund", "mode": "drop_after", "count": 1})
    request = RefundRequest("WX-REFUND-02", "RF-02", 2500, 10000)
    with pytest.raises(ChannelError) as info:
        await wechat.refund(request)
    assert info.value.in_doubt
    again = await wechat.refund(request)
    assert again.out_refund_no == "RF-02" and again.refund_fen == 2500
    assert len(sandbox.ledger.refunds("wechat")) == 1
    assert sandbox.ledger.trade("wechat", "1230000109", "WX-REFUND-02")["refunded_fen"] == 2500


async def test_held_refund_stays_processing_until_released(sandbox, wechat):
    await paid(sandbox, wechat, "WX-REFUND-03")
    await admin(sandbox, "/refunds/hold", {"channel": "wechat", "count": 1})
    started = await wechat.refund(RefundRequest("WX-REFUND-03", "RF-03", 100, 10000))
    assert started.state is RefundState.processing
    assert (await wechat.query_refund("WX-REFUND-03", "RF-03")).state is RefundState.processing
    await admin(sandbox, "/refunds/release", {"channel": "wechat", "out_refund_no": "RF-03"})
    assert (await wechat.query_refund("WX-REFUND-03", "RF-03")).state is RefundState.success


async def test_server_errors_are_retryable_and_in_doubt(sandbox, wechat):
    await admin(sandbox, "/faults", {"match": "wechat.query", "mode": "error", "status": 500, "count": 1})
    with pytest.raises(ChannelError) as info:
        await wechat.query("WX-NOPE-0002")
    assert info.value.code == "SYSTEM_ERROR" and info.value.retryable and info.value.in_doubt
    assert (await wechat.query("WX-NOPE-0002")).state is TradeState.not_found


async def test_answer_with_a_bad_signature_is_not_believed(sandbox, wechat):
    await paid(sandbox, wechat, "WX-SIG-00001")
    await admin(sandbox, "/faults", {"match": "wechat.query", "mode": "bad_signature", "count": 1})
    with pytest.raises(ChannelError) as info:
        await wechat.query("WX-SIG-00001")
    assert info.value.code == "BAD_RESPONSE_SIGNATURE"


async def test_connection_refused_is_retryable_not_in_doubt(trust, sandbox):
    from gateway.channels.wechat import WechatPayChannel
    from tests.support.channelrig import wechat_config

    channel = WechatPayChannel(wechat_config(sandbox, trust, base_url="http://127.0.0.1:9"))
    try:
        with pytest.raises(ChannelError) as info:
            await channel.query("WX-ANY-00001")
        assert info.value.retryable and not info.value.in_doubt
    finally:
        await channel.aclose()


async def test_trade_bill_download_checks_sha1_and_matches_the_published_headers(sandbox, wechat):
    await paid(sandbox, wechat, "WX-BILL-0001", 1250)
    await paid(sandbox, wechat, "WX-BILL-0002", 990)
    await wechat.refund(RefundRequest("WX-BILL-0002", "RF-BILL-1", 300, 990))
    await admin(sandbox, "/refunds/release", {"channel": "wechat"})
    await sandbox.wechat.close_tasks()
    today = sandbox.ledger.now().date()
    packed = await wechat.download_bill(today)
    text = gzip.decompress(packed).decode()
    lines = text.splitlines()
    published = (WECHAT_FIXTURES / "tradebill_all_sample.csv").read_text().splitlines()
    assert lines[0] == published[0]
    assert lines[-2] == published[-2]
    assert all(value.startswith("`") for value in lines[1].split(","))
    assert any("`WX-BILL-0001" in line for line in lines) and any("`RF-BILL-1" in line for line in lines)
    assert lines[-1].startswith("`3,`22.40,`3.00,")


async def test_tampered_bill_fails_its_hash(sandbox, wechat):
    await paid(sandbox, wechat, "WX-BILL-0003", 1250)
    await admin(sandbox, "/faults", {"match": "wechat.billdownload", "mode": "tamper", "count": 1})
    with pytest.raises(ChannelError) as info:
        await wechat.download_bill(sandbox.ledger.now().date())
    assert info.value.code == "BILL_HASH_MISMATCH" and info.value.retryable
    packed = await wechat.download_bill(sandbox.ledger.now().date())
    assert hashlib.sha1(gzip.decompress(packed)).hexdigest()


async def test_no_statement_for_a_quiet_day(wechat):
    with pytest.raises(ChannelError) as info:
        await wechat.download_bill(dt.date(2021, 1, 1))
    assert info.value.code == "NO_STATEMENT_EXIST"


async def test_codepay_request_lost_in_transit_is_polled_then_reversed(sandbox, trust):
    from gateway.channels.wechat import WechatPayChannel
    from tests.support.channelrig import wechat_config

    channel = WechatPayChannel(wechat_config(sandbox, trust, timeouts={"connect_s": 1, "total_s": 0.5}))
    try:
        await admin(sandbox, "/faults", {"match": "wechat.create.codepay", "mode": "timeout", "latency_ms": 1500})
        started = await channel.create(order("WX-CODE-0007", Scene.codepay, auth_code="134567890123456789"))
        assert started.state is TradeState.revoked
        assert sandbox.ledger.trade("wechat", "1230000109", "WX-CODE-0007") is None
    finally:
        await channel.aclose()
