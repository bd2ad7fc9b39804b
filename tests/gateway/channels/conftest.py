from __future__ import annotations

import pytest

from gateway.channels.alipay import AlipayChannel
from gateway.channels.wechat import WechatPayChannel
from sandbox.channels import start_sandbox_channels
from sandbox.channels.wechat import WechatPlatform
from tests.support.channelrig import (
    alipay_config,
    alipay_settings,
    start_receiver,
    wechat_config,
    wechat_settings,
    write_wechat_trust,
)


@pytest.fixture(scope="session")
def platform():
    """Generating RSA keys is slow: one WeChat platform identity for the whole run."""
    return WechatPlatform.generate("1230000109")


@pytest.fixture
async def sandbox(tmp_path, platform):
    channels = await start_sandbox_channels(
        wechat=wechat_settings(platform=platform), alipay=alipay_settings(), db_path=tmp_path / "channels.sqlite3"
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
