"""Sandbox channels (WeChat Pay and Alipay over their real wire protocols) and our clients for them."""

from __future__ import annotations

import pytest

from gateway.channels.alipay import AlipayChannel
from gateway.channels.wechat import WechatPayChannel
from sandbox.channels import start_sandbox_channels
from sandbox.channels.wechat import WechatPlatform
from tests.support.channelrig import alipay_config, alipay_settings, wechat_config, wechat_settings, write_wechat_trust


@pytest.fixture(scope="session")
def platform():
    return WechatPlatform.generate("1230000109")


@pytest.fixture
async def sandbox(tmp_path, platform):
    channels = await start_sandbox_channels(
        wechat=wechat_settings(platform=platform), alipay=alipay_settings(), db_path=tmp_path / "channels.sqlite3"
    )
    yield channels
    await channels.close()


@pytest.fixture
async def wechat(sandbox, tmp_path):
    channel = WechatPayChannel(wechat_config(sandbox, write_wechat_trust(sandbox, tmp_path / "trust")))
    yield channel
    await channel.aclose()


@pytest.fixture
async def alipay(sandbox):
    channel = AlipayChannel(alipay_config(sandbox))
    yield channel
    await channel.aclose()
