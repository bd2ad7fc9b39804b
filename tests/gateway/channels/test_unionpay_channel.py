"""Our UnionPay client against the sandbox UnionPay over real sockets: QR and payment-code consumes, query,
same-day cancel, partial and full refunds finishing by back-notification, reversal, the reconciliation file;
notifications genuine, tampered, forged, from another chain, for another merchant, stale and replayed."""

from __future__ import annotations

import datetime as dt
import time
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
from aiohttp import web

from gateway.channels.base import (
    ChannelError,
    NotificationRejected,
    PaymentRequest,
    RefundRequest,
    RefundState,
    Scene,
    TradeState,
)
from gateway.channels.state import MemoryState
from gateway.channels.unionpay import UnionPayChannel
from gateway.recon.statements import unionpay as unionpay_file
from sandbox.channels import crypto as sandbox_crypto
from sandbox.channels import pki
from sandbox.channels.unionpay import UnionPayIdentity, sign
from tests.support.channelrig import UNIONPAY_MER_ID, unionpay_config


async def admin(sandbox, path: str, body: dict | None = None, *, method: str = "POST", expect: int | None = None):
    async with aiohttp.ClientSession() as http, http.request(method, f"{sandbox.admin_url}{path}", json=body) as resp:
        data = await resp.json()
        assert resp.status == expect if expect is not None else resp.status < 300, data
        return data


def order(no: str, scene: Scene = Scene.native, amount: int = 1250, **kw) -> PaymentRequest:
    kw.setdefault("notify_url", "http://127.0.0.1:9/notify")
    return PaymentRequest(out_trade_no=no, amount_fen=amount, description="门诊缴费", scene=scene, **kw)


def fields_of(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode(), keep_blank_values=True))


async def paid_by_qr(sandbox, unionpay, receiver, no: str, amount: int = 1250):
    started = await unionpay.create(order(no, amount=amount, notify_url=f"{receiver.url}/up"))
    seen = len(receiver.received)
    await admin(sandbox, "/payer/pay", {"channel": "unionpay", "out_trade_no": no})
    return started, (await receiver.wait_for(seen + 1))[seen]


async def test_qr_consume_pay_notify_query(sandbox, unionpay, receiver):
    started, cb = await paid_by_qr(sandbox, unionpay, receiver, "UPQR00000001")
    assert started.state is TradeState.notpay and started.pay_params["qr_code"].startswith("https://qr.95516.com/")
    note = unionpay.verify_notification(cb.headers, cb.body)
    assert note.kind == "payment" and note.trade is not None
    assert note.trade.state is TradeState.success and note.trade.amount_fen == 1250
    assert note.trade.out_trade_no == "UPQR00000001" and len(note.trade.channel_trade_no or "") == 21
    status = await unionpay.query("UPQR00000001")
    assert status.state is TradeState.success and status.channel_trade_no == note.trade.channel_trade_no
    assert status.amount_fen == 1250 and status.paid_at is not None
    with pytest.raises(ChannelError) as info:
        await unionpay.close("UPQR00000001")
    assert info.value.code == "ORDERPAID"
    sent = fields_of(cb.body)
    assert sent["txnAmt"] == "1250" and sent["merId"] == UNIONPAY_MER_ID and sent["signMethod"] == "01"


async def test_an_unpaid_qr_is_unknown_and_expires(sandbox, unionpay):
    expires = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await unionpay.create(order("UPQR00000002", expires_at=expires))
    assert (await unionpay.query("UPQR00000002")).state is TradeState.not_found
    await unionpay.close("UPQR00000002")
    await admin(sandbox, "/payer/pay", {"channel": "unionpay", "out_trade_no": "UPQR00000002"}, expect=409)
    assert (await unionpay.query("NEVERSENT001")).state is TradeState.not_found


async def test_order_ids_and_scenes_unionpay_cannot_take_are_refused(unionpay):
    with pytest.raises(ChannelError) as info:
        await unionpay.create(order("UP-QR-0003"))
    assert info.value.code == "PARAM_ERROR" and "letters and digits" in info.value.message
    with pytest.raises(ChannelError) as info:
        await unionpay.create(order("UPJSAPI00001", Scene.jsapi, payer_id="x"))
    assert info.value.code == "PARAM_ERROR"


