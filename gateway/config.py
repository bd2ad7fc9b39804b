"""The gateway's configuration: one TOML file, validated before anything starts (the bridge's conventions).

Paths resolve against the config file's folder; secrets are named as docs/OPERATIONS.md, "Secrets", says
(``bridge.settings.Secret``; ``${env:NAME}`` inside a string, for the database URL's password). Hospitals, their bridge
agents and their apps, and the channel merchants are declared here and copied into the database at start, so
that every gateway instance on one database sees the same registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bridge.settings import (
    ConfigError,
    StrictModel,
    addresses_or_networks,
    expand_env,
    host_port,
    read_toml,
    validation_error,
)
from gateway.model import HisCommit, RefundPolicy
from gateway.sms.config import SmsConfig

__all__ = ["ConfigError", "GatewayConfig", "load_config", "load_tenant_blocks", "parse_config", "resolve_files"]

Ident = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
KeyId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]

NOTIFY_SCHEDULE_S = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
"""Delays between attempts to deliver one notification to a business system: 15 retries over about 24 h."""


Networks = Annotated[list[str], Field(max_length=1000)]


class MtlsListener(StrictModel):
    """A second listener for callers that present a client certificate: the hospitals' agents, forwarding their
    kiosks' and windows' payments over mutual TLS. It serves the same business API."""

    listen: str
    cert: Path
    key: Path
    client_ca: Path
    """Only clients with a certificate from this CA complete the handshake."""

    _check = field_validator("listen")(host_port)


class ServerConfig(StrictModel):
    listen: str = "127.0.0.1:8600"
    public_url: str = "http://127.0.0.1:8600"
    """How the channels reach us: notify URLs are ``{public_url}/notify/{channel}/{merchant}``."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    trusted_proxies: Networks = []
    """Addresses of the reverse proxies in front of the gateway. Only a request from one of these has its
    ``forwarded_header`` believed; everything else is taken from the address it came from."""
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    """Which header the proxies write the caller's address into (``Forwarded`` is RFC 7239)."""
    mtls: MtlsListener | None = None

    _check = field_validator("listen")(host_port)
    _check_proxies = field_validator("trusted_proxies")(addresses_or_networks)


class MetricsConfig(StrictModel):
    """``/metrics`` is off unless an address is allowed or a bearer token is set: the listener faces the
    internet (behind its proxy), and the figures name hospitals."""

    allow: Networks = []
    """Addresses (after ``server.trusted_proxies``) that may scrape without a token."""
    token_file: Path | None = None
    """A file whose first line is the bearer token scrapers send (``Authorization: Bearer …``)."""

    _check = field_validator("allow")(addresses_or_networks)


class DatabaseConfig(StrictModel):
    url: str = "sqlite:///var/gateway.sqlite3"
    """SQLite for one instance; ``postgresql://user:${env:PGPASSWORD}@host/db`` for several."""
    pool_size: Annotated[int, Field(ge=1, le=200)] = 10


class SigningConfig(StrictModel):
    key_id: KeyId = "gateway"
    key: Path
    """The gateway's private key: it signs API responses and notifications to business systems."""
    timestamp_window_s: Annotated[int, Field(ge=30, le=3600)] = 300


class WorkersConfig(StrictModel):
    enabled: bool = True
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    batch: Annotated[int, Field(ge=1, le=1000)] = 20
    lease_s: Annotated[float, Field(gt=0)] = 120
    """A claimed row is left alone by other instances this long; longer than any channel or bridge timeout."""
    pending_query_after_s: Annotated[float, Field(ge=0)] = 60
    """An unpaid order is first queried at the channel this long after creation, then with backoff."""
    retry_base_s: Annotated[float, Field(gt=0)] = 5
    retry_max_s: Annotated[float, Field(gt=0)] = 600
    his_poll_s: Annotated[float, Field(gt=0)] = 5
    """How soon a write the bridge answered ``pending`` is asked about again."""
    order_ttl_s: Annotated[int, Field(ge=60, le=7 * 86400)] = 1800
    his_stuck_after_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 1800
    """A HIS step (commit, refund application, write-back, cancel) still unfinished this long after it became
    due is an exception finance sees (``his_stuck``) and counts in ``hisgateway_his_stuck``; the gateway keeps
    trying meanwhile. Thirty minutes: longer than a HIS restart or a bridge breaker's cool-down, shorter than a
    patient's wait at the window."""
    escalate_every_s: Annotated[float, Field(gt=0, le=3600)] = 60
    """How often stuck HIS steps are looked for."""


