"""Hospitals, channel merchants and apps as the API (app keys) and the sagas (refund policy, which merchant serves
a hospital) read them. They are tenants managed in the database (``gateway.store.tenants``); a config's blocks
are imported at start."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from bridge import protocol
from gateway.config import DEFAULT_OPERATIONS, GatewayConfig
from gateway.model import HisCommit, RefundPolicy, utcnow
from gateway.store import tenants
from gateway.store.db import Database
from gateway.store.tables import hospitals, merchants


@dataclass(frozen=True)
class App:
    id: str
    hospital_id: str
    key: protocol.VerifyKey
    """The app's newest key."""
    notify_url: str | None
    enabled: bool
    """False when the app or its hospital is disabled."""
    notify_hosts: tuple[str, ...] = ()
    """Hosts an order's notify URL may name, besides the host of ``notify_url``."""
    keys: tuple[tenants.AppKey, ...] = ()
    operations: frozenset[str] = frozenset(DEFAULT_OPERATIONS)
    kind: str = "app"
    his_commit: HisCommit = HisCommit.gateway
    """Who tells the HIS after this app's payments: the app's own setting, else its hospital's."""
    client_cert_cn: str | None = None

    @property
    def is_agent(self) -> bool:
        """A hospital's bridge agent: it may name terminals and start HIS-approved window refunds."""
        return self.kind == "agent"

    def verify_keys(self, now: dt.datetime) -> list[protocol.VerifyKey]:
        """The keys a request signed now may verify against, newest first."""
        return [
            k.verify_key(self.id) for k in sorted(self.keys, key=lambda k: k.added_at, reverse=True) if k.valid_at(now)
        ]

    def other_keys(self, now: dt.datetime) -> list[tenants.AppKey]:
        """Keys that are not valid now (retired, or not valid yet): a signature by one of them is named as such."""
        return [k for k in self.keys if not k.valid_at(now)]


async def sync_from_config(db: Database, cfg: GatewayConfig) -> tenants.ImportReport:
    """Import the config's hospitals, apps and merchants (``gateway.store.tenants.import_blocks``)."""
    return await tenants.import_blocks(db, cfg.hospitals, cfg.merchants, actor="config", source="config")


async def load_app(db: Database, app_id: str) -> App | None:
    async with db.read() as conn:
        found = await tenants.load_app(conn, app_id)
    if found is None:
        return None
    row, hospital_enabled, hospital_his_commit = found.app, found.hospital_enabled, found.hospital_his_commit
    valid = row.valid_keys(utcnow()) or sorted(row.keys, key=lambda k: k.added_at, reverse=True)
    if not valid:
        return None
    return App(
        row.id,
        row.hospital_id,
        valid[0].verify_key(row.id),
        row.notify_url,
        row.enabled and hospital_enabled,
        row.notify_hosts,
        row.keys,
        row.allowed,
        kind=row.kind,
        his_commit=HisCommit(row.his_commit or hospital_his_commit),
        client_cert_cn=row.client_cert_cn,
    )


async def refund_policy(db: Database, hospital_id: str) -> RefundPolicy:
    async with db.read() as conn:
        value = (await conn.execute(sa.select(hospitals.c.refund_policy).where(hospitals.c.id == hospital_id))).scalar()
    return RefundPolicy(value or RefundPolicy.finance)


async def merchant_for(db: Database, hospital_id: str, channel: str) -> str | None:
    async with db.read() as conn:
        stmt = (
            sa.select(merchants.c.id)
            .where(merchants.c.hospital_id == hospital_id, merchants.c.channel == channel, merchants.c.enabled)
            .order_by(merchants.c.id)
            .limit(1)
        )
        return (await conn.execute(stmt)).scalar()


async def merchant_channel(db: Database, merchant_id: str) -> str | None:
    async with db.read() as conn:
        return (await conn.execute(sa.select(merchants.c.channel).where(merchants.c.id == merchant_id))).scalar()
