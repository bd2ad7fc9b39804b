"""Hospitals, channel merchants and apps: copied from the config into the database at start, read back by the
API (app keys) and the sagas (refund policy, which merchant serves a hospital)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bridge import protocol
from gateway.config import GatewayConfig
from gateway.model import HisCommit, RefundPolicy, utcnow
from gateway.store.db import Database
from gateway.store.tables import apps, hospitals, merchants


@dataclass(frozen=True)
class App:
    id: str
    hospital_id: str
    key: protocol.VerifyKey
    notify_url: str | None
    enabled: bool
    notify_hosts: tuple[str, ...] = ()
    """Hosts an order's notify URL may name, besides the host of ``notify_url``."""
    kind: str = "app"
    his_commit: HisCommit = HisCommit.gateway
    """Who tells the HIS after this app's payments: the app's own setting, else its hospital's."""
    client_cert_cn: str | None = None

    @property
    def is_agent(self) -> bool:
        """A hospital's bridge agent: it may name terminals and start HIS-approved window refunds."""
        return self.kind == "agent"


async def _upsert(conn: Any, table: sa.Table, row: dict[str, Any]) -> None:
    result = await conn.execute(sa.update(table).where(table.c.id == row["id"]).values(**row))
    if not result.rowcount:
        await conn.execute(sa.insert(table).values(**row))


async def sync_from_config(db: Database, cfg: GatewayConfig) -> None:
    """Make the registry match the config; apps and merchants no longer configured are disabled, not deleted
    (orders refer to them)."""
    now = utcnow()
    async with db.write() as conn:
        for h in cfg.hospitals:
            name = h.name or h.id
            row = {
                "id": h.id,
                "name": name,
                "refund_policy": h.refund_policy.value,
                "his_commit": h.his_commit.value,
                "updated_at": now,
            }
            await _upsert(conn, hospitals, row)
        for m in cfg.merchants:
            row = {"id": m.id, "channel": m.channel, "hospital_id": m.hospital, "enabled": m.enabled, "updated_at": now}
            await _upsert(conn, merchants, row)
        await conn.execute(
            sa.update(merchants).where(merchants.c.id.not_in([m.id for m in cfg.merchants])).values(enabled=False)
        )
        configured = []
        for h in cfg.hospitals:
            for a in h.apps:
                pem = protocol.load_verify_key(a.app_id, a.public_key).public_pem().decode()
                row = {
                    "id": a.app_id,
                    "hospital_id": h.id,
                    "public_key_pem": pem,
                    "notify_url": a.notify_url,
                    "notify_hosts": list(a.notify_hosts),
                    "enabled": a.enabled,
                    "kind": a.kind,
                    "his_commit": a.his_commit.value if a.his_commit is not None else None,
                    "client_cert_cn": a.client_cert_cn,
                    "updated_at": now,
                }
                await _upsert(conn, apps, row)
                configured.append(a.app_id)
        await conn.execute(sa.update(apps).where(apps.c.id.not_in(configured)).values(enabled=False))


def _verify_key(app_id: str, pem: str) -> protocol.VerifyKey:
    from cryptography.hazmat.primitives import serialization

    return protocol.VerifyKey(app_id, serialization.load_pem_public_key(pem.encode()))  # type: ignore[arg-type]


async def load_app(db: Database, app_id: str) -> App | None:
    async with db.read() as conn:
        stmt = sa.select(apps, hospitals.c.his_commit.label("hospital_his_commit")).join(
            hospitals, hospitals.c.id == apps.c.hospital_id
        )
        row = (await conn.execute(stmt.where(apps.c.id == app_id))).first()
    if row is None:
        return None
    return App(
        row.id,
        row.hospital_id,
        _verify_key(row.id, row.public_key_pem),
        row.notify_url,
        row.enabled,
        tuple(row.notify_hosts or ()),
        kind=row.kind,
        his_commit=HisCommit(row.his_commit or row.hospital_his_commit),
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