async def test_payment_code_paid_at_once_and_after_a_password(sandbox, unionpay):
    started = await unionpay.create(order("UPPC00000001", Scene.codepay, auth_code="6212345678901234567"))
    assert started.state is TradeState.success and started.channel_trade_no
    await admin(
        sandbox,
        "/codepay",
        {"channel": "unionpay", "auth_code": "6299999999999999999", "outcome": "userpaying", "after_queries": 2},
    )
    started = await unionpay.create(order("UPPC00000002", Scene.codepay, auth_code="6299999999999999999"))
    assert started.state is TradeState.success


async def test_payment_code_never_confirmed_is_reversed(sandbox, unionpay):
    await admin(
        sandbox,
        "/codepay",
        {"channel": "unionpay", "auth_code": "6288888888888888888", "outcome": "userpaying", "then": "wait"},
    )
    started = await unionpay.create(order("UPPC00000003", Scene.codepay, auth_code="6288888888888888888"))
    assert started.state is TradeState.revoked
    trade = next(t for t in sandbox.ledger.trades("unionpay") if t["out_trade_no"] == "UPPC00000003")
    assert trade["state"] == "REVOKED"


async def test_payment_code_refused(sandbox, unionpay):
    await admin(
        sandbox,
        "/codepay",
        {"channel": "unionpay", "auth_code": "6277777777777777777", "outcome": "error", "message": "余额不足"},
    )
    with pytest.raises(ChannelError) as info:
        await unionpay.create(order("UPPC00000004", Scene.codepay, auth_code="6277777777777777777"))
    assert not info.value.retryable and "余额不足" in info.value.message


async def test_partial_refunds_then_the_rest_finish_by_notification(sandbox, unionpay, receiver):
    await paid_by_qr(sandbox, unionpay, receiver, "UPRF00000001", amount=3000)
    notify = f"{receiver.url}/refund"
    first = await unionpay.refund(RefundRequest("UPRF00000001", "UPRFR0000001", 1000, 3000, "医保", notify))
    assert first.state is RefundState.processing and first.refund_fen == 1000
    second = await unionpay.refund(RefundRequest("UPRF00000001", "UPRFR0000002", 500, 3000, None, notify))
    assert second.state is RefundState.processing
    with pytest.raises(ChannelError) as info:
        await unionpay.refund(RefundRequest("UPRF00000001", "UPRFR0000003", 1600, 3000, None, notify))
    assert "36" in info.value.code and not info.value.retryable
    rest = await unionpay.refund(RefundRequest("UPRF00000001", "UPRFR0000004", 1500, 3000, None, notify))
    assert rest.state is RefundState.processing
    arrived = await receiver.wait_for(4)
    refunds = [unionpay.verify_notification(r.headers, r.body) for r in arrived[1:]]
    assert sorted((n.refund.out_refund_no, n.refund.refund_fen) for n in refunds if n.refund) == [
        ("UPRFR0000001", 1000),
        ("UPRFR0000002", 500),
        ("UPRFR0000004", 1500),
    ]
    assert all(n.kind == "refund" and n.refund and n.refund.out_trade_no == "UPRF00000001" for n in refunds)
    for no, fen in (("UPRFR0000001", 1000), ("UPRFR0000004", 1500)):
        status = await unionpay.query_refund("UPRF00000001", no)
        assert status.state is RefundState.success and status.refund_fen == fen and status.channel_refund_no
    assert [f["txnType"] for f in (fields_of(r.body) for r in arrived[1:])] == ["04", "04", "04"]
    again = await unionpay.refund(RefundRequest("UPRF00000001", "UPRFR0000001", 1000, 3000, None, notify))
    assert again.refund_fen == 1000
    assert sum(r["amount_fen"] for r in sandbox.ledger.refunds("unionpay")) == 3000


async def test_a_same_day_full_refund_is_a_consume_cancel(sandbox, unionpay, receiver):
    await paid_by_qr(sandbox, unionpay, receiver, "UPCN00000001", amount=800)
    status = await unionpay.refund(RefundRequest("UPCN00000001", "UPCNR0000001", 800, 800, None, receiver.url + "/c"))
    assert status.state is RefundState.processing
    (_, cb) = await receiver.wait_for(2)
    assert fields_of(cb.body)["txnType"] == "31"
    note = unionpay.verify_notification(cb.headers, cb.body)
    assert note.refund is not None and note.refund.state is RefundState.success and note.refund.refund_fen == 800
    assert (await unionpay.query_refund("UPCN00000001", "UPCNR0000001")).state is RefundState.success