class NotificationsConfig(StrictModel):
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 10
    schedule_s: Annotated[list[float], Field(min_length=1, max_length=50)] = list(NOTIFY_SCHEDULE_S)
    allow_addresses: Networks = []
    """Loopback, private, link-local and other non-public addresses are never sent notifications (a notify URL
    must not reach into our own network), except those listed here: a business system on the hospital's VPN,
    or a test receiver on loopback."""
    max_redirects: Annotated[int, Field(ge=0, le=10)] = 3

    _check = field_validator("allow_addresses")(addresses_or_networks)


class BridgeLink(StrictModel):
    url: str
    ca: Path
    """The platform CA that signed the agent's server certificate."""
    client_cert: Path
    client_key: Path
    signing_key_id: KeyId = "platform"
    signing_key: Path
    bridge_key_id: KeyId
    bridge_public_key: Path
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 30
    retries: Annotated[int, Field(ge=0, le=10)] = 2


AppOperation = Literal[
    "orders", "refunds", "events", "patient.query", "bills.unpaid", "registration.lock", "registration.unlock"
]
"""What an app may call (``gateway.tenants.permissions``): the money operations, the notification pull, and the
HIS reads and slot holds the business API passes through to the hospital's agent."""
DEFAULT_OPERATIONS: tuple[AppOperation, ...] = ("orders", "refunds", "events")
"""An app whose operations are not listed may take payments and refunds and pull its notifications."""
_HOST = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$"


class AppConfig(StrictModel):
    app_id: KeyId
    public_key: Path
    notify_url: Annotated[str, Field(pattern=r"^https?://[^/?#@]+", max_length=500)] | None = None
    notify_hosts: Annotated[list[Annotated[str, Field(pattern=_HOST)]], Field(max_length=100)] = []
    """Hosts an order's ``notify_url`` may name (``*.example.cn`` for any subdomain), besides the host of
    ``notify_url``; an order naming any other host is refused."""
    enabled: bool = True
    operations: Annotated[list[AppOperation], Field(max_length=20)] | None = None
    """What this app may call; ``DEFAULT_OPERATIONS`` when not given."""
    kind: Literal["app", "agent"] = "app"
    """``agent``: a hospital's bridge agent forwarding its kiosks and windows — it may name the terminal and
    start HIS-approved window refunds (which skip ``refund.apply``). Give it ``client_cert_cn`` too."""
    his_commit: HisCommit | None = None
    """Who tells the HIS after this app's payments; the hospital's ``his_commit`` when not set."""
    client_cert_cn: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """Requests signed by this app are accepted only over the mutual-TLS listener from a client certificate
    with this subject CN."""


_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class ReconConfig(StrictModel):
    """T+1 reconciliation (docs/RECONCILIATION.md)."""

    enabled: bool = True
    """Run the daily schedule in this instance (the CLI can always run a day by hand)."""
    at: Annotated[str, Field(pattern=_HHMM)] = "11:30"
    """When each day's run starts for the previous day, Asia/Shanghai; a hospital may set ``recon_at``."""
    cross_day_window_min: Annotated[int, Field(ge=0, le=720)] | None = Field(default=None, deprecated=True)
    """No longer used: every one-sided entry waits ``suspense_days`` for its counterpart, whatever its time of
    day (matching is by key, not by clock). Accepted so older configs still load."""
    suspense_days: Annotated[int, Field(ge=0, le=31)] = 3
    """Days a one-sided entry (a payment the HIS has not booked, a refund the channel has not paid, …) waits for
    its counterpart before it is flagged with its real class. Three: a HIS's nightly maintenance or a quarantined
    bridge entry resolved by an operator the next working morning — including over a weekend, when a Friday
    night entry is seen on Monday's run of Sunday — and channel refunds that settle a day or two later, all
    arrive within it; stuck HIS steps meanwhile show up at once as ``his_stuck``. 0 flags at once."""
    page_size: Annotated[int, Field(ge=1, le=1000)] = 1000
    """Records per ``recon.fetch`` page."""
    concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    """Hospital-days one instance reconciles at once. A run is mostly waiting (statements, the agent, the
    database) with bursts of parsing and matching on one core: two per core keeps a core busy without one
    hospital's burst holding up the heartbeat of another's lease."""
    lease_s: Annotated[float, Field(ge=2, le=3600)] = 120
    """A claimed hospital-day belongs to its instance this long, renewed every third of it while the run goes
    on; an instance that dies loses it when it runs out, and another takes the day over."""
    retry_s: Annotated[float, Field(ge=1, le=86400)] = 1800
    """A failed scheduled run (statement not ready yet, the agent away) is tried again after this."""


