"""WeChat Pay callbacks: forged, tampered, stale, replayed, wrong key or merchant → NotificationRejected with the
right reason; both trust modes (platform certificate and WeChat Pay public key) configured at once."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from gateway.channels.base import ChannelError, NotificationRejected, PaymentRequest, Scene, TradeState
from gateway.channels.wechat import WechatPayChannel
from sandbox.channels import crypto as sandbox_crypto
from tests.support.channelrig import wechat_config


async def admin(sandbox, path: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as http, http.post(f"{sandbox.admin_url}{path}", json=body) as resp:
        data = await resp.json()
        assert resp.status < 300, data
        return data


async def paid_callback(sandbox, wechat, receiver, no: str):
    count = len(receiver.received) + 1
    await wechat.create(
        PaymentRequest(no, 500, "门诊缴费", Scene.native, notify_url=f"{receiver.url}/{no}", attach="visit=42")
    )
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": no})
    return (await receiver.wait_for(count))[-1]


def reason(channel, headers, body, **kw) -> str:
    with pytest.raises(NotificationRejected) as info:
        channel.verify_notification(headers, body, **kw)
    return info.value.reason


async def test_genuine_callback_verifies_once_and_a_replay_is_refused(sandbox, wechat, receiver):
    cb = await paid_callback(sandbox, wechat, receiver, "WX-CB-000001")
    note = wechat.verify_notification(cb.headers, cb.body)
    assert note.kind == "payment" and note.trade.state is TradeState.success
    assert reason(wechat, cb.headers, cb.body) == "replayed"


async def test_tampered_body_is_a_bad_signature(sandbox, wechat, receiver):
    cb = await paid_callback(sandbox, wechat, receiver, "WX-CB-000002")
    envelope = json.loads(cb.body)
    envelope["summary"] = "支付失败"
    assert reason(wechat, cb.headers, json.dumps(envelope, ensure_ascii=False).encode()) == "bad_signature"


async def test_stale_callback(sandbox, wechat, receiver):
    cb = await paid_callback(sandbox, wechat, receiver, "WX-CB-000003")
    stamp = int(cb.headers["Wechatpay-Timestamp"])
    assert reason(wechat, cb.headers, cb.body, now=stamp + 301) == "stale"
    assert reason(wechat, cb.headers, cb.body, now=stamp - 301) == "stale"
    assert wechat.verify_notification(cb.headers, cb.body, now=stamp + 299).kind == "payment"


async def test_forged_with_another_key_under_the_platform_serial(sandbox, wechat, receiver):
    cb = await paid_callback(sandbox, wechat, receiver, "WX-CB-000004")
    forger = sandbox_crypto.new_rsa_key()
    message = f"{cb.headers['Wechatpay-Timestamp']}\n{cb.headers['Wechatpay-Nonce']}\n".encode() + cb.body + b"\n"
    forged = dict(cb.headers, **{"Wechatpay-Signature": sandbox_crypto.rsa_sign(forger, message)})
    assert reason(wechat, forged, cb.body) == "bad_signature"


async def test_unknown_serial(sandbox, trust, wechat, receiver):
    sandbox.wechat.platform.mode = "certificate"
    cb = await paid_callback(sandbox, wechat, receiver, "WX-CB-000005")
    public_only = WechatPayChannel(wechat_config(sandbox, trust, mode="public_key", download_certificates=False))
    try:
        assert reason(public_only, cb.headers, cb.body) == "unknown_serial"
        with pytest.raises(ChannelError) as info:
            await public_only.query("WX-CB-000005")
        assert info.value.code == "BAD_RESPONSE_SIGNATURE" and "unknown_serial" in info.value.message
    finally:
        await public_only.aclose()


async def test_an_unknown_serial_is_learned_from_the_certificates_download(sandbox, trust, wechat, receiver):
    """A public-key merchant meeting an answer signed by a platform certificate fetches /v3/certificates once
    (the certificates are sealed with the APIv3 key) and then verifies it; the callback verifies afterwards."""
    sandbox.wechat.platform.mode = "certificate"
    cb = await paid_callback(sandbox, wechat, receiver, "WX-CB-000006")
    public_only = WechatPayChannel(wechat_config(sandbox, trust, mode="public_key"))
    try:
        assert reason(public_only, cb.headers, cb.body) == "unknown_serial"
        assert (await public_only.query("WX-CB-000006")).state is TradeState.success
        assert sandbox.wechat.platform.cert_serial in public_only.verifier.serials
        assert public_only.verify_notification(cb.headers, cb.body).trade.out_trade_no == "WX-CB-000006"
    finally:
        await public_only.aclose()


async def test_wrong_apiv3_key_is_a_bad_tag(sandbox, trust, wechat, receiver, tmp_path):
    cb = await paid_callback(sandbox, wechat, receiver, "WX-CB-000007")
    other = tmp_path / "other.key"
    other.write_text("0123456789abcdef0123456789abcdef")
    wrong = WechatPayChannel(wechat_config(sandbox, trust, apiv3_key={"file": other}))
    try:
        assert reason(wrong, cb.headers, cb.body) == "bad_tag"
    finally:
        await wrong.aclose()


def sandbox_callback(sandbox, resource: dict, event_type: str = "TRANSACTION.SUCCESS") -> tuple[dict, bytes]:
    """A callback the sandbox platform itself signs, with a resource of the test's making."""
    plaintext = json.dumps(resource).encode()
    sealed = sandbox_crypto.seal(sandbox.wechat.merchant.apiv3_key, "transaction", plaintext)
    envelope = {
        "id": "EV-test",
        "create_time": "2025-01-01T00:00:00+08:00",
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": "x",
        "resource": {"original_type": "transaction", **sealed},
    }
    body = json.dumps(envelope).encode()
    return sandbox.wechat.sign_headers(body), body


