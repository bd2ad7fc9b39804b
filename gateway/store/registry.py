"""Hospitals, channel merchants and apps: copied from the config into the database at start, read back by the
API (app keys) and the sagas (refund policy, which merchant serves a hospital)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bridge import protocol
from gateway.config import GatewayConfig
from gateway.model import RefundPolicy, utcnow
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
            await _upsert(
                conn, hospitals, {"id": h.id, "name": name, "refund_policy": h.refund_policy.value, "updated_at": now}
            )
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
        row = (await conn.execute(sa.select(apps).where(apps.c.id == app_id))).first()
    if row is None:
        return None
    return App(
        row.id,
        row.hospital_id,
        _verify_key(row.id, row.public_key_pem),
        row.notify_url,
        row.enabled,
        tuple(row.notify_hosts or ()),
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
