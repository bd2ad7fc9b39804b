"""The ``[sms]`` section: gateway-wide settings (secret, counters, provider, captcha, global budget and breaker)
and the defence policy, with overrides per hospital and per purpose.

A policy is resolved as ``defaults`` ← ``hospitals.H`` ← ``hospitals.H.purposes.P``; tables merge key by key,
lists replace. Every (hospital, purpose) policy is built when the config is read, so a bad override fails at
start, not at the first SMS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from bridge.settings import Secret, StrictModel, addresses_or_networks, file_aliases
from gateway.sms.phones import normalize

Purpose = Literal["binding", "payment", "login"]
PURPOSES: tuple[Purpose, ...] = ("binding", "payment", "login")
DAY_S = 86400


class Cap(StrictModel):
    """At most ``limit`` requests per aligned window of ``window_s``; past it, ask for a captcha or refuse."""

    window_s: Annotated[int, Field(ge=1, le=31 * DAY_S)]
    limit: Annotated[int, Field(ge=0)]
    action: Literal["captcha", "refuse"] = "captcha"


class CodePolicy(StrictModel):
    length: Annotated[int, Field(ge=4, le=8)] = 6
    ttl_s: Annotated[int, Field(ge=60, le=1800)] = 300
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 5


class PhonePolicy(StrictModel):
    resend_interval_s: Annotated[int, Field(ge=0, le=3600)] = 60
    per_hour: Annotated[int, Field(ge=1)] = 5
    per_day: Annotated[int, Field(ge=1)] = 10


class IpMissingPolicy(StrictModel):
    points: Annotated[int, Field(ge=0)] = 60
    """An app that leaves out the caller's address hides the strongest per-caller signal: those requests share one
    address bucket (``no address``) under the same caps, and carry these risk points — the riskiest case, never
    the safest."""


class IpPolicy(StrictModel):
    enabled: bool = True
    caps: list[Cap] = [
        Cap(window_s=60, limit=5),
        Cap(window_s=3600, limit=20),
        Cap(window_s=DAY_S, limit=60),
        Cap(window_s=DAY_S, limit=1000, action="refuse"),
    ]
    """Shared hospital Wi-Fi puts many patients behind one address: soft caps ask for a captcha; only an
    absurd volume is refused."""
    missing: IpMissingPolicy = IpMissingPolicy()


class DevicePolicy(StrictModel):
    enabled: bool = True
    caps: list[Cap] = [Cap(window_s=60, limit=3), Cap(window_s=3600, limit=8), Cap(window_s=DAY_S, limit=20)]
    missing_fingerprint_points: Annotated[int, Field(ge=0)] = 40
    """A browser that sends no client-side fingerprint did not run the page's script: suspicious, not proof."""


class SegmentPolicy(StrictModel):
    enabled: bool = True
    prefix_len: Annotated[int, Field(ge=3, le=10)] = 7
    caps: list[Cap] = [Cap(window_s=60, limit=3), Cap(window_s=600, limit=10), Cap(window_s=DAY_S, limit=150)]
    sticky: bool = True
    """A segment over its cap in the previous window stays hot for the current one: a pump that pauses at the
    window's edge does not get a fresh allowance."""


class ListsPolicy(StrictModel):
    block_phones: list[str] = []
    allow_phones: list[str] = []
    """Never asked for a captcha (test numbers, staff); still bound by the per-phone caps and the budget."""
    block_prefixes: list[str] = []
    block_ips: list[str] = []
    allow_ips: list[str] = []
    """Exempt from the per-IP caps: the hospital's own Wi-Fi egress addresses."""

    _nets = field_validator("block_ips", "allow_ips")(addresses_or_networks)

    @field_validator("block_phones", "allow_phones")
    @classmethod
    def _phones(cls, values: list[str]) -> list[str]:
        return [normalize(v) for v in values]


