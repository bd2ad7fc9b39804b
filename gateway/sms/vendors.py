"""The SMS provider and the captcha that ``[sms.provider]`` and ``[sms.captcha]`` name: the sandbox ones (the
default) or Tencent Cloud's."""

from __future__ import annotations

from bridge.settings import Secret
from gateway.sms.captcha import CaptchaProvider, SandboxCaptcha
from gateway.sms.clock import Clock
from gateway.sms.config import CaptchaConfig, ProviderConfig, TencentCredentials
from gateway.sms.limits_store import Counters
from gateway.sms.providers import SandboxSmsProvider, SmsProvider
from gateway.sms.tencent import TencentApi, TencentCaptcha, TencentSmsProvider

SMS_VERSION = "2021-01-11"
CAPTCHA_VERSION = "2019-07-22"


def _secret(secret: Secret | None, what: str) -> str:
    if secret is None:
        raise ValueError(f"{what} is not configured")
    return secret.read()


def _api(service: str, endpoint: str, version: str, creds: TencentCredentials, clock: Clock) -> TencentApi:
    key = _secret(creds.secret_key, f"sms.{service} secret_key")
    return TencentApi(service, endpoint, version, creds.secret_id, key, clock, region=creds.region)


def build_provider(cfg: ProviderConfig, clock: Clock) -> SmsProvider:
    if cfg.kind == "tencent":
        assert cfg.tencent is not None
        t = cfg.tencent
        api = _api("sms", t.endpoint, SMS_VERSION, t, clock)
        return TencentSmsProvider(api, t.sdk_app_id, t.sign_name, dict(t.templates.items()))
    return SandboxSmsProvider(signature=cfg.signature, record_file=cfg.record_file)


def build_captcha(cfg: CaptchaConfig, key: bytes, counters: Counters, clock: Clock) -> CaptchaProvider:
    if cfg.kind == "tencent":
        assert cfg.tencent is not None
        t = cfg.tencent
        api = _api("captcha", t.endpoint, CAPTCHA_VERSION, t, clock)
        app_key = _secret(t.app_secret_key, "sms.captcha.tencent.app_secret_key")
        return TencentCaptcha(api, t.captcha_app_id, app_key, key, counters, clock, cfg.ttl_s)
    return SandboxCaptcha(key, counters, clock, cfg.ttl_s)
