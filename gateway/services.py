"""What the sagas and the API share within one gateway instance: the database, the channels by merchant, the
HIS links by hospital, and the wake-up signals of the workers."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import random
import secrets
from dataclasses import dataclass, field

import structlog

from gateway.channels.base import Channel
from gateway.config import GatewayConfig
from gateway.his import HisLink, NoBridge
from gateway.model import utcnow
from gateway.money_metrics import MoneyMetrics
from gateway.store.db import Database
from gateway.tenants.snapshot import Tenants

log = structlog.get_logger("gateway")


class UnknownMerchant(LookupError):
    pass


@dataclass
class Services:
    cfg: GatewayConfig
    db: Database
    channels: dict[str, Channel]
    """By merchant id."""
    his: dict[str, HisLink]
    """By hospital id."""
    instance: str = field(default_factory=lambda: secrets.token_hex(4))
    metrics: MoneyMetrics = field(default_factory=MoneyMetrics)
    wake_orders: asyncio.Event = field(default_factory=asyncio.Event)
    wake_refunds: asyncio.Event = field(default_factory=asyncio.Event)
    wake_events: asyncio.Event = field(default_factory=asyncio.Event)
    wake_outbox: asyncio.Event = field(default_factory=asyncio.Event)
    tenants: Tenants = field(default_factory=Tenants)
    """The hospitals and merchants as this instance last loaded them (``gateway.tenants.watcher``)."""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.trusted_proxies = tuple(ipaddress.ip_network(n, strict=False) for n in self.cfg.server.trusted_proxies)

    def channel(self, merchant_id: str) -> Channel:
        try:
            return self.channels[merchant_id]
        except KeyError:
            raise UnknownMerchant(f"merchant {merchant_id!r} has no channel in this instance") from None

    def his_for(self, hospital_id: str) -> HisLink:
        return self.his.get(hospital_id) or NoBridge(hospital_id)

    def notify_url(self, channel: str, merchant_id: str) -> str:
        return f"{self.cfg.server.public_url.rstrip('/')}/notify/{channel}/{merchant_id}"

    def lease(self) -> dt.datetime:
        return utcnow() + dt.timedelta(seconds=self.cfg.workers.lease_s)

    def backoff(self, attempts: int) -> dt.datetime:
        """When to try a failed step again: exponential with jitter, capped."""
        w = self.cfg.workers
        delay = min(w.retry_max_s, w.retry_base_s * 2 ** min(attempts, 20)) * random.uniform(0.8, 1.2)
        return utcnow() + dt.timedelta(seconds=delay)

    def soon(self, seconds: float) -> dt.datetime:
        return utcnow() + dt.timedelta(seconds=seconds)
