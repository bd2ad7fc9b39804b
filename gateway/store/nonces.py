"""The API's nonce cache, in the database: durable across restarts and shared by every instance."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gateway.model import utcnow
from gateway.store.db import Database
from gateway.store.tables import api_nonces


async def remember(db: Database, key_id: str, nonce: str, expires_at: dt.datetime) -> bool:
    """False when this nonce was already used with this key (a replay)."""
    try:
        async with db.write() as conn:
            await conn.execute(sa.insert(api_nonces).values(key_id=key_id, nonce=nonce, expires_at=expires_at))
    except IntegrityError:
        return False
    return True


async def prune(db: Database) -> int:
    """Forget nonces whose timestamp window has passed: a replay of them is refused as stale anyway."""
    async with db.write() as conn:
        result = await conn.execute(sa.delete(api_nonces).where(api_nonces.c.expires_at < utcnow()))
    return result.rowcount or 0