async def test_a_refund_never_sent_is_not_found(unionpay):
    with pytest.raises(ChannelError) as info:
        await unionpay.query_refund("UPX000000001", "UPXR00000001")
    assert info.value.code == "NOT_FOUND"


async def test_a_held_refund_stays_processing_until_released(sandbox, unionpay, receiver):
    await paid_by_qr(sandbox, unionpay, receiver, "UPHD00000001", amount=600)
    await admin(sandbox, "/refunds/hold", {"channel": "unionpay", "count": 1})
    await unionpay.refund(RefundRequest("UPHD00000001", "UPHDR0000001", 100, 600, None, receiver.url + "/h"))
    assert (await unionpay.query_refund("UPHD00000001", "UPHDR0000001")).state is RefundState.processing
    await admin(sandbox, "/refunds/release", {"channel": "unionpay", "out_refund_no": "UPHDR0000001"})
    assert (await unionpay.query_refund("UPHD00000001", "UPHDR0000001")).state is RefundState.success


async def test_the_order_time_is_what_makes_a_query_possible(sandbox, unionpay_trust, unionpay_key, receiver, unionpay):
    """UnionPay asks for orderId *and* txnTime: a client that lost the time cannot find its own order."""
    await paid_by_qr(sandbox, unionpay, receiver, "UPTM00000001")
    forgetful = UnionPayChannel(unionpay_config(sandbox, unionpay_trust, [unionpay_key]), state=MemoryState())
    try:
        assert (await forgetful.query("UPTM00000001")).state is TradeState.not_found
    finally:
        await forgetful.aclose()
    shared = UnionPayChannel(unionpay_config(sandbox, unionpay_trust, [unionpay_key]), state=unionpay.state)
    try:
        assert (await shared.query("UPTM00000001")).state is TradeState.success
    finally:
        await shared.aclose()


def reason(channel, headers, body, **kw) -> str:
    with pytest.raises(NotificationRejected) as info:
        channel.verify_notification(headers, body, **kw)
    return info.value.reason


async def test_tampered_and_forged_notifications(sandbox, unionpay, receiver):
    _, cb = await paid_by_qr(sandbox, unionpay, receiver, "UPNT00000001", amount=100)
    fields = fields_of(cb.body)
    tampered = urlencode(dict(fields, txnAmt="10000")).encode()
    assert reason(unionpay, cb.headers, tampered) == "bad_signature"
    forger = sandbox_crypto.new_rsa_key()
    forged = dict(fields)
    forged["signature"] = sandbox_crypto.rsa_sign(forger, b"whatever")
    assert reason(unionpay, cb.headers, urlencode(forged).encode()) == "bad_signature"
    unsigned = {k: v for k, v in fields.items() if k != "signature"}
    assert reason(unionpay, cb.headers, urlencode(unsigned).encode()) == "malformed"
    assert reason(unionpay, cb.headers, b"\xff\xfe") == "malformed"


async def test_a_signpubkeycert_from_another_chain_is_refused(sandbox, unionpay, receiver):
    """A forger with a certificate shaped exactly like UnionPay's, from a root the merchant did not configure."""
    _, cb = await paid_by_qr(sandbox, unionpay, receiver, "UPNT00000002", amount=100)
    other = UnionPayIdentity.generate()
    fields = {k: v for k, v in fields_of(cb.body).items() if k not in ("signature", "signPubKeyCert")}
    fields["txnAmt"] = "100000"
    fields["signPubKeyCert"] = other.sign_pem
    fields["signature"] = sign(other.sign_key, fields)
    assert reason(unionpay, cb.headers, urlencode(fields).encode()) == "untrusted_certificate"


