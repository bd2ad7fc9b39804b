"""WeChat Pay platform keys: certificates downloaded from /v3/certificates (decrypted with the APIv3 key, the
answer verified), refreshed when the platform rotates, kept in the channel state for other instances, never
trusted outside their validity; a payment callback must name the configured appid."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from gateway.channels import wechat_crypto
from gateway.channels.base import ChannelError, NotificationRejected, PaymentRequest, Scene
from gateway.channels.state import MemoryState
from gateway.channels.wechat import WechatPayChannel
from gateway.channels.wechat_crypto import PlatformKey, WechatSignatureError, WechatVerifier
from sandbox.channels import crypto as sandbox_crypto
from sandbox.channels.wechat import WechatPlatform
from tests.gateway.channels.test_wechat_callbacks import admin, paid_callback, sandbox_callback
from tests.support.channelrig import WECHAT_APPID, WECHAT_MCHID, wechat_config


@pytest.fixture(scope="module")
def platform():
    """These tests rotate the platform certificate: their own identity, not the session's."""
    return WechatPlatform.generate(WECHAT_MCHID)


def reason(channel, headers, body, **kw) -> str:
    with pytest.raises(NotificationRejected) as info:
        channel.verify_notification(headers, body, **kw)
    return info.value.reason


async def test_the_download_brings_every_published_certificate(sandbox, trust):
    sandbox.wechat.platform.mode = "certificate"
    published = sandbox.wechat.platform.rotate(WECHAT_MCHID)
    state = MemoryState()
    channel = WechatPayChannel(wechat_config(sandbox, trust, mode="certificate"), state=state)
    try:
        assert await channel.refresh_trust(force=True)
        serials = {f"{published.serial_number:X}", sandbox.wechat.platform.cert_serial}
        assert serials <= set(channel.verifier.serials)
        assert {c.serial for c in await state.certificates()} == serials
        assert not await channel.refresh_trust(), "rate-limited: no second download within min_interval_s"
    finally:
        await channel.aclose()


async def test_another_instance_takes_up_what_one_downloaded(sandbox, trust):
    sandbox.wechat.platform.mode = "certificate"
    new = sandbox.wechat.platform.rotate(WECHAT_MCHID)
    state = MemoryState()
    first = WechatPayChannel(wechat_config(sandbox, trust, mode="certificate"), state=state)
    second = WechatPayChannel(
        wechat_config(sandbox, trust, mode="certificate", download_certificates=False), state=state
    )
    try:
        await first.refresh_trust(force=True)
        assert f"{new.serial_number:X}" not in second.verifier.serials
        await second.load_trust()
        assert f"{new.serial_number:X}" in second.verifier.serials
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_callback_signed_by_the_next_certificate_verifies_after_refresh(sandbox, trust, wechat, receiver):
    sandbox.wechat.platform.mode = "certificate"
    new = sandbox.wechat.platform.rotate(WECHAT_MCHID)
    await admin(sandbox, "/wechat/rotate", {"serial": f"{new.serial_number:X}"})
    cb = await paid_callback(sandbox, wechat, receiver, "WX-ROT-000001")
    assert cb.headers["Wechatpay-Serial"] == f"{new.serial_number:X}"
    assert wechat.verify_notification(cb.headers, cb.body).kind == "payment"


async def test_an_expired_platform_certificate_is_never_trusted(sandbox):
    key = sandbox_crypto.new_rsa_key()
    cert = sandbox_crypto.platform_certificate(key, WECHAT_MCHID, days=1)
    pub = PlatformKey.of_certificate(cert)
    verifier = WechatVerifier([pub])
    body = b'{"x":1}'
    stamp = str(int(time.time()))
    headers = {
        "Wechatpay-Timestamp": stamp,
        "Wechatpay-Nonce": "n",
        "Wechatpay-Serial": pub.serial,
        "Wechatpay-Signature": sandbox_crypto.rsa_sign(key, f"{stamp}\nn\n".encode() + body + b"\n"),
    }
    assert verifier.check(headers, body) == pub.serial
    later = time.time() + 2 * 86400
    with pytest.raises(WechatSignatureError) as info:
        verifier.check(dict(headers, **{"Wechatpay-Timestamp": str(int(later))}), body, now=later)
    assert info.value.reason == "expired_certificate"


