from __future__ import annotations

import pytest

from gateway.channels.alipay import AlipayChannel
from gateway.channels.unionpay import UnionPayChannel
from gateway.channels.wechat import WechatPayChannel
from sandbox.channels import start_sandbox_channels
from sandbox.channels.unionpay import UnionPayIdentity
from sandbox.channels.wechat import WechatPlatform
from tests.support.channelrig import (
    alipay_config,
    alipay_settings,
    start_receiver,
    unionpay_config,
    unionpay_settings,
    wechat_config,
    wechat_settings,
    write_unionpay_trust,
    write_wechat_trust,
)
from tests.support.channelrig import (
    unionpay_key as make_unionpay_key,
)


@pytest.fixture(scope="session")
def platform():
    """Generating RSA keys is slow: one WeChat platform identity for the whole run."""
    return WechatPlatform.generate("1230000109")


@pytest.fixture(scope="session")
def unionpay_identity():
    """UnionPay's CA and signing certificate for the whole run (tests that rotate it make their own)."""
    return UnionPayIdentity.generate()


@pytest.fixture(scope="session")
def unionpay_key(unionpay_identity, tmp_path_factory):
    return make_unionpay_key(unionpay_identity, tmp_path_factory.mktemp("unionpay-keys"))


@pytest.fixture
async def sandbox(tmp_path, platform, unionpay_identity, unionpay_key):
    channels = await start_sandbox_channels(
        wechat=wechat_settings(platform=platform),
        alipay=alipay_settings(),
        unionpay=unionpay_settings(unionpay_identity, [unionpay_key]),
        db_path=tmp_path / "channels.sqlite3",
    )
    yield channels
    await channels.close()


@pytest.fixture
def trust(sandbox, tmp_path):
    return write_wechat_trust(sandbox, tmp_path / "trust")


@pytest.fixture
async def wechat(sandbox, trust):
    channel = WechatPayChannel(wechat_config(sandbox, trust))
    yield channel
    await channel.aclose()


@pytest.fixture
async def alipay(sandbox):
    channel = AlipayChannel(alipay_config(sandbox))
    yield channel
    await channel.aclose()


@pytest.fixture
async def receiver():
    r = await start_receiver()
    yield r
    await r.close()


@pytest.fixture
def unionpay_trust(sandbox, tmp_path):
    return write_unionpay_trust(sandbox, tmp_path / "unionpay-trust")


@pytest.fixture
async def unionpay(sandbox, unionpay_trust, unionpay_key):
    channel = UnionPayChannel(unionpay_config(sandbox, unionpay_trust, [unionpay_key]))
    yield channel
    await channel.aclose()
