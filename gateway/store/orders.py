"""Orders: the rows, looked up by any of their keys, and state changes that only apply from an expected state.

Every change is conditional on the status the caller saw (``UPDATE … WHERE status IN (…)``), so two workers
or a worker and a callback acting on the same order cannot both apply a transition: the second finds no row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import OrderStatus, utcnow
from gateway.store.db import Database
from gateway.store.tables import orders

Order = sa.Row[Any]


async def insert(db: Database, values: dict[str, Any]) -> tuple[Order, bool]:
    """Insert a new order, or return the one already stored under (hospital, business order no)."""
    now = utcnow()
    try:
        async with db.write() as conn:
            row = (
                await conn.execute(
                    sa.insert(orders).values(created_at=now, updated_at=now, **values).returning(*orders.c)
                )
            ).one()
        return row, True
    except IntegrityError:
        existing = await by_business_no(db, values["hospital_id"], values["business_order_no"])
        if existing is None:
            raise
        return existing, False


async def by_business_no(db: Database, hospital_id: str, business_order_no: str) -> Order | None:
    async with db.read() as conn:
        stmt = sa.select(orders).where(
            orders.c.hospital_id == hospital_id, orders.c.business_order_no == business_order_no
        )
        return (await conn.execute(stmt)).first()


async def by_out_trade_no(db: Database, out_trade_no: str) -> Order | None:
    async with db.read() as conn:
        return (await conn.execute(sa.select(orders).where(orders.c.out_trade_no == out_trade_no))).first()


async def get(db: Database, order_id: int) -> Order | None:
    async with db.read() as conn:
        return (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).first()


async def lock(db: Database, conn: AsyncConnection, order_id: int) -> Order | None:
    """Read an order inside a write transaction, holding its row lock (PostgreSQL) until commit."""
    stmt = db.for_update(sa.select(orders).where(orders.c.id == order_id))
    return (await conn.execute(stmt)).first()


async def transition(
    conn: AsyncConnection, order_id: int, from_status: Iterable[OrderStatus] | None, **values: Any
) -> Order | None:
    """Apply ``values`` if the order is in one of ``from_status`` (any status when None); the updated row."""
    stmt = sa.update(orders).where(orders.c.id == order_id)
    if from_status is not None:
        stmt = stmt.where(orders.c.status.in_([s.value for s in from_status]))
    result = await conn.execute(stmt.values(updated_at=utcnow(), **values).returning(*orders.c))
    return result.first()


async def update(db: Database, order_id: int, from_status: Iterable[OrderStatus] | None, **values: Any) -> Order | None:
    async with db.write() as conn:
        return await transition(conn, order_id, from_status, **values)


async def page(
    db: Database,
    hospital_id: str,
    *,
    page: int,
    page_size: int,
    status: str | None = None,
    exceptions_only: bool = False,
    since: dt.datetime | None = None,
) -> tuple[list[Order], int]:
    cond = [orders.c.hospital_id == hospital_id]
    if status:
        cond.append(orders.c.status == status)
    if exceptions_only:
        cond.append(orders.c.exception.is_not(None))
    if since is not None:
        cond.append(orders.c.created_at >= since)
    async with db.read() as conn:
        total = (await conn.execute(sa.select(sa.func.count()).select_from(orders).where(*cond))).scalar() or 0
        rows = await conn.execute(
            sa.select(orders)
            .where(*cond)
            .order_by(orders.c.created_at.desc(), orders.c.id.desc())
            .offset((page - 1) * page_size)
            .limit(page_size)
        )
        return list(rows), int(total)


async def try_claim(db: Database, order_id: int, until: dt.datetime) -> Order | None:
    """Claim one order for an inline step, unless a worker holds it."""
    now = utcnow()
    async with db.write() as conn:
        stmt = (
            sa.update(orders)
            .where(orders.c.id == order_id, sa.or_(orders.c.leased_until.is_(None), orders.c.leased_until <= now))
            .values(due_at=until, leased_until=until)
            .returning(*orders.c)
        )
        return (await conn.execute(stmt)).first()