async def test_a_certificate_naming_someone_else_is_refused(sandbox, unionpay, receiver):
    """Issued under UnionPay's own intermediate, but its CN does not name UnionPay (a merchant's certificate)."""
    _, cb = await paid_by_qr(sandbox, unionpay, receiver, "UPNT00000003", amount=100)
    identity = sandbox.unionpay.identity
    key = sandbox_crypto.new_rsa_key()
    cert = identity.middle.issue(
        pki.name(cn="041@Z2014@700000000000001:SIGN@00000003", o="CFCA OCA1"), key.public_key()
    )
    fields = {k: v for k, v in fields_of(cb.body).items() if k not in ("signature", "signPubKeyCert")}
    fields["signPubKeyCert"] = sandbox_crypto.certificate_pem(cert).decode()
    fields["signature"] = sign(key, fields)
    assert reason(unionpay, cb.headers, urlencode(fields).encode()) == "untrusted_certificate"


async def test_another_merchants_stale_and_replayed_notifications(sandbox, unionpay, receiver):
    _, cb = await paid_by_qr(sandbox, unionpay, receiver, "UPNT00000004", amount=100)
    identity = sandbox.unionpay.identity
    fields = {k: v for k, v in fields_of(cb.body).items() if k not in ("signature", "signPubKeyCert")}
    foreign = dict(fields, merId="898000000000001", signPubKeyCert=identity.sign_pem)
    foreign["signature"] = sign(identity.sign_key, foreign)
    assert reason(unionpay, cb.headers, urlencode(foreign).encode()) == "wrong_merchant"
    assert reason(unionpay, cb.headers, cb.body, now=time.time() + 3 * 86400) == "stale"
    first = unionpay.verify_notification(cb.headers, cb.body)
    again = unionpay.verify_notification(cb.headers, cb.body)
    assert first.notification_id == again.notification_id, "a re-sent notification is the same event (inbox key)"


async def test_notifications_are_resent_until_answered_200(sandbox, unionpay, receiver):
    answers = iter([500, 503, 200])
    receiver.respond = lambda _r: web.Response(status=next(answers))
    await paid_by_qr(sandbox, unionpay, receiver, "UPNT00000005", amount=100)
    arrived = await receiver.wait_for(3)
    assert len({r.body for r in arrived}) == 1
    (record,) = [n for n in sandbox.ledger.notifications("unionpay") if n["ref"] == "UPNT00000005"]
    await receiver.wait_for(3)
    assert record["attempts"] >= 2


async def test_an_answer_with_a_bad_signature_is_in_doubt(sandbox, unionpay):
    await admin(sandbox, "/faults", {"match": "unionpay.qr", "mode": "bad_signature", "count": 1})
    with pytest.raises(ChannelError) as info:
        await unionpay.create(order("UPBS00000001"))
    assert info.value.code == "BAD_RESPONSE_SIGNATURE" and info.value.in_doubt


async def test_the_reconciliation_file(sandbox, unionpay, receiver):
    await paid_by_qr(sandbox, unionpay, receiver, "UPBL00000001", amount=2000)
    await unionpay.create(order("UPBL00000002", Scene.codepay, amount=300, auth_code="6212345678900000001"))
    notify = f"{receiver.url}/r"
    await unionpay.refund(RefundRequest("UPBL00000001", "UPBLR0000001", 500, 2000, None, notify))
    await receiver.wait_for(2)
    day = sandbox.unionpay.ledger.now()
    settle = day.date() + dt.timedelta(days=1) if day.hour >= 23 else day.date()
    data = await unionpay.download_bill(settle)
    parsed = unionpay_file.parse(data)
    pays = {r.out_trade_no: r for r in parsed.rows if r.type == "pay"}
    (refund,) = [r for r in parsed.rows if r.type == "refund"]
    assert {k: v.amount_fen for k, v in pays.items()} == {"UPBL00000001": 2000, "UPBL00000002": 300}
    assert pays["UPBL00000001"].fee_fen == 6 and pays["UPBL00000002"].fee_fen == 1
    assert (refund.out_trade_no, refund.out_refund_no, refund.amount_fen) == ("UPBL00000001", "UPBLR0000001", 500)
    assert refund.channel_trade_no == pays["UPBL00000001"].channel_trade_no and refund.fee_fen == -2
    with pytest.raises(ChannelError) as info:
        await unionpay.download_bill(settle - dt.timedelta(days=3))
    assert info.value.code == "NO_STATEMENT_EXIST"
    await admin(sandbox, "/faults", {"match": "unionpay.file", "mode": "tamper", "count": 1})
    with pytest.raises(ChannelError) as info:
        await unionpay.download_bill(settle)
    assert info.value.code == "BILL_CORRUPT"
