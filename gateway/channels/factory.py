"""Turning a merchant's channel settings into a ``Channel``."""

from __future__ import annotations

from typing import Any

import aiohttp
from pydantic import TypeAdapter

from gateway.channels.alipay import AlipayChannel
from gateway.channels.base import Channel
from gateway.channels.config import AlipayConfig, AnyChannelConfig, ChannelConfig, WechatConfig
from gateway.channels.state import ChannelState
from gateway.channels.unionpay import UnionPayChannel
from gateway.channels.wechat import WechatPayChannel

_CONFIG: TypeAdapter[AnyChannelConfig] = TypeAdapter(ChannelConfig)


def channel_config(channel: str, settings: dict[str, Any]) -> AnyChannelConfig:
    """Validate one merchant's settings for its channel (raises pydantic's ``ValidationError``)."""
    return _CONFIG.validate_python({"channel": channel, **settings})


def build_channel(
    cfg: AnyChannelConfig, *, session: aiohttp.ClientSession | None = None, state: ChannelState | None = None
) -> Channel:
    """The channel client for one merchant config; reads its key files and secrets now (fail at start-up)."""
    if isinstance(cfg, WechatConfig):
        return WechatPayChannel(cfg, session=session, state=state)
    if isinstance(cfg, AlipayConfig):
        return AlipayChannel(cfg, session=session, state=state)
    return UnionPayChannel(cfg, session=session, state=state)