class IdentityPolicy(StrictModel):
    """Caps per person as the app knows them (WeChat openid, Alipay user id, the app's own user id). The app signs
    its requests, so an attacker needs a real account per identity: these caps bound what each one yields."""

    enabled: bool = True
    numbers_per_day: Annotated[int, Field(ge=1)] = 3
    codes_per_hour: Annotated[int, Field(ge=1)] = 5
    codes_per_day: Annotated[int, Field(ge=1)] = 10
    failures_per_day: Annotated[int, Field(ge=1)] = 2
    """Codes sent for this identity and never verified; past it the identity is refused until the next day."""
    missing_points: Annotated[int, Field(ge=0)] = 30


KnownMode = Literal["require", "prefer", "off"]


class KnownPatientsPolicy(StrictModel):
    """Whether the number must be the one the HIS has on file (``require``: otherwise nothing is sent, and the
    answer is the same as for a sent code), only counts in its favour (``prefer``), or is not looked up."""

    binding: KnownMode = "require"
    payment: KnownMode = "require"
    login: KnownMode = "prefer"
    cache_s: Annotated[int, Field(ge=0, le=7 * DAY_S)] = DAY_S
    """How long a number found on file stays known without asking the HIS again."""
    miss_cache_s: Annotated[int, Field(ge=0, le=DAY_S)] = 600
    lookups_per_minute: Annotated[int, Field(ge=1)] = 120
    """HIS look-ups per hospital; past it (or when the agent cannot answer) the number counts as unchecked."""
    unchecked: Literal["refuse", "allow"] = "refuse"
    """In ``require`` mode, what an unchecked number gets: ``sms_unavailable``, or the other layers' judgement."""
    trust_days: Annotated[int, Field(ge=0, le=3650)] = 180
    """A number that verified a code here within this many days counts as known without asking the HIS."""

    def mode(self, purpose: str) -> KnownMode:
        mode: KnownMode = getattr(self, purpose)
        return mode


class ConversionPolicy(StrictModel):
    """The verify rate (codes verified ÷ codes settled) per scope, and how a scope escalates when it falls.

    A code settles as ``verified``, or as ``failed`` once ``sms.conversion_grace_s`` has passed without it being
    verified (a later verification moves it back). A scope whose rate is confidently below its band asks for a
    captcha (level 1); confidently below ``refuse_ratio`` of the band, it refuses past a hard cap that a solved
    captcha does not lift (level 2). The band is ``band_ratio`` × the scope's normal rate, learnt from its last
    ``history_days`` when it has ``history_min_codes`` settled codes there, else ``normal_rate``; kept within
    [``band_floor``, ``band_ceiling``] so that weeks of pumping cannot teach it that failure is normal."""

    enabled: bool = True
    window_s: Annotated[int, Field(ge=300, le=DAY_S)] = 1800
    bucket_s: Annotated[int, Field(ge=30, le=3600)] = 300
    min_codes: Annotated[int, Field(ge=1)] = 4
    normal_rate: Annotated[float, Field(gt=0, le=1)] = 0.7
    history_days: Annotated[int, Field(ge=1, le=30)] = 7
    history_min_codes: Annotated[int, Field(ge=1)] = 200
    band_ratio: Annotated[float, Field(gt=0, le=1)] = 0.6
    band_floor: Annotated[float, Field(ge=0, le=1)] = 0.2
    band_ceiling: Annotated[float, Field(ge=0, le=1)] = 0.6
    refuse_ratio: Annotated[float, Field(gt=0, le=1)] = 0.75
    z: Annotated[float, Field(gt=0, le=5)] = 1.64
    """One-sided confidence for the rate's Wilson bounds (1.64: 95 %)."""
    hold_s: Annotated[int, Field(ge=60, le=DAY_S)] = 1800
    """An escalation stands at least this long unless the rate is confidently back in its band."""
    cap_window_s: Annotated[int, Field(ge=60, le=DAY_S)] = 1800
    cap_floor: Annotated[int, Field(ge=0)] = 1
    cap_headroom: Annotated[float, Field(ge=0)] = 1.5
    """At level 2 a scope sends at most ``cap_floor`` + ``cap_headroom`` × its verified codes in the window per
    ``cap_window_s``."""
    phone_failures: Annotated[int, Field(ge=1)] = 1
    ip_failures: Annotated[int, Field(ge=1)] = 2
    subnet_failures: Annotated[int, Field(ge=1)] = 8
    device_failures: Annotated[int, Field(ge=1)] = 3
    """Failed codes per day from one address, one /16 (IPv6: /48), one device: past them the source is tainted —
    a captcha always, and refused while the scope is escalated (known patients excepted). A number past
    ``phone_failures`` gets nothing more (silently) while its scope is escalated."""


