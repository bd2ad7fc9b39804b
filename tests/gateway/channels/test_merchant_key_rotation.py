"""A merchant key rotated while payments run, for each channel: the new key is registered with the channel
first, configured next to the old one with a ``valid_from`` a moment away, and payments keep being created
across the switch. None fails; the channel saw both keys, and after the switch only the new one."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets

import aiohttp
import pytest

from gateway.channels.alipay import AlipayChannel
from gateway.channels.base import Channel, ChannelError, PaymentRequest, Scene
from gateway.channels.keys import KeyStatus
from gateway.channels.unionpay import UnionPayChannel
from gateway.channels.wechat import WechatPayChannel
from sandbox.channels import crypto as sandbox_crypto
from tests.support.channelrig import (
    ALIPAY_APP_PRIVATE,
    WECHAT_KEY,
    WECHAT_SERIAL,
    alipay_config,
    unionpay_config,
    wechat_config,
)
from tests.support.channelrig import unionpay_key as make_unionpay_key
from tests.support.gateway_rig import eventually

SWITCH_IN = dt.timedelta(seconds=0.8)


async def admin(sandbox, path: str, body: dict | None = None, *, method: str = "POST") -> dict:
    async with aiohttp.ClientSession() as http, http.request(method, sandbox.admin_url + path, json=body) as resp:
        data = await resp.json()
        assert resp.status < 300, data
        return data


def new_pem_key(path) -> bytes:
    key = sandbox_crypto.new_rsa_key()
    path.write_bytes(sandbox_crypto.private_pem(key))
    return sandbox_crypto.public_pem(key.public_key())


async def pay_across_the_switch(sandbox, channel: Channel, channel_name: str, new_id: str, prefix: str) -> None:
    """Create payments four at a time until the channel has seen the new key sign a whole batch."""
    failures: list[BaseException] = []
    made = 0

    async def batch() -> list[str]:
        nonlocal made
        numbers = [f"{prefix}{made + i:08d}" for i in range(4)]
        made += 4
        results = await asyncio.gather(
            *(channel.create(PaymentRequest(n, 100, "x", Scene.native, "http://127.0.0.1:9/n")) for n in numbers),
            return_exceptions=True,
        )
        failures.extend(r for r in results if isinstance(r, BaseException))
        return numbers

    async def switched() -> bool:
        before = dict(sandbox_signers(sandbox, channel_name))
        await batch()
        after = sandbox_signers(sandbox, channel_name)
        return after.get(new_id, 0) - before.get(new_id, 0) == 4 and len(after) == 2

    await eventually(switched, timeout_s=30, what="a whole batch signed by the new key")
    assert failures == [], failures
    assert made >= 8


def sandbox_signers(sandbox, channel_name: str) -> dict[str, int]:
    server = {"wechat": sandbox.wechat, "alipay": sandbox.alipay, "unionpay": sandbox.unionpay}[channel_name]
    return dict(server.signed_with)


def window() -> dict[str, object]:
    return {"valid_from": (dt.datetime.now(dt.UTC) + SWITCH_IN).isoformat()}


async def test_wechat_merchant_key(sandbox, trust, tmp_path):
    serial = secrets.token_hex(20).upper()
    public = new_pem_key(tmp_path / "new_apiclient_key.pem")
    await admin(
        sandbox, "/merchant-keys", {"channel": "wechat", "serial_no": serial, "public_key_pem": public.decode()}
    )
    keys = [
        {"id": "2024", "private_key_file": str(WECHAT_KEY), "serial": WECHAT_SERIAL},
        {"id": "2026", "private_key_file": str(tmp_path / "new_apiclient_key.pem"), "serial": serial, **window()},
    ]
    channel = WechatPayChannel(
        wechat_config(sandbox, trust, merchant_keys=keys, merchant_serial_no=None, private_key_file=None)
    )
    try:
        await pay_across_the_switch(sandbox, channel, "wechat", serial, "WXROT")
        states = {k.id: k.status for k in channel.key_inventory(dt.datetime.now(dt.UTC)) if k.role.value == "signs"}
        assert states == {"2024": KeyStatus.superseded, "2026": KeyStatus.active}
    finally:
        await channel.aclose()


async def test_alipay_app_key(sandbox, tmp_path):
    public = new_pem_key(tmp_path / "app_2026.pem")
    await admin(sandbox, "/merchant-keys", {"channel": "alipay", "public_key_pem": public.decode()})
    keys = [
        {"id": "2024", "private_key_file": str(ALIPAY_APP_PRIVATE)},
        {"id": "2026", "private_key_file": str(tmp_path / "app_2026.pem"), **window()},
    ]
    channel = AlipayChannel(alipay_config(sandbox, merchant_keys=keys, app_private_key_file=None))
    try:
        await pay_across_the_switch(sandbox, channel, "alipay", "key1", "ALIROT")
    finally:
        await channel.aclose()


async def test_unionpay_signing_certificate(sandbox, unionpay_trust, unionpay_key, unionpay_identity, tmp_path):
    new = make_unionpay_key(unionpay_identity, tmp_path / "new", name="sign2026")
    await admin(sandbox, "/merchant-keys", {"channel": "unionpay", "certificate_pem": new.certificate_pem.decode()})
    both = [unionpay_key.record(), new.record(**window())]
    channel = UnionPayChannel(unionpay_config(sandbox, unionpay_trust, [unionpay_key], merchant_keys=both))
    try:
        await pay_across_the_switch(sandbox, channel, "unionpay", new.cert_id, "UPROT")
    finally:
        await channel.aclose()


async def test_a_key_not_registered_with_the_channel_fails_loudly(sandbox, trust, tmp_path):
    """What the overlap protects against: switching to a key the channel does not know yet."""
    new_pem_key(tmp_path / "unregistered.pem")
    keys = [
        {"id": "2026", "private_key_file": str(tmp_path / "unregistered.pem"), "serial": secrets.token_hex(20).upper()}
    ]
    channel = WechatPayChannel(
        wechat_config(sandbox, trust, merchant_keys=keys, merchant_serial_no=None, private_key_file=None)
    )
    try:
        with pytest.raises(ChannelError) as info:
            await channel.create(PaymentRequest("WXUNREG00001", 100, "x", Scene.native, "http://127.0.0.1:9/n"))
        assert info.value.code == "SIGN_ERROR"
    finally:
        await channel.aclose()


async def test_no_key_may_sign_before_its_valid_from(sandbox, trust):
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    keys = [{"id": "next", "private_key_file": str(WECHAT_KEY), "serial": WECHAT_SERIAL, "valid_from": later}]
    channel = WechatPayChannel(
        wechat_config(sandbox, trust, merchant_keys=keys, merchant_serial_no=None, private_key_file=None)
    )
    try:
        with pytest.raises(ChannelError) as info:
            await channel.query("WXNOKEY00001")
        assert info.value.code == "NO_SIGNING_KEY"
        (row,) = [k for k in channel.key_inventory(dt.datetime.now(dt.UTC)) if k.role.value == "signs"]
        assert row.status is KeyStatus.standby
    finally:
        await channel.aclose()