class HospitalConfig(StrictModel):
    id: Ident
    name: str = ""
    refund_policy: RefundPolicy = RefundPolicy.finance
    """What happens to a payment the HIS refuses for good: refunded at once, or left for finance."""
    bridge: BridgeLink | None = None
    apps: list[AppConfig] = []
    recon_at: Annotated[str, Field(pattern=_HHMM)] | None = None
    """This hospital's daily reconciliation time (Asia/Shanghai), when not ``recon.at``."""
    enabled: bool = True
    """A disabled hospital's apps are refused and its days are not reconciled; its orders stay."""
    read_cache: dict[Literal["patient.query", "bills.unpaid"], Annotated[int, Field(ge=0, le=3600)]] = {}
    """Seconds an app's HIS read may be answered from memory, per operation, where this HIS allows it
    (``gateway.his_reads.DEFAULT_CACHE_S`` when not given; 0: always ask the HIS)."""
    his_commit: HisCommit = HisCommit.gateway
    """Who tells the HIS after a payment: the gateway (``registration/charge/prepay.commit`` through the bridge)
    or the caller (a kiosk or window that records it in the HIS itself); an app may say otherwise."""


class MerchantConfig(BaseModel):
    """A channel merchant account. ``id`` names it in callback URLs; the remaining keys belong to the channel
    (``gateway.channels.config``)."""

    model_config = ConfigDict(extra="allow")

    id: Ident
    channel: Literal["wechat", "alipay", "unionpay"]
    hospital: Ident
    enabled: bool = True

    def channel_settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LoggingConfig(StrictModel):
    level: str = "info"
    format: Literal["json", "console"] = "json"


class ConsoleConfig(StrictModel):
    """The finance console under ``/console/`` on the gateway's listener."""

    enabled: bool = True
    session_idle_s: Annotated[int, Field(ge=60, le=86400)] = 1800
    session_max_s: Annotated[int, Field(ge=300, le=7 * 86400)] = 12 * 3600
    login_max_failures: Annotated[int, Field(ge=1, le=100)] = 5
    """Failed logins per user name (four times this per address) within ``login_window_s`` before a pause."""
    login_window_s: Annotated[int, Field(ge=10, le=86400)] = 900


class TenantsConfig(StrictModel):
    """How a change to a hospital, app or merchant reaches this instance."""

    poll_s: Annotated[float, Field(gt=0, le=300)] = 2.0
    """How often the tenants' change counter is read (on PostgreSQL a ``NOTIFY`` wakes the instance sooner)."""
    close_grace_s: Annotated[float, Field(ge=0, le=3600)] = 60
    """A replaced channel or agent link is closed this long after the change, once calls in flight are over."""


RetainedTable = Literal["orders", "callbacks", "notifications", "audit", "recon"]


class RetentionConfig(StrictModel):
    """Days each kind of row stays in the database before ``his-gateway archive`` moves it to a verified file
    (docs/OPERATIONS.md, "Retention"). A table not listed is kept for ever."""

    days: dict[RetainedTable, Annotated[int, Field(ge=30, le=36500)]] = {}
    directory: Path = Path("var/archive")
    """Where archive files go; with several instances, storage they all mount."""
    schedule: bool = False
    """Archive (and verify, then remove) every day at ``at``, claimed by one instance."""
    at: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] = "03:30"
    remove: bool = True
    """On the schedule, remove the archived rows once their file is verified (else leave that to an operator)."""


class GatewayConfig(StrictModel):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    signing: SigningConfig
    workers: WorkersConfig = WorkersConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    hospitals: list[HospitalConfig] = []
    """Tenants declared in the file: imported into the database at every start (``gateway.tenants``). A platform
    managing its tenants with ``his-gateway hospitals|apps|merchants`` may declare none here."""
    merchants: list[MerchantConfig] = []
    logging: LoggingConfig = LoggingConfig()
    console: ConsoleConfig = ConsoleConfig()
    metrics: MetricsConfig = MetricsConfig()
    recon: ReconConfig = ReconConfig()
    sms: SmsConfig = SmsConfig()
    tenants: TenantsConfig = TenantsConfig()
    retention: RetentionConfig = RetentionConfig()
    source: Path | None = None

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        ids = [h.id for h in self.hospitals]
        if len(set(ids)) != len(ids):
            raise ValueError("hospital ids must be unique")
        app_ids = [a.app_id for h in self.hospitals for a in h.apps]
        if len(set(app_ids)) != len(app_ids):
            raise ValueError("app ids must be unique across hospitals")
        merchant_ids = [m.id for m in self.merchants]
        if len(set(merchant_ids)) != len(merchant_ids):
            raise ValueError("merchant ids must be unique")
        for m in self.merchants:
            if m.hospital not in ids:
                raise ValueError(f"merchant {m.id}: unknown hospital {m.hospital!r}")
        for hospital_id in self.sms.hospitals:
            if hospital_id not in ids:
                raise ValueError(f"sms.hospitals: unknown hospital {hospital_id!r}")
        for h in self.hospitals:
            for a in h.apps:
                if a.client_cert_cn and self.server.mtls is None:
                    raise ValueError(f"app {a.app_id}: client_cert_cn needs the [server.mtls] listener")
        return self

    def hospital(self, hospital_id: str) -> HospitalConfig:
        return next(h for h in self.hospitals if h.id == hospital_id)