async def test_the_download_drops_expired_and_refuses_an_unsealed_answer(sandbox, trust):
    sandbox.wechat.platform.mode = "certificate"
    channel = WechatPayChannel(wechat_config(sandbox, trust, mode="certificate"))
    try:
        reply = await channel._call("GET", "/v3/certificates")
        answer = json.loads(reply.body)
        assert wechat_crypto.open_certificates(answer, channel._apiv3_key, now=time.time() + 10 * 365 * 86400) == []
        with pytest.raises(WechatSignatureError) as info:
            wechat_crypto.open_certificates(answer, b"0123456789abcdef0123456789abcdef")
        assert info.value.reason == "bad_tag"
        lying = {"data": [dict(answer["data"][0], serial_no="ABCDEF")]}
        with pytest.raises(WechatSignatureError):
            wechat_crypto.open_certificates(lying, channel._apiv3_key)
    finally:
        await channel.aclose()


async def test_a_forged_certificates_answer_teaches_nothing(sandbox, trust):
    """An answer whose signature is spoiled is refused even though its certificates decrypt."""
    sandbox.wechat.platform.mode = "certificate"
    sandbox.wechat.platform.rotate(WECHAT_MCHID)
    await admin(sandbox, "/faults", {"match": "wechat.certificates", "mode": "bad_signature", "count": 1})
    channel = WechatPayChannel(wechat_config(sandbox, trust, mode="certificate"))
    try:
        before = set(channel.verifier.serials)
        with pytest.raises(ChannelError) as info:
            await channel.refresh_trust(force=True)
        assert info.value.code == "BAD_RESPONSE_SIGNATURE"
        assert set(channel.verifier.serials) == before
    finally:
        await channel.aclose()


async def test_a_payment_callback_without_appid_is_refused(sandbox, wechat):
    resource = {"mchid": WECHAT_MCHID, "out_trade_no": "X", "trade_state": "SUCCESS", "amount": {"total": 1}}
    headers, body = sandbox_callback(sandbox, resource)
    assert reason(wechat, headers, body) == "wrong_merchant"
    headers, body = sandbox_callback(sandbox, dict(resource, appid=WECHAT_APPID))
    assert wechat.verify_notification(headers, body).trade.out_trade_no == "X"


async def test_a_refund_callback_carries_no_appid_and_is_accepted(sandbox, wechat):
    resource = {
        "mchid": WECHAT_MCHID,
        "out_trade_no": "X",
        "out_refund_no": "XR",
        "refund_id": "5030",
        "refund_status": "SUCCESS",
        "amount": {"refund": 1, "total": 1},
    }
    headers, body = sandbox_callback(sandbox, resource, "REFUND.SUCCESS")
    assert wechat.verify_notification(headers, body).refund.out_refund_no == "XR"


async def test_key_inventory_names_every_key(sandbox, trust):
    channel = WechatPayChannel(wechat_config(sandbox, trust))
    try:
        rows = channel.key_inventory(dt.datetime.now(dt.UTC))
        roles = {(r.role.value, r.id) for r in rows}
        assert ("signs", "default") in roles and ("verifies", "platform-certificate") in roles
        assert ("verifies", "wechatpay-public-key") in roles
        cert_row = next(r for r in rows if r.id == "platform-certificate")
        assert cert_row.serial == sandbox.wechat.platform.cert_serial and cert_row.not_after is not None
        await channel.create(PaymentRequest("WX-INV-000001", 1, "x", Scene.native, "http://127.0.0.1:9/"))
    finally:
        await channel.aclose()
