"""``[intranet]``: the second listener, on the hospital LAN, and the terminals registered to call it.

A terminal is a kiosk (自助机), a cashier window (收费窗口) or another hospital system. Each is named here with
what it may do and how much: the operations it may call, the most one payment (and one refund) may be, and the
most per day. It authenticates with a client certificate from the hospital's own CA where it can present
one, else with an HMAC key of its own; either way only from the addresses listed for it.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from bridge.catalog import PositiveFen
from bridge.settings import StrictModel, addresses_or_networks, host_port

TerminalId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,20}$")]


class TerminalKind(StrEnum):
    kiosk = "kiosk"
    window = "window"
    system = "system"


class TerminalOperation(StrEnum):
    pay_codepay = "pay.codepay"
    pay_qr = "pay.qr"
    pay_query = "pay.query"
    pay_close = "pay.close"
    refund = "refund"
    refund_query = "refund.query"
    transactions = "transactions"


REFUND_KINDS = frozenset({TerminalKind.window, TerminalKind.system})
"""Who may start a HIS-approved refund: the HIS itself (its cashier window, or another HIS system) — never a
kiosk, since the gateway skips ``refund.apply`` for these."""


class TerminalConfig(StrictModel):
    id: TerminalId
    kind: TerminalKind
    name: str = ""
    operations: Annotated[list[TerminalOperation], Field(min_length=1)]
    auth: Literal["hmac", "mtls"]
    key_file: Path | None = None
    """HMAC key (hex, or ≥ 16 bytes of text), mode 0600; required for ``auth = "hmac"``."""
    cert_cn: str | None = None
    cert_spki_sha256: str | None = None
    """For ``auth = "mtls"``: the subject CN of the terminal's certificate, or its pinned public key."""
    addresses: Annotated[list[str], Field(min_length=1)]
    """Where this terminal may call from: addresses or networks (``10.20.1.17``, ``10.20.1.0/24``)."""
    max_payment_fen: PositiveFen
    max_daily_fen: PositiveFen
    """The most this terminal may take in one day (Asia/Shanghai), refused payments not counted."""
    max_refund_fen: PositiveFen | None = None
    max_daily_refund_fen: PositiveFen | None = None
    app: str | None = None
    """The egress app it pays as (default: the first of ``[[egress.apps]]``)."""
    enabled: bool = True

    _check_networks = field_validator("addresses")(addresses_or_networks)

    @model_validator(mode="after")
    def _consistent(self) -> TerminalConfig:
        if self.auth == "hmac" and self.key_file is None:
            raise ValueError(f"terminal {self.id}: auth = hmac needs key_file")
        if self.auth == "mtls" and not (self.cert_cn or self.cert_spki_sha256):
            raise ValueError(f"terminal {self.id}: auth = mtls needs cert_cn or cert_spki_sha256")
        refunds = {TerminalOperation.refund, TerminalOperation.refund_query} & set(self.operations)
        if refunds and self.kind not in REFUND_KINDS:
            raise ValueError(
                f"terminal {self.id}: a {self.kind.value} may not start refunds (only a window or a HIS system:"
                " the gateway treats these refunds as approved by the HIS)"
            )
        if len(set(self.operations)) != len(self.operations):
            raise ValueError(f"terminal {self.id}: an operation is listed twice")
        return self

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(a, strict=False) for a in self.addresses]


class IntranetTls(StrictModel):
    cert: Path
    key: Path
    terminal_ca: Path | None = None
    """The hospital's own CA; terminals with a certificate from it may authenticate with it (``auth = "mtls"``)."""


class IntranetConfig(StrictModel):
    listen: str
    """On the hospital LAN only (never the DMZ's internet side): e.g. ``10.20.0.5:8480``."""
    tls: IntranetTls | None = None
    """Without it the listener speaks plain HTTP and only HMAC terminals can call."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024
    timestamp_window_s: Annotated[int, Field(ge=30, le=3600)] = 300
    answer_deadline_s: Annotated[float, Field(gt=0, le=120)] = 45
    """How long a payment waits for a definite outcome before it answers ``pending`` (the terminal then asks
    again); above the gateway's 付款码 deadline, so a payer entering a password is normally waited for."""
    per_terminal_concurrency: Annotated[int, Field(ge=1, le=1000)] = 8
    terminals: Annotated[list[TerminalConfig], Field(min_length=1)]

    _check = field_validator("listen")(host_port)

    @model_validator(mode="after")
    def _terminals(self) -> IntranetConfig:
        ids = [t.id for t in self.terminals]
        if len(set(ids)) != len(ids):
            raise ValueError("terminal ids must be unique")
        if any(t.auth == "mtls" for t in self.terminals) and (self.tls is None or self.tls.terminal_ca is None):
            raise ValueError("a terminal with auth = mtls needs [intranet.tls] with terminal_ca")
        return self

    def resolve(self, base: Path) -> None:
        def r(p: Path) -> Path:
            return p if p.is_absolute() else base / p

        if self.tls is not None:
            self.tls.cert, self.tls.key = r(self.tls.cert), r(self.tls.key)
            if self.tls.terminal_ca is not None:
                self.tls.terminal_ca = r(self.tls.terminal_ca)
        for t in self.terminals:
            if t.key_file is not None:
                t.key_file = r(t.key_file)