def _resolve_paths(cfg: GatewayConfig, base: Path) -> GatewayConfig:
    def r(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    cfg.signing.key = r(cfg.signing.key)
    if cfg.metrics.token_file is not None:
        cfg.metrics.token_file = r(cfg.metrics.token_file)
        if not cfg.metrics.token_file.is_file():
            raise ConfigError(f"metrics.token_file {cfg.metrics.token_file}: no such file")
    if cfg.server.mtls is not None:
        m = cfg.server.mtls
        m.cert, m.key, m.client_ca = r(m.cert), r(m.key), r(m.client_ca)
    _resolve_tenant_paths(cfg.hospitals, cfg.merchants, base)
    cfg.sms.resolve(base)
    cfg.retention.directory = r(cfg.retention.directory)
    url = cfg.database.url
    if url.startswith("sqlite") and ":///" in url and not url.endswith(":memory:"):
        prefix, _, path = url.partition(":///")
        if not path.startswith("/"):
            cfg.database.url = f"{prefix}:///{base / path}"
    return cfg


def _resolve_tenant_paths(hospitals: list[HospitalConfig], merchants: list[MerchantConfig], base: Path) -> None:
    def r(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    for h in hospitals:
        if h.bridge is not None:
            b = h.bridge
            b.ca, b.client_cert, b.client_key = r(b.ca), r(b.client_cert), r(b.client_key)
            b.signing_key, b.bridge_public_key = r(b.signing_key), r(b.bridge_public_key)
        for a in h.apps:
            a.public_key = r(a.public_key)
    for m in merchants:
        if m.model_extra is not None:
            m.model_extra.update(_resolve_files(m.model_extra, base))


def _resolve_files(settings: dict[str, Any], base: Path) -> dict[str, Any]:
    """Channel settings name key files as ``*_file``, ``file`` (secrets) or ``platform_certificates``, also inside
    lists of records (``merchant_keys``)."""

    def r(value: Any) -> Any:
        return value if not isinstance(value, str) or Path(value).is_absolute() else str(base / value)

    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out[key] = _resolve_files(value, base)
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            out[key] = [_resolve_files(v, base) for v in value]
        elif key == "platform_certificates" and isinstance(value, list):
            out[key] = [r(v) for v in value]
        elif key == "file" or key.endswith("_file"):
            out[key] = r(value)
        else:
            out[key] = value
    return out


resolve_files = _resolve_files


def parse_config(raw: dict[str, Any], *, base: Path, source: Path | None = None) -> GatewayConfig:
    try:
        cfg = GatewayConfig.model_validate(expand_env(raw))
    except ValidationError as e:
        raise validation_error(source or "config", e) from None
    cfg.source = source
    return _resolve_paths(cfg, base)


def load_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    raw = read_toml(path, missing_hint=" (start from config/gateway.example.toml; -c PATH names another config)")
    return parse_config(raw, base=path.parent.resolve(), source=path)


class TenantBlocks(BaseModel):
    """The ``[[hospitals]]`` (with their apps) and ``[[merchants]]`` of a file in the gateway config's format —
    the gateway config itself, or a file of just those blocks — for ``his-gateway tenants import``."""

    model_config = ConfigDict(extra="ignore")

    hospitals: list[HospitalConfig] = []
    merchants: list[MerchantConfig] = []

    @model_validator(mode="after")
    def _unique(self) -> TenantBlocks:
        for what, ids in (
            ("hospital", [h.id for h in self.hospitals]),
            ("app", [a.app_id for h in self.hospitals for a in h.apps]),
            ("merchant", [m.id for m in self.merchants]),
        ):
            if len(set(ids)) != len(ids):
                raise ValueError(f"{what} ids must be unique")
        return self


def load_tenant_blocks(path: str | Path) -> TenantBlocks:
    """Read a file's tenant blocks; relative paths resolve against its folder, ``${env:NAME}`` is expanded."""
    path = Path(path)
    raw = read_toml(path)
    if "hospitals" not in raw and "merchants" not in raw:
        raise ConfigError(f"{path}: no [[hospitals]] or [[merchants]] blocks")
    try:
        blocks = TenantBlocks.model_validate(expand_env({k: raw[k] for k in ("hospitals", "merchants") if k in raw}))
    except ValidationError as e:
        raise validation_error(path, e) from None
    _resolve_tenant_paths(blocks.hospitals, blocks.merchants, path.parent.resolve())
    return blocks
