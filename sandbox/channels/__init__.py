"""Sandbox payment channels: WeChat Pay API v3, Alipay OpenAPI and UnionPay (全渠道 5.1.0) servers with their own
ledger, speaking the real wire protocols, for labs without merchant accounts and for the gateway's tests."""

from sandbox.channels.server import (
    AlipaySettings,
    SandboxChannels,
    UnionPaySettings,
    WechatSettings,
    start_sandbox_channels,
)

__all__ = ["AlipaySettings", "SandboxChannels", "UnionPaySettings", "WechatSettings", "start_sandbox_channels"]
