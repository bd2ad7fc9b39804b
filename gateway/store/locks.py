"""Registration slots held for apps (``registration_locks``), and the one rule that ties a slot to an order: at
most one order at a time may pay for a slot, and the slot is released only once that order can no longer be
paid (the channel confirmed it closed or failed)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import PAID_ORDER, OrderStatus, utcnow
from gateway.store.db import Database
from gateway.store.platform_tables import registration_locks
from gateway.store.tables import orders

UNPAYABLE = (OrderStatus.closed.value, OrderStatus.failed.value)
"""Order states in which no payment can land any more: the channel's word, never a clock's."""


@dataclass(frozen=True)
class Lock:
    id: int
    hospital_id: str
    app_id: str
    lock_no: str
    trade_no: str
    patient_id: str
    schedule_id: str
    state: str
    lock_id: str | None
    amount_fen: int | None
    expires_at: dt.datetime | None
    order_business_no: str | None
    his_error: dict[str, Any] | None
    release_reason: str | None
    attempts: int
    due_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class LockUnavailable(Exception):
    """An order names a slot it may not pay for; ``code`` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def from_row(row: Any) -> Lock:
    return Lock(**{c.name: row._mapping[c.name] for c in registration_locks.c})


async def insert(db: Database, values: dict[str, Any]) -> tuple[Lock, bool]:
    """Store a new lock, or return the one already stored under its ``lock_no`` (idempotent)."""
    now = utcnow()
    c = registration_locks.c
    async with db.write() as conn:
        existing = (
            await conn.execute(
                sa.select(registration_locks).where(
                    c.hospital_id == values["hospital_id"], c.lock_no == values["lock_no"]
                )
            )
        ).first()
        if existing is not None:
            return from_row(existing), False
        row = (
            await conn.execute(
                sa.insert(registration_locks)
                .values(created_at=now, updated_at=now, **values)
                .returning(*registration_locks.c)
            )
        ).one()
    return from_row(row), True


async def get(db: Database, hospital_id: str, lock_no: str) -> Lock | None:
    c = registration_locks.c
    async with db.read() as conn:
        row = (
            await conn.execute(sa.select(registration_locks).where(c.hospital_id == hospital_id, c.lock_no == lock_no))
        ).first()
    return from_row(row) if row is not None else None


async def update(db: Database, row_id: int, states: tuple[str, ...] | None, /, **values: Any) -> Lock | None:
    """Change a lock if it is (still) in one of ``states``; None when it was not."""
    c = registration_locks.c
    stmt = sa.update(registration_locks).where(c.id == row_id)
    if states is not None:
        stmt = stmt.where(c.state.in_(states))
    async with db.write() as conn:
        row = (await conn.execute(stmt.values(updated_at=utcnow(), **values).returning(*registration_locks.c))).first()
    return from_row(row) if row is not None else None


async def _order_status(conn: AsyncConnection, hospital_id: str, business_order_no: str) -> str | None:
    stmt = sa.select(orders.c.status).where(
        orders.c.hospital_id == hospital_id, orders.c.business_order_no == business_order_no
    )
    return (await conn.execute(stmt)).scalar()


async def reserve_for_order(
    db: Database, hospital_id: str, lock_id: str, business_order_no: str, patient_id: str, schedule_id: str
) -> Lock | None:
    """Before a registration order naming ``lock_id`` is created: make it the order that may pay for the slot.
    None for a lock the gateway did not take (the HIS judges it at commit). Raises ``LockUnavailable`` when
    the slot is released, not held yet, someone else's, or another order may still pay for it."""
    c = registration_locks.c
    async with db.write() as conn:
        row = (
            await conn.execute(
                db.for_update(sa.select(registration_locks).where(c.hospital_id == hospital_id, c.lock_id == lock_id))
            )
        ).first()
        if row is None:
            return None
        lock = from_row(row)
        if lock.patient_id != patient_id or lock.schedule_id != schedule_id:
            raise LockUnavailable("lock_mismatch", f"slot {lock.lock_no} is held for another patient or schedule")
        if lock.state in ("releasing", "released"):
            raise LockUnavailable("lock_released", f"slot {lock.lock_no} was released; lock a slot again")
        if lock.state == "used" and lock.order_business_no != business_order_no:
            raise LockUnavailable("lock_used", f"slot {lock.lock_no} was paid for by order {lock.order_business_no}")
        if lock.state not in ("locked", "used"):
            raise LockUnavailable("lock_not_held", f"slot {lock.lock_no} is {lock.state}, not held")
        holder = lock.order_business_no
        if holder is not None and holder != business_order_no:
            status = await _order_status(conn, hospital_id, holder)
            if status is not None and status not in UNPAYABLE:
                raise LockUnavailable(
                    "lock_in_use", f"order {holder} may still pay for slot {lock.lock_no}: close it first"
                )
        if holder != business_order_no:
            await conn.execute(
                sa.update(registration_locks)
                .where(c.id == lock.id)
                .values(order_business_no=business_order_no, updated_at=utcnow())
            )
    return lock


async def settle_with_orders(db: Database, *, limit: int = 500) -> tuple[int, int]:
    """Follow the orders that hold slots: a slot whose order can no longer be paid becomes due for release, a
    slot whose order was paid is ``used`` (never released). Returns (to release, used)."""
    c = registration_locks.c
    joined = registration_locks.join(
        orders,
        sa.and_(orders.c.hospital_id == c.hospital_id, orders.c.business_order_no == c.order_business_no),
    )
    stmt = (
        sa.select(c.id, orders.c.status, orders.c.business_order_no)
        .select_from(joined)
        .where(c.state == "locked", c.order_business_no.is_not(None))
        .where(orders.c.status.in_([*UNPAYABLE, *(s.value for s in PAID_ORDER)]))
        .limit(limit)
    )
    now = utcnow()
    release = used = 0
    async with db.write() as conn:
        for lock_id, status, business_order_no in (await conn.execute(stmt)).all():
            guard = sa.update(registration_locks).where(
                c.id == lock_id, c.state == "locked", c.order_business_no == business_order_no
            )
            if status in UNPAYABLE:
                reason = f"order {business_order_no} {status} unpaid"
                await conn.execute(
                    guard.values(state="releasing", due_at=now, release_reason=reason, attempts=0, updated_at=now)
                )
                release += 1
            else:
                await conn.execute(guard.values(state="used", updated_at=now))
                used += 1
    return release, used


async def holder_may_pay(db: Database, lock: Lock) -> str | None:
    """The order that may still pay for this slot, if any (open, or paid)."""
    if lock.order_business_no is None:
        return None
    async with db.read() as conn:
        status = await _order_status(conn, lock.hospital_id, lock.order_business_no)
    return lock.order_business_no if status is not None and status not in UNPAYABLE else None
