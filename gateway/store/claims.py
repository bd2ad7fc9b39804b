"""Claiming due rows for a worker, safely across several gateway instances on one database.

A row is due when ``due_at <= now``. Claiming moves ``due_at`` to the end of a lease in the same short
transaction that selected it, so the claim outlives the transaction while the slow part (a channel, bridge or
HTTP call) runs outside any transaction; a worker that dies mid-step only delays the row by one lease. On
PostgreSQL the selection takes row locks with ``SKIP LOCKED``: two instances claiming at once get disjoint
rows without waiting on each other. On SQLite the writer lock of ``BEGIN IMMEDIATE`` does the same job.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from gateway.model import utcnow
from gateway.store.db import Database


async def claim(
    db: Database,
    table: sa.Table,
    *,
    limit: int,
    lease_s: float,
    where: sa.ColumnElement[bool] | None = None,
) -> list[sa.Row[Any]]:
    now = utcnow()
    select = sa.select(table.c.id).where(table.c.due_at.is_not(None), table.c.due_at <= now)
    if where is not None:
        select = select.where(where)
    select = db.for_update(select.order_by(table.c.due_at).limit(limit), skip_locked=True)
    async with db.write() as conn:
        ids = list((await conn.execute(select)).scalars())
        if not ids:
            return []
        until = now + dt.timedelta(seconds=lease_s)
        values = {"due_at": until, **({"leased_until": until} if "leased_until" in table.c else {})}
        await conn.execute(sa.update(table).where(table.c.id.in_(ids)).values(**values))
        rows = (await conn.execute(sa.select(table).where(table.c.id.in_(ids)).order_by(table.c.id))).all()
    return list(rows)


async def release(db: Database, table: sa.Table, row_id: int) -> None:
    """End a lease early (the step is over), for tables that record it."""
    async with db.write() as conn:
        await conn.execute(sa.update(table).where(table.c.id == row_id).values(leased_until=None))
