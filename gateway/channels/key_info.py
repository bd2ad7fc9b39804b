"""What the gateway knows of one key or certificate it holds or trusts: its role, its status, its dates. The
channels list their keys in these terms (``Channel.keys``), and ``his-gateway channels keys`` and the expiry metric
read them, without loading any key material."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum


class KeyRole(StrEnum):
    signs = "signs"
    """The merchant's key: signs our requests."""
    verifies = "verifies"
    """The channel's key or certificate: verifies its answers and callbacks."""
    anchors = "anchors"
    """A root or intermediate certificate the channel's certificates are checked against."""


class KeyStatus(StrEnum):
    active = "active"
    """Signs now (or, for a channel's key, is trusted now)."""
    standby = "standby"
    """Configured, takes over at its ``valid_from``."""
    superseded = "superseded"
    """Still valid, but a newer key signs; kept until its record is removed."""
    retired = "retired"
    expired = "expired"


@dataclass(frozen=True)
class KeyInfo:
    """One line of ``his-gateway channels keys`` and one series of the expiry metric."""

    channel: str
    role: KeyRole
    id: str
    serial: str
    status: KeyStatus
    not_after: dt.datetime | None
    used_for: str
    valid_from: dt.datetime | None = None
    retire_after: dt.datetime | None = None
    watched: bool = True
    """False for what the merchant neither configures nor replaces (UnionPay's signing certificate, seen on
    messages and replaced by UnionPay): listed, but no alert."""

    def expires_within(self, delta: dt.timedelta, now: dt.datetime) -> bool:
        return self.not_after is not None and self.not_after - now <= delta
