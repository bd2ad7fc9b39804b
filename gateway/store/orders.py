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

from gateway.model import HisState, OrderStatus, utcnow
from gateway.store.db import Database
from gateway.store.recon_tables import recon_exceptions
from gateway.store.tables import orders

WORKING_STATUSES = ("open", "proposed", "approved")

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
        return await get_in(conn, order_id)


async def get_in(conn: AsyncConnection, order_id: int) -> Order | None:
    return (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).first()


async def lock(db: Database, conn: AsyncConnection, order_id: int) -> Order | None:
    """Read an order inside a write transaction, holding its row lock (PostgreSQL) until commit."""
    stmt = db.for_update(sa.select(orders).where(orders.c.id == order_id))
    return (await conn.execute(stmt)).first()


async def transition(
    conn: AsyncConnection,
    order_id: int,
    from_status: Iterable[OrderStatus] | None,
    *,
    his_states: Iterable[HisState] | None = None,
    **values: Any,
) -> Order | None:
    """Apply ``values`` if the order is in one of ``from_status`` (any status when None) and, when given, one of
    ``his_states``; the updated row, or None when it was not in them."""
    stmt = sa.update(orders).where(orders.c.id == order_id)
    if from_status is not None:
        stmt = stmt.where(orders.c.status.in_([s.value for s in from_status]))
    if his_states is not None:
        stmt = stmt.where(orders.c.his_state.in_([s.value for s in his_states]))
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
        cond.append(has_open_exception())
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


def has_open_exception() -> sa.ColumnElement[bool]:
    """An order with an exception finance has not closed — about the payment or any of its refunds, raised by the
    sagas or found by reconciliation — or, for an order flagged before exceptions were rows, its own flag."""
    e = recon_exceptions.c
    about_it = sa.and_(e.hospital_id == orders.c.hospital_id, e.out_trade_no == orders.c.out_trade_no)
    working = sa.exists().where(about_it, e.status.in_(WORKING_STATUSES))
    legacy = sa.and_(orders.c.exception.is_not(None), ~sa.exists().where(about_it))
    return sa.or_(working, legacy)


async def open_exceptions(db: Database, hospital_id: str, out_trade_nos: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The unclosed exceptions of these orders, by out_trade_no."""
    e = recon_exceptions.c
    out: dict[str, list[dict[str, Any]]] = {}
    if not out_trade_nos:
        return out
    stmt = (
        sa.select(e.out_trade_no, e.source, e.entry_key, e["class"], e.status, e.detail, e.day)
        .where(e.hospital_id == hospital_id, e.out_trade_no.in_(out_trade_nos), e.status.in_(WORKING_STATUSES))
        .order_by(e.id)
    )
    async with db.read() as conn:
        for r in await conn.execute(stmt):
            out.setdefault(r.out_trade_no, []).append(
                {"source": r.source, "entry_key": r.entry_key, "class": r._mapping["class"], "status": r.status,
                 "detail": r.detail, "day": r.day.isoformat()}
            )  # fmt: skip
    return out


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