class Policy(StrictModel):
    captcha_threshold: Annotated[int, Field(ge=1)] = 100
    """A request whose risk points reach this needs a solved captcha."""
    daily_budget: Annotated[int, Field(ge=0)] | None = None
    """SMS per day for this hospital and purpose; the gateway-wide ``sms.daily_budget`` applies as well."""
    code: CodePolicy = CodePolicy()
    phone: PhonePolicy = PhonePolicy()
    ip: IpPolicy = IpPolicy()
    device: DevicePolicy = DevicePolicy()
    segment: SegmentPolicy = SegmentPolicy()
    lists: ListsPolicy = ListsPolicy()
    identity: IdentityPolicy = IdentityPolicy()
    known_patients: KnownPatientsPolicy = KnownPatientsPolicy()
    conversion: ConversionPolicy = ConversionPolicy()


class BreakerConfig(StrictModel):
    window_s: Annotated[int, Field(ge=10, le=DAY_S)] = 300
    max_sends: Annotated[int, Field(ge=1)] = 300
    """More SMS than this in one window (all hospitals) opens the breaker: every request needs a captcha for
    the rest of that window and the next."""
    budget_ratio: Annotated[float, Field(gt=0, le=1)] = 0.8
    """Once this share of the daily budget is spent, every request needs a captcha."""


class TencentCredentials(StrictModel):
    secret_id: Annotated[str, Field(min_length=1)] = ""
    secret_key: Secret | None = None
    """The SecretKey, from a file or the environment (``secret_key_file = "path"``: the older spelling)."""
    region: str = "ap-guangzhou"

    _aliases = model_validator(mode="before")(file_aliases({"secret_key_file": "secret_key"}))


class TencentSmsConfig(TencentCredentials):
    endpoint: str = "https://sms.tencentcloudapi.com"
    sdk_app_id: Annotated[str, Field(min_length=1)]
    sign_name: Annotated[str, Field(min_length=1)]
    """The approved signature (签名), e.g. the hospital's name."""
    templates: dict[Purpose, str]
    """The approved template id per purpose; each takes the code and its minutes, in that order."""

    @field_validator("templates")
    @classmethod
    def _every_purpose(cls, value: dict[str, str]) -> dict[str, str]:
        missing = set(PURPOSES) - set(value)
        if missing:
            raise ValueError(f"a template id for every purpose: missing {sorted(missing)}")
        return value


class TencentCaptchaConfig(TencentCredentials):
    endpoint: str = "https://captcha.tencentcloudapi.com"
    captcha_app_id: Annotated[int, Field(ge=1)]
    app_secret_key: Secret
    """The captcha app's key (``app_secret_key_file = "path"``: the older spelling)."""

    _app_aliases = model_validator(mode="before")(file_aliases({"app_secret_key_file": "app_secret_key"}))


class ProviderConfig(StrictModel):
    """``kind = "sandbox"`` records messages (in memory, and to ``record_file`` when set); ``"tencent"`` sends
    through Tencent Cloud SMS (``SendSms``) with the ``[sms.provider.tencent]`` settings."""

    kind: Literal["sandbox", "tencent"] = "sandbox"
    record_file: Path | None = None
    signature: str = "医院"
    tencent: TencentSmsConfig | None = None

    @model_validator(mode="after")
    def _settings(self) -> ProviderConfig:
        if self.kind == "tencent" and self.tencent is None:
            raise ValueError("sms.provider.kind = 'tencent' needs [sms.provider.tencent]")
        return self