async def test_wrong_merchant(sandbox, wechat):
    resource = {"mchid": "1900000109", "appid": "wx81be3101902f7cb2", "out_trade_no": "X", "trade_state": "SUCCESS"}
    headers, body = sandbox_callback(sandbox, resource)
    assert reason(wechat, headers, body) == "wrong_merchant"
    resource = {"mchid": "1230000109", "appid": "wxother", "out_trade_no": "X", "trade_state": "SUCCESS"}
    headers, body = sandbox_callback(sandbox, resource)
    assert reason(wechat, headers, body) == "wrong_merchant"


async def test_malformed(sandbox, wechat):
    headers, body = sandbox_callback(sandbox, {"mchid": "1230000109", "trade_state": "SUCCESS"}, "SOMETHING.ELSE")
    assert reason(wechat, headers, body) == "malformed"
    missing = {k: v for k, v in headers.items() if k != "Wechatpay-Nonce"}
    assert reason(wechat, missing, body) == "malformed"
    headers = sandbox.wechat.sign_headers(b"not json")
    assert reason(wechat, headers, b"not json") == "malformed"


async def test_both_trust_modes_configured_at_once(sandbox, wechat, receiver):
    sandbox.wechat.platform.mode = "certificate"
    cb1 = await paid_callback(sandbox, wechat, receiver, "WX-CB-000008")
    assert cb1.headers["Wechatpay-Serial"] == sandbox.wechat.platform.cert_serial
    assert wechat.verify_notification(cb1.headers, cb1.body).trade.out_trade_no == "WX-CB-000008"

    await admin(sandbox, "/wechat/signing", {"mode": "public_key"})
    cb2 = await paid_callback(sandbox, wechat, receiver, "WX-CB-000009")
    assert cb2.headers["Wechatpay-Serial"].startswith("PUB_KEY_ID_")
    assert wechat.verify_notification(cb2.headers, cb2.body).trade.out_trade_no == "WX-CB-000009"
    assert (await wechat.query("WX-CB-000009")).state is TradeState.success


async def test_certificate_serial_with_leading_zeros_is_the_same_key(sandbox, wechat, receiver):
    sandbox.wechat.platform.mode = "certificate"
    cb = await paid_callback(sandbox, wechat, receiver, "WX-CB-000010")
    padded = dict(cb.headers, **{"Wechatpay-Serial": "00" + cb.headers["Wechatpay-Serial"].lower()})
    assert wechat.verify_notification(padded, cb.body).kind == "payment"


async def test_acknowledgements(wechat):
    ok = wechat.acknowledge(True)
    assert ok.status == 204 and ok.body == b""
    nok = wechat.acknowledge(False)
    assert nok.status == 500 and json.loads(nok.body)["code"] == "FAIL"


async def test_merchant_failure_answers_are_retried_and_each_delivery_is_signed_anew(sandbox, wechat, receiver):
    from aiohttp import web

    answers = iter([500, 500, 204])
    receiver.respond = lambda _r: web.Response(status=next(answers))
    await wechat.create(PaymentRequest("WX-CB-000011", 500, "x", Scene.native, f"{receiver.url}/retry"))
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "WX-CB-000011"})
    deliveries = await receiver.wait_for(3)
    await sandbox.notifier.idle()
    ids = {json.loads(d.body)["id"] for d in deliveries}
    assert len(ids) == 1
    assert len({d.headers["Wechatpay-Nonce"] for d in deliveries}) == 3
    notes = [wechat.verify_notification(d.headers, d.body) for d in deliveries]
    assert {n.notification_id for n in notes} == ids
    (record,) = sandbox.ledger.notifications("wechat")
    assert (record["status"], record["attempts"]) == ("delivered", 3)


async def test_lost_and_duplicated_callbacks(sandbox, wechat, receiver):
    await admin(sandbox, "/faults", {"kind": "notify", "mode": "lost", "match": "wechat.payment", "count": 1})
    await wechat.create(PaymentRequest("WX-CB-000012", 500, "x", Scene.native, f"{receiver.url}/lost"))
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "WX-CB-000012"})
    await sandbox.notifier.idle()
    assert receiver.received == []
    assert (await wechat.query("WX-CB-000012")).state is TradeState.success

    await admin(sandbox, "/faults", {"kind": "notify", "mode": "duplicate", "match": "wechat.payment", "count": 1})
    await wechat.create(PaymentRequest("WX-CB-000013", 500, "x", Scene.native, f"{receiver.url}/dup"))
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "WX-CB-000013"})
    deliveries = await receiver.wait_for(2)
    notes = [wechat.verify_notification(d.headers, d.body) for d in deliveries]
    assert notes[0].notification_id == notes[1].notification_id


async def test_a_bad_signature_callback_is_refused_and_retried(sandbox, wechat, receiver):
    await admin(sandbox, "/faults", {"kind": "notify", "mode": "bad_signature", "match": "wechat.payment", "count": 1})
    receiver.respond = lambda _r: web.Response(status=500)
    await wechat.create(PaymentRequest("WX-CB-000014", 500, "x", Scene.native, f"{receiver.url}/forged"))
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "WX-CB-000014"})
    deliveries = await receiver.wait_for(2)
    assert {reason(wechat, d.headers, d.body) for d in deliveries} == {"bad_signature"}
    (record,) = sandbox.ledger.notifications("wechat")
    assert record["status"] == "pending" and record["attempts"] >= 1
