"""Sandbox payment channels: WeChat Pay API v3 and Alipay OpenAPI servers with their own ledger, speaking the real
wire protocols, for labs without merchant accounts and for the gateway's tests."""

from sandbox.channels.server import AlipaySettings, SandboxChannels, WechatSettings, start_sandbox_channels

__all__ = ["AlipaySettings", "SandboxChannels", "WechatSettings", "start_sandbox_channels"]