class CaptchaConfig(StrictModel):
    """``kind = "sandbox"`` (the default) issues and checks its own puzzles; ``"tencent"`` has the page show
    Tencent Cloud's captcha and checks its tickets with ``DescribeCaptchaResult``."""

    kind: Literal["sandbox", "tencent"] = "sandbox"
    ttl_s: Annotated[int, Field(ge=30, le=1800)] = 300
    tencent: TencentCaptchaConfig | None = None

    @model_validator(mode="after")
    def _settings(self) -> CaptchaConfig:
        if self.kind == "tencent" and self.tencent is None:
            raise ValueError("sms.captcha.kind = 'tencent' needs [sms.captcha.tencent]")
        return self


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class SmsConfig(StrictModel):
    enabled: bool = False
    secret_file: Path | None = None
    """At least 32 random bytes; keys the phone and IP hashes, the code hashes and the sandbox captcha."""
    counters: str = "database"
    """``database`` (the gateway's own) or ``redis://host:port/db`` (``rediss://`` for TLS)."""
    timezone: str = "Asia/Shanghai"
    """Where a day starts, for daily caps and budgets."""
    daily_budget: Annotated[int, Field(ge=0)] = 10000
    conversion_grace_s: Annotated[int, Field(ge=30, le=1800)] = 90
    """A code not verified this long after it was sent counts as failed for the conversion layer (patients type
    theirs in within a minute or two; a verification after it still counts)."""
    breaker: BreakerConfig = BreakerConfig()
    provider: ProviderConfig = ProviderConfig()
    captcha: CaptchaConfig = CaptchaConfig()
    defaults: Policy = Policy()
    hospitals: dict[str, dict[str, Any]] = {}
    """Per hospital: any ``Policy`` key, and ``purposes.{binding,payment,login}`` with the same keys."""
    _policies: dict[tuple[str, str], Policy] = PrivateAttr(default_factory=dict)

    @field_validator("counters")
    @classmethod
    def _counters(cls, value: str) -> str:
        if value != "database" and not value.startswith(("redis://", "rediss://", "redis+unix://")):
            raise ValueError("counters is 'database' or a redis:// URL")
        return value

    @model_validator(mode="after")
    def _build_policies(self) -> SmsConfig:
        if self.enabled and self.secret_file is None:
            raise ValueError("sms.enabled needs sms.secret_file")
        base = self.defaults.model_dump()
        for hospital, raw in self.hospitals.items():
            raw = dict(raw)
            purposes = raw.pop("purposes", {}) or {}
            unknown = set(purposes) - set(PURPOSES)
            if unknown:
                raise ValueError(f"sms.hospitals.{hospital}.purposes: unknown purpose {sorted(unknown)}")
            for purpose in PURPOSES:
                merged = _merge(_merge(base, raw), purposes.get(purpose, {}))
                self._policies[(hospital, purpose)] = Policy.model_validate(merged)
        return self

    def policy(self, hospital: str, purpose: str) -> Policy:
        return self._policies.get((hospital, purpose), self.defaults)

    def all_policies(self) -> list[Policy]:
        return [self.defaults, *self._policies.values()]

    def resolve(self, base: Path) -> None:
        def r(p: Path) -> Path:
            return p if p.is_absolute() else base / p

        def r_opt(p: Path | None) -> Path | None:
            return None if p is None else r(p)

        self.secret_file = r_opt(self.secret_file)
        self.provider.record_file = r_opt(self.provider.record_file)
        for vendor in (self.provider.tencent, self.captcha.tencent):
            if vendor is not None and vendor.secret_key is not None:
                vendor.secret_key = vendor.secret_key.resolved(base)
        if self.captcha.tencent is not None:
            self.captcha.tencent.app_secret_key = self.captcha.tencent.app_secret_key.resolved(base)
