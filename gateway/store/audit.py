"""The audit log: who did what to which order or refund. Written in the transaction of the change it records."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import utcnow
from gateway.store.db import Database
from gateway.store.tables import audit_log


async def record(conn: AsyncConnection, actor: str, action: str, subject: str, detail: Any = None) -> None:
    await conn.execute(
        sa.insert(audit_log).values(at=utcnow(), actor=actor, action=action, subject=subject, detail=detail)
    )


async def entries(db: Database, subject: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    stmt = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if subject is not None:
        stmt = stmt.where(audit_log.c.subject == subject)
    async with db.read() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]
