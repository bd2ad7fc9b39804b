"""Merchant configuration of the payment channels.

Keys and the APIv3 key are never in the config itself: private keys are files (mode 0600 on the host), passwords
and the APIv3 key come from a file or an environment variable (``Secret``). Defaults point at the real channels;
tests and the sandbox set ``base_url`` / ``gateway_url`` to the sandbox channels.

A merchant's own signing keys are a list of small records (``MerchantKey``: id, file, serial, valid from, retire
after) so that a key can be rotated without downtime — the new record next to the old one, taking over at its
``valid_from`` — and so that the same record can later come from a database row instead of this file.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, model_validator

from bridge.settings import Secret, StrictModel

WECHAT_BASE_URL = "https://api.mch.weixin.qq.com"
ALIPAY_GATEWAY_URL = "https://openapi.alipay.com/gateway.do"
UNIONPAY_BASE_URL = "https://gateway.95516.com"
UNIONPAY_FILE_URL = "https://filedownload.95516.com/"
UNIONPAY_OWNER = "中国银联股份有限公司"
"""The organisation UnionPay's SDKs require in the third ``@`` field of a signing certificate's CN."""

KeyId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class MerchantKey(StrictModel, frozen=True):
    """One of the merchant's signing keys. The newest key whose ``valid_from`` has passed (and that is neither
    retired nor expired) signs; the others stay listed for ``channels keys`` until their record is removed."""

    id: KeyId
    private_key_file: Path = Field(description="PEM (PKCS#1/PKCS#8), bare base64 (Alipay) or PKCS#12 (UnionPay)")
    password: Secret | None = Field(None, description="of a PKCS#12 file or an encrypted PEM")
    certificate_file: Path | None = Field(
        None,
        description="the key's certificate: WeChat apiclient_cert.pem, Alipay appCertPublicKey (certificate mode); "
        "a PKCS#12 file carries its own",
    )
    serial: str | None = Field(None, max_length=128, description="WeChat merchant certificate serial, if no cert")
    valid_from: AwareDatetime | None = Field(None, description="signs from this moment (None: from the start)")
    retire_after: AwareDatetime | None = Field(None, description="never signs after this moment")

    @model_validator(mode="after")
    def _window(self) -> MerchantKey:
        if self.valid_from and self.retire_after and self.retire_after <= self.valid_from:
            raise ValueError(f"key {self.id}: retire_after must be after valid_from")
        return self


def _unique_ids(keys: list[MerchantKey]) -> None:
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise ValueError("merchant_keys: ids must be unique")


class Timeouts(StrictModel, frozen=True):
    connect_s: float = Field(5.0, gt=0)
    total_s: float = Field(15.0, gt=0)


class CodepayPolling(StrictModel, frozen=True):
    """How long a 付款码 payment waiting for the payer (password entry) is polled before it is reversed.

    WeChat and Alipay both advise: query every few seconds for about 30 s, then cancel (撤销)."""

    first_delay_s: float = Field(2.0, ge=0)
    max_delay_s: float = Field(5.0, gt=0)
    factor: float = Field(1.5, ge=1)
    deadline_s: float = Field(30.0, gt=0)
    reverse_attempts: int = Field(3, ge=1)


class TrustRefresh(StrictModel, frozen=True):
    """When a channel's own certificates are fetched again (WeChat platform certificates)."""

    interval_s: float = Field(12 * 3600, gt=0, description="scheduled download, shared by all instances")
    before_expiry_s: float = Field(7 * 86400, gt=0, description="fetch sooner once a trusted one expires this soon")
    min_interval_s: float = Field(60, ge=0, description="on-demand downloads (unknown serial) at most this often")


class WechatConfig(StrictModel, frozen=True):
    channel: Literal["wechat"] = "wechat"
    mchid: str = Field(min_length=1)
    appid: str = Field(min_length=1)
    merchant_serial_no: str | None = Field(None, min_length=1, description="serial of the merchant API certificate")
    private_key_file: Path | None = Field(None, description="merchant API private key (apiclient_key.pem)")
    merchant_keys: list[MerchantKey] = Field(default_factory=list, description="rotating merchant API keys")
    apiv3_key: Secret
    platform_certificates: list[Path] = Field(default_factory=list, description="WeChat Pay platform cert PEMs")
    public_key_file: Path | None = Field(None, description="WeChat Pay public key (public-key mode)")
    public_key_id: str | None = Field(None, pattern=r"^PUB_KEY_ID_\w+$")
    download_certificates: bool = Field(True, description="fetch and refresh platform certificates")
    trust_refresh: TrustRefresh = TrustRefresh()
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
        legacy = self.private_key_file is not None or self.merchant_serial_no is not None
        if legacy and self.merchant_keys:
            raise ValueError("give the merchant key as merchant_keys or as private_key_file/merchant_serial_no")
        if legacy and (self.private_key_file is None or self.merchant_serial_no is None):
            raise ValueError("private_key_file and merchant_serial_no go together")
        if not legacy and not self.merchant_keys:
            raise ValueError("configure the merchant API key: merchant_keys (or private_key_file)")
        _unique_ids(self.merchant_keys)
        for key in self.merchant_keys:
            if key.serial is None and key.certificate_file is None:
                raise ValueError(f"merchant key {key.id}: give its certificate_file or its serial")
        return self

    def signing_keys(self) -> list[MerchantKey]:
        if self.merchant_keys:
            return list(self.merchant_keys)
        assert self.private_key_file is not None
        return [MerchantKey(id="default", private_key_file=self.private_key_file, serial=self.merchant_serial_no)]


