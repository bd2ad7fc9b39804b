"""``his-sandbox channels`` as a process: keys land in the state dir, a gateway channel configured from them works,
and the same keys are reused on the next start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import aiohttp
import pytest

from bridge.settings import Secret
from gateway.channels.alipay import AlipayChannel
from gateway.channels.base import PaymentRequest, Scene, TradeState
from gateway.channels.config import AlipayConfig, MerchantKey, UnionPayConfig, WechatConfig
from gateway.channels.unionpay import UnionPayChannel
from gateway.channels.wechat import WechatPayChannel
from tests.support.channelrig import (
    ALIPAY_APP_ID,
    ALIPAY_APP_PRIVATE,
    ALIPAY_APP_PUBLIC,
    ALIPAY_SELLER_ID,
    APIV3_KEY,
    UNIONPAY_MER_ID,
    WECHAT_APPID,
    WECHAT_KEY,
    WECHAT_MCHID,
    WECHAT_SERIAL,
)

pytestmark = pytest.mark.system


async def start(tmp_path, state) -> tuple[asyncio.subprocess.Process, str]:
    merchant_pub = tmp_path / "merchant_pub.pem"
    if not merchant_pub.exists():
        from sandbox.channels import crypto

        merchant_pub.write_bytes(crypto.public_pem(crypto.load_private(WECHAT_KEY).public_key()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox.cli", "channels", "--listen", "127.0.0.1:0", "--state-dir", str(state),
        "--wechat-mchid", WECHAT_MCHID, "--wechat-appid", WECHAT_APPID, "--wechat-merchant-serial", WECHAT_SERIAL,
        "--wechat-merchant-key", str(merchant_pub), "--alipay-app-id", ALIPAY_APP_ID,
        "--alipay-app-public-key", str(ALIPAY_APP_PUBLIC), "--unionpay-mer-id", UNIONPAY_MER_ID,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "WECHAT_APIV3_KEY": APIV3_KEY},
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    match = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
    assert match, line
    return proc, match.group(1)


async def stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_serve_from_the_command_line(tmp_path):
    state = tmp_path / "state"
    proc, base = await start(tmp_path, state)
    try:
        (tmp_path / "apiv3.key").write_text(APIV3_KEY)
        wechat = WechatPayChannel(
            WechatConfig(
                mchid=WECHAT_MCHID,
                appid=WECHAT_APPID,
                merchant_serial_no=WECHAT_SERIAL,
                private_key_file=WECHAT_KEY,
                apiv3_key=Secret(file=tmp_path / "apiv3.key"),
                platform_certificates=[state / "wechatpay_platform_cert.pem"],
                public_key_file=state / "wechatpay_public_key.pem",
                public_key_id=(state / "wechatpay_public_key_id.txt").read_text().strip(),
                base_url=base,
            )
        )
        alipay = AlipayChannel(
            AlipayConfig(
                app_id=ALIPAY_APP_ID,
                app_private_key_file=ALIPAY_APP_PRIVATE,
                alipay_public_key_file=state / "alipay_public_key.pem",
                seller_id=ALIPAY_SELLER_ID,
                gateway_url=base + "/gateway.do",
            )
        )
        unionpay = UnionPayChannel(
            UnionPayConfig(
                mer_id=UNIONPAY_MER_ID,
                merchant_keys=[
                    MerchantKey(
                        id="enrolled",
                        private_key_file=state / "unionpay_merchant_sign.pfx",
                        password=Secret(file=state / "unionpay_merchant_sign.pw"),
                    )
                ],
                root_cert_file=state / "unionpay_root.cer",
                middle_cert_file=state / "unionpay_middle.cer",
                base_url=base,
                file_url=base + "/unionpay/filedownload/",
            )
        )
        try:
            started = await wechat.create(PaymentRequest("CLI-SBX-0001", 100, "x", Scene.native, "http://127.0.0.1:9/"))
            assert started.state is TradeState.notpay
            async with aiohttp.ClientSession() as http, http.get(base + "/_admin/healthz") as resp:
                assert (await resp.json()) == {"ok": True, "wechat": True, "alipay": True, "unionpay": True}
            assert (await alipay.query("CLI-SBX-0002")).state is TradeState.not_found
            started = await unionpay.create(PaymentRequest("CLISBX0003", 100, "x", Scene.native, "http://127.0.0.1:9/"))
            assert started.pay_params["qr_code"].startswith("https://qr.95516.com/")
        finally:
            await wechat.aclose()
            await alipay.aclose()
            await unionpay.aclose()
    finally:
        await stop(proc)
    cert = (state / "wechatpay_platform_cert.pem").read_bytes()
    pfx = (state / "unionpay_merchant_sign.pfx").read_bytes()
    assert oct((state / "wechatpay_platform_key.pem").stat().st_mode & 0o777) == "0o600"
    assert oct((state / "unionpay_merchant_sign.pfx").stat().st_mode & 0o777) == "0o600"
    proc, _ = await start(tmp_path, state)
    await stop(proc)
    assert (state / "wechatpay_platform_cert.pem").read_bytes() == cert
    assert (state / "unionpay_merchant_sign.pfx").read_bytes() == pfx
