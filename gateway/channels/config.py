"""Merchant configuration of the payment channels, and the factory that turns one into a ``Channel``.

Keys and the APIv3 key are never in the config itself: private keys are files (mode 0600 on the host), the APIv3
key comes from a file or an environment variable (``Secret``). Defaults point at the real channels; tests and the
sandbox set ``base_url`` / ``gateway_url`` to the sandbox channels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import aiohttp

    from gateway.channels.base import Channel

WECHAT_BASE_URL = "https://api.mch.weixin.qq.com"
ALIPAY_GATEWAY_URL = "https://openapi.alipay.com/gateway.do"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(_Strict):
    """A secret read at start-up from exactly one of a file (trailing newline stripped) or an env variable."""

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        if (self.file is None) == (self.env is None):
            raise ValueError("a secret comes from exactly one of `file` or `env`")
        return self

    def read(self) -> str:
        if self.file is not None:
            return self.file.read_text(encoding="utf-8").strip()
        assert self.env is not None
        value = os.environ.get(self.env)
        if not value:
            raise ValueError(f"environment variable {self.env} is not set")
        return value


class Timeouts(_Strict):
    connect_s: float = Field(5.0, gt=0)
    total_s: float = Field(15.0, gt=0)


class CodepayPolling(_Strict):
    """How long a 付款码 payment waiting for the payer (password entry) is polled before it is reversed.

    WeChat and Alipay both advise: query every few seconds for about 30 s, then cancel (撤销)."""

    first_delay_s: float = Field(2.0, ge=0)
    max_delay_s: float = Field(5.0, gt=0)
    factor: float = Field(1.5, ge=1)
    deadline_s: float = Field(30.0, gt=0)
    reverse_attempts: int = Field(3, ge=1)


class WechatConfig(_Strict):
    channel: Literal["wechat"] = "wechat"
    mchid: str = Field(min_length=1)
    appid: str = Field(min_length=1)
    merchant_serial_no: str = Field(min_length=1, description="serial of the merchant API certificate")
    private_key_file: Path = Field(description="merchant API private key (apiclient_key.pem)")
    apiv3_key: Secret
    platform_certificates: list[Path] = Field(default_factory=list, description="WeChat Pay platform cert PEMs")
    public_key_file: Path | None = Field(None, description="WeChat Pay public key (public-key mode)")
    public_key_id: str | None = Field(None, pattern=r"^PUB_KEY_ID_\w+$")
    base_url: str = WECHAT_BASE_URL
    timeouts: Timeouts = Timeouts()
    timestamp_window_s: int = Field(300, gt=0, description="accepted age of a signed answer or callback")
    store_id: str = Field("HIS", min_length=1, description="scene_info.store_info.out_id sent with codepay")
    codepay: CodepayPolling = CodepayPolling()

    @model_validator(mode="after")
    def _trust(self) -> WechatConfig:
        if (self.public_key_file is None) != (self.public_key_id is None):
            raise ValueError("public_key_file and public_key_id go together")
        if not self.platform_certificates and self.public_key_file is None:
            raise ValueError("trust at least one WeChat Pay key: platform_certificates and/or public_key_file")
        return self


class AlipayConfig(_Strict):
    channel: Literal["alipay"] = "alipay"
    app_id: str = Field(min_length=1)
    app_private_key_file: Path = Field(description="app private key, PKCS#1 or PKCS#8 PEM")
    alipay_public_key_file: Path = Field(description="the Alipay public key shown in the open platform console")
    seller_id: str | None = Field(None, description="the merchant PID (2088…); notifications must name it")
    gateway_url: str = ALIPAY_GATEWAY_URL
    timeouts: Timeouts = Timeouts()
    notify_max_age_s: int = Field(
        26 * 3600, gt=0, description="Alipay re-sends a notification unchanged for about 25 h; older is stale"
    )
    codepay: CodepayPolling = CodepayPolling()
    trade_timeout: str = Field("30m", pattern=r"^\d+[mhd]$", description="timeout_express of created trades")


ChannelConfig = Annotated[WechatConfig | AlipayConfig, Field(discriminator="channel")]


def build_channel(cfg: WechatConfig | AlipayConfig, *, session: aiohttp.ClientSession | None = None) -> Channel:
    """The channel client for one merchant config; reads its key files and secrets now (fail at start-up)."""
    if isinstance(cfg, WechatConfig):
        from gateway.channels.wechat import WechatPayChannel

        return WechatPayChannel(cfg, session=session)
    from gateway.channels.alipay import AlipayChannel

    return AlipayChannel(cfg, session=session)
