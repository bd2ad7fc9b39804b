"""The outbox of notifications to hospital business systems.

A notification is written in the same transaction as the state change it announces, so an order cannot
complete without its notification existing, and (event type, subject) is unique, so a state change applied
twice still announces once. Delivery is the outbox worker's (``gateway.notify_delivery``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import utcnow
from gateway.store.db import Database
from gateway.store.tables import apps, notifications

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
Notice = sa.Row[Any]


async def enqueue(
    conn: AsyncConnection,
    *,
    app_id: str,
    hospital_id: str,
    event_type: str,
    subject_key: str,
    payload: dict[str, Any],
    notify_url: str | None = None,
) -> None:
    """Add a notification in the caller's transaction; a second one for the same event is ignored."""
    if notify_url is None:
        notify_url = (await conn.execute(sa.select(apps.c.notify_url).where(apps.c.id == app_id))).scalar()
    now = utcnow()
    values = {
        "app_id": app_id,
        "hospital_id": hospital_id,
        "event_type": event_type,
        "subject_key": subject_key,
        "payload": payload,
        "notify_url": notify_url,
        "state": PENDING,
        "created_at": now,
        "due_at": now if notify_url else None,
    }
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    await conn.execute(insert(notifications).values(**values).on_conflict_do_nothing())


async def get(db: Database, notice_id: int) -> Notice | None:
    async with db.read() as conn:
        return (await conn.execute(sa.select(notifications).where(notifications.c.id == notice_id))).first()


async def delivered(db: Database, notice_id: int, status: int) -> None:
    async with db.write() as conn:
        await conn.execute(
            sa.update(notifications)
            .where(notifications.c.id == notice_id)
            .values(
                state=DELIVERED,
                delivered_at=utcnow(),
                last_status=status,
                last_error=None,
                attempts=notifications.c.attempts + 1,
                due_at=None,
            )
        )


async def attempt_failed(
    db: Database, notice_id: int, *, status: int | None, error: str, retry_in_s: float | None
) -> None:
    """Count a failed attempt; the next one in ``retry_in_s``, or none (dead) once the schedule is spent."""
    values: dict[str, Any] = {
        "last_status": status,
        "last_error": error[:500],
        "attempts": notifications.c.attempts + 1,
    }
    if retry_in_s is None:
        values.update(state=DEAD, due_at=None)
    else:
        values["due_at"] = utcnow() + dt.timedelta(seconds=retry_in_s)
    async with db.write() as conn:
        await conn.execute(sa.update(notifications).where(notifications.c.id == notice_id).values(**values))


async def resend(db: Database, notice_id: int) -> Notice | None:
    """Deliver again from the start of the schedule, whatever happened before (an operator's command)."""
    async with db.write() as conn:
        return (
            await conn.execute(
                sa.update(notifications)
                .where(notifications.c.id == notice_id)
                .values(state=PENDING, attempts=0, due_at=utcnow(), last_error=None)
                .returning(*notifications.c)
            )
        ).first()


async def for_app(
    db: Database, app_id: str, *, undelivered: bool = False, after_id: int = 0, limit: int = 100
) -> list[Notice]:
    """The pull API: an app's events in order, so a business system can catch up without its endpoint."""
    stmt = sa.select(notifications).where(notifications.c.app_id == app_id, notifications.c.id > after_id)
    if undelivered:
        stmt = stmt.where(notifications.c.state != DELIVERED)
    async with db.read() as conn:
        return list(await conn.execute(stmt.order_by(notifications.c.id).limit(limit)))


async def by_subject(db: Database, subject_key: str) -> list[Notice]:
    async with db.read() as conn:
        stmt = sa.select(notifications).where(notifications.c.subject_key == subject_key).order_by(notifications.c.id)
        return list(await conn.execute(stmt))