class AlipayConfig(StrictModel, frozen=True):
    """Public-key mode (``alipay_public_key_file``) or public-key-certificate mode (``alipay_cert_file`` and
    ``alipay_root_cert_file``, each merchant key with its ``certificate_file``: the app public key certificate)."""

    channel: Literal["alipay"] = "alipay"
    app_id: str = Field(min_length=1)
    app_private_key_file: Path | None = Field(None, description="app private key, PKCS#1 or PKCS#8 PEM")
    merchant_keys: list[MerchantKey] = Field(default_factory=list, description="rotating app keys")
    alipay_public_key_file: Path | None = Field(None, description="the Alipay public key (public-key mode)")
    alipay_cert_file: Path | None = Field(None, description="alipayCertPublicKey_RSA2.crt (certificate mode)")
    alipay_root_cert_file: Path | None = Field(None, description="alipayRootCert.crt (certificate mode)")
    seller_id: str = Field(pattern=r"^2088\d{12}$", description="the merchant PID; notifications must name it")
    gateway_url: str = ALIPAY_GATEWAY_URL
    timeouts: Timeouts = Timeouts()
    notify_max_age_s: int = Field(
        26 * 3600, gt=0, description="Alipay re-sends a notification unchanged for about 25 h; older is stale"
    )
    codepay: CodepayPolling = CodepayPolling()
    trade_timeout: str = Field("30m", pattern=r"^\d+[mhd]$", description="timeout_express of created trades")

    @property
    def certificate_mode(self) -> bool:
        return self.alipay_cert_file is not None

    @model_validator(mode="after")
    def _mode(self) -> AlipayConfig:
        if (self.alipay_cert_file is None) != (self.alipay_root_cert_file is None):
            raise ValueError("alipay_cert_file and alipay_root_cert_file go together (certificate mode)")
        if self.certificate_mode == (self.alipay_public_key_file is not None):
            raise ValueError("choose one mode: alipay_public_key_file, or alipay_cert_file with alipay_root_cert_file")
        if (self.app_private_key_file is None) == (not self.merchant_keys):
            raise ValueError("give the app key as merchant_keys or as app_private_key_file")
        _unique_ids(self.merchant_keys)
        if self.certificate_mode and any(k.certificate_file is None for k in self.signing_keys()):
            raise ValueError("certificate mode: every merchant key needs its certificate_file (appCertPublicKey)")
        return self

    def signing_keys(self) -> list[MerchantKey]:
        if self.merchant_keys:
            return list(self.merchant_keys)
        assert self.app_private_key_file is not None
        return [MerchantKey(id="default", private_key_file=self.app_private_key_file)]


class UnionPayConfig(StrictModel, frozen=True):
    """A UnionPay online-payment (全渠道, 5.1.0) merchant: its signing certificates (``merchant_keys``, each a
    PKCS#12 file with its password, the ``certId`` taken from the certificate) and UnionPay's intermediate and
    root certificates, against which every ``signPubKeyCert`` is checked."""

    channel: Literal["unionpay"] = "unionpay"
    mer_id: str = Field(pattern=r"^[0-9A-Za-z]{15}$", description="商户代码 (merId)")
    merchant_keys: list[MerchantKey] = Field(min_length=1)
    middle_cert_file: Path = Field(description="acp_prod_middle.cer: UnionPay's intermediate certificate")
    root_cert_file: Path = Field(description="acp_prod_root.cer: UnionPay's root certificate")
    accepted_owners: list[str] = Field(
        default_factory=lambda: [UNIONPAY_OWNER],
        min_length=1,
        description="organisation names accepted in the signing certificate's CN",
    )
    base_url: str = UNIONPAY_BASE_URL
    file_url: str = UNIONPAY_FILE_URL
    channel_type: Literal["07", "08"] = Field("08", description="07 internet (PC), 08 mobile")
    timeouts: Timeouts = Timeouts()
    notify_max_age_s: int = Field(26 * 3600, gt=0, description="a back-notification older than this is stale")
    codepay: CodepayPolling = CodepayPolling()
    cancel_before: dt.time = Field(
        dt.time(22, 30), description="a full refund paid today and asked before this (Beijing) time is a 消费撤销"
    )

    @model_validator(mode="after")
    def _keys(self) -> UnionPayConfig:
        _unique_ids(self.merchant_keys)
        return self

    def signing_keys(self) -> list[MerchantKey]:
        return list(self.merchant_keys)


ChannelConfig = Annotated[WechatConfig | AlipayConfig | UnionPayConfig, Field(discriminator="channel")]
AnyChannelConfig = WechatConfig | AlipayConfig | UnionPayConfig
