"""The agent's configuration: one TOML file per hospital, validated before anything starts.

Paths are resolved against the config file's folder so that an installed agent's config can name
``certs/server.key`` and mean the file beside it. Secrets are never in the file itself: keys live in their own
files (mode 0600); docs/OPERATIONS.md, "Secrets", names the one way to point at one (``bridge.settings``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from bridge.egress.config import EgressConfig
from bridge.intranet.config import IntranetConfig
from bridge.settings import (
    ConfigError,
    StrictModel,
    addresses_or_networks,
    expand_env,
    host_port,
    read_toml,
    validation_error,
)

__all__ = ["BridgeConfig", "ConfigError", "load_config"]


class ServerConfig(StrictModel):
    listen: str = "0.0.0.0:8443"
    ops_listen: str = "127.0.0.1:9109"
    """Plain-HTTP listener for /metrics, /healthz and /readyz: keep it on loopback or a monitoring network."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    per_client_concurrency: Annotated[int, Field(ge=1, le=10_000)] = 64
    metrics_allow: list[str] = ["127.0.0.1/32", "::1/128"]
    """Addresses that may read ``/metrics`` on the ops listener; list the Prometheus server when it scrapes
    from another host (or give ``metrics_token_file``). ``/healthz`` and ``/readyz`` answer everyone."""
    metrics_token_file: Path | None = None
    """A file whose first line is a bearer token that also admits a scraper (``Authorization: Bearer …``)."""

    _check = field_validator("listen", "ops_listen")(host_port)

    _check_networks = field_validator("metrics_allow")(addresses_or_networks)


class ClientIdentity(StrictModel):
    cn: str | None = None
    spki_sha256: str | None = None
    key_ids: list[str] | None = None
    """The ``signing.clients`` keys this identity may sign with. Required once there are several identities
    (so that one caller cannot sign as another); a single identity may use every configured key."""

    @model_validator(mode="after")
    def _one(self) -> ClientIdentity:
        if bool(self.cn) == bool(self.spki_sha256):
            raise ValueError("give exactly one of cn or spki_sha256")
        return self


class TlsConfig(StrictModel):
    cert: Path
    key: Path
    client_ca: Path
    allowed_clients: Annotated[list[ClientIdentity], Field(min_length=1)]


class PeerKey(StrictModel):
    key_id: str
    public_key: Path


class SigningConfig(StrictModel):
    key_id: str
    key: Path
    """The bridge's own private key, which signs every response."""
    timestamp_window_s: Annotated[int, Field(ge=30, le=3600)] = 300
    clients: Annotated[list[PeerKey], Field(min_length=1)]


class JournalConfig(StrictModel):
    path: Path = Path("var/journal.sqlite3")
    retention_days: Annotated[float, Field(gt=0)] = 30
    prune_interval_s: Annotated[float, Field(gt=0)] = 600
    prune_batch: Annotated[int, Field(ge=1, le=100_000)] = 500
    max_batch: Annotated[int, Field(ge=1, le=10_000)] = 256
    """At most this many journal writes share one commit."""


class DispatchConfig(StrictModel):
    sync_deadline_s: Annotated[float, Field(gt=0, le=120)] = 8
    """How long a write call waits for the HIS before answering ``pending``."""
    his_timeout_s: Annotated[float, Field(gt=0, le=600)] = 15
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 10
    """Attempts before an entry is quarantined for an operator."""
    backoff_base_s: Annotated[float, Field(gt=0)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0)] = 60
    breaker_failures: Annotated[int, Field(ge=1)] = 5
    breaker_reset_s: Annotated[float, Field(gt=0)] = 15
    read_concurrency: Annotated[int, Field(ge=1, le=1000)] = 32


class HisConfig(StrictModel):
    profile: Path
    overrides: dict[str, str] = {}
    """Profile settings replaced at load time, e.g. ``{"soap.base_url" = "http://10.1.2.3"}``."""


class LoggingConfig(StrictModel):
    level: str = "info"
    format: Literal["json", "console"] = "json"


class BridgeConfig(StrictModel):
    hospital: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
    server: ServerConfig = ServerConfig()
    tls: TlsConfig
    signing: SigningConfig
    journal: JournalConfig = JournalConfig()
    dispatch: DispatchConfig = DispatchConfig()
    his: HisConfig
    logging: LoggingConfig = LoggingConfig()
    intranet: IntranetConfig | None = None
    """The second listener, for kiosks and cashier windows on the hospital LAN (needs ``[egress]``)."""
    egress: EgressConfig | None = None
    source: Path | None = None

    @model_validator(mode="after")
    def _keys_bound_to_identities(self) -> BridgeConfig:
        known = {c.key_id for c in self.signing.clients}
        several = len(self.tls.allowed_clients) > 1
        for client in self.tls.allowed_clients:
            who = client.cn or client.spki_sha256
            if client.key_ids is None:
                if several:
                    raise ValueError(
                        f"tls.allowed_clients: {who}: with several allowed clients each needs key_ids, the "
                        "signing.clients key ids it may sign with"
                    )
                continue
            unknown = sorted(set(client.key_ids) - known)
            if unknown or not client.key_ids:
                raise ValueError(
                    f"tls.allowed_clients: {who}: key_ids {unknown or '[]'} must name keys of signing.clients "
                    f"({', '.join(sorted(known))})"
                )
        return self

    @model_validator(mode="after")
    def _egress_for_terminals(self) -> BridgeConfig:
        if self.intranet is None:
            return self
        if self.egress is None:
            raise ValueError("[intranet] terminals pay through the gateway: configure [egress] too")
        apps = {a.app_id for a in self.egress.apps}
        for t in self.intranet.terminals:
            if t.app is not None and t.app not in apps:
                raise ValueError(f"terminal {t.id}: app {t.app!r} is not one of [[egress.apps]]")
        return self


def _resolve_paths(cfg: BridgeConfig, base: Path) -> BridgeConfig:
    def r(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    cfg.tls.cert, cfg.tls.key, cfg.tls.client_ca = r(cfg.tls.cert), r(cfg.tls.key), r(cfg.tls.client_ca)
    cfg.signing.key = r(cfg.signing.key)
    for c in cfg.signing.clients:
        c.public_key = r(c.public_key)
    cfg.journal.path = r(cfg.journal.path)
    if cfg.server.metrics_token_file is not None:
        cfg.server.metrics_token_file = r(cfg.server.metrics_token_file)
        if not cfg.server.metrics_token_file.is_file():
            raise ConfigError(f"server.metrics_token_file {cfg.server.metrics_token_file}: no such file")
    cfg.his.profile = r(cfg.his.profile)
    if cfg.intranet is not None:
        cfg.intranet.resolve(base)
    if cfg.egress is not None:
        cfg.egress.resolve(base)
    return cfg


def load_config(path: str | Path) -> BridgeConfig:
    path = Path(path)
    raw = read_toml(path)
    try:
        cfg = BridgeConfig.model_validate(expand_env(raw))
    except ValidationError as e:
        raise validation_error(path, e) from None
    cfg.source = path
    return _resolve_paths(cfg, path.parent.resolve())
