"""The public SDK against the sandbox's key rotation: wechatpayv3 (WeChatPay) downloads every published platform
certificate, and verifies a callback signed by the next one after its own refresh — the sandbox rotates the way
WeChat Pay does, as the SDK expects."""

from __future__ import annotations

import asyncio

import pytest

from sandbox.channels.wechat import WechatPlatform
from tests.gateway.channels.test_sdk_crosscheck import admin, wechat_sdk
from tests.support.channelrig import WECHAT_MCHID


@pytest.fixture(scope="module")
def platform():
    """This module rotates the platform certificate: its own identity, not the session's."""
    return WechatPlatform.generate(WECHAT_MCHID)


async def test_wechatpayv3_follows_a_platform_certificate_rotation(sandbox, tmp_path, receiver):
    sandbox.wechat.platform.mode = "certificate"
    sdk = wechat_sdk(sandbox, tmp_path, receiver)
    old = sandbox.wechat.platform.cert_serial
    rotated = await admin(sandbox, "/wechat/rotate", {"activate": True})
    assert rotated["signing"] != old and set(rotated["published"]) == {old, rotated["signing"]}

    code, message = await asyncio.to_thread(
        sdk.pay, description="x", out_trade_no="SDK-WX-ROT01", amount={"total": 100, "currency": "CNY"}
    )
    assert code == 200, message
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "SDK-WX-ROT01"})
    (cb,) = await receiver.wait_for(1)
    assert cb.headers["Wechatpay-Serial"] == rotated["signing"]
    result = await asyncio.to_thread(sdk.callback, cb.headers, cb.body)
    assert result is not None and result["resource"]["out_trade_no"] == "SDK-WX-ROT01"
    downloaded = {f"{c.serial_number:X}" for c in sdk._core._certificates}
    assert downloaded == {old, rotated["signing"]}
