"""``[egress]``: how the agent reaches the cloud gateway's business API for the intranet terminals.

Outbound only: the agent opens mutual-TLS connections to the gateway, signs each request with the key of one
of the hospital's apps registered at the gateway, and believes only answers the gateway signed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from bridge.settings import StrictModel

KeyId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class EgressApp(StrictModel):
    app_id: KeyId
    """The app id the gateway knows (``[[hospitals.apps]] app_id``, with ``kind = "agent"``)."""
    signing_key: Path
    """This app's private key (Ed25519 or RSA ≥ 2048); the gateway holds its public half."""


class EgressConfig(StrictModel):
    gateway_url: str
    """The gateway's mutual-TLS listener, e.g. ``https://pay.example.cn:8643``."""
    ca: Path
    """The CA that signed the gateway's server certificate."""
    client_cert: Path
    client_key: Path
    gateway_key_id: KeyId = "gateway"
    gateway_public_key: Path
    """The gateway's response-signing public key: an answer it did not sign is never believed."""
    apps: Annotated[list[EgressApp], Field(min_length=1)]
    journal: Path = Path("var/egress.sqlite3")
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 3
    """A connection not made within this is "cloud unreachable": payments fail at once, refunds queue."""
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 60
    """One forward, end to end; longer than the gateway's 付款码 polling deadline (30 s by default)."""
    gateway_window_s: Annotated[int, Field(ge=30, le=3600)] = 300
    """The gateway's signing window (``[signing] timestamp_window_s`` there). A payment in doubt that the gateway
    does not know is declared not made only once its last request can no longer be accepted."""
    link_retry_s: Annotated[float, Field(gt=0, le=600)] = 5
    """After a failed connection, payments are refused at once for this long while the link is probed."""
    retry_base_s: Annotated[float, Field(gt=0)] = 2
    retry_max_s: Annotated[float, Field(gt=0)] = 300
    """Backoff of queued refunds and in-doubt settlements while the cloud is unreachable."""
    retention_days: Annotated[float, Field(gt=0)] = 90
    """Finished terminal requests are kept this long (end-of-shift counts, repeated request ids)."""

    @field_validator("gateway_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("the gateway is reached over mutual TLS only: the URL must start with https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _unique_apps(self) -> EgressConfig:
        ids = [a.app_id for a in self.apps]
        if len(set(ids)) != len(ids):
            raise ValueError("egress app ids must be unique")
        return self

    def resolve(self, base: Path) -> None:
        def r(p: Path) -> Path:
            return p if p.is_absolute() else base / p

        self.ca, self.client_cert, self.client_key = r(self.ca), r(self.client_cert), r(self.client_key)
        self.gateway_public_key, self.journal = r(self.gateway_public_key), r(self.journal)
        for app in self.apps:
            app.signing_key = r(app.signing_key)
