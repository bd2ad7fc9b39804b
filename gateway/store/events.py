"""The inbox of verified channel callbacks.

A callback is stored before it is acknowledged and processed after: the channel gets its answer within its
deadline whatever the HIS is doing, and a crash between the two loses nothing. The unique key
(merchant, notification id) makes a resent callback a no-op.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gateway.channels.base import Notification, RefundState, RefundStatus, TradeState, TradeStatus
from gateway.model import utcnow
from gateway.store.db import Database
from gateway.store.tables import channel_events


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def encode(notification: Notification) -> dict[str, Any]:
    return _plain(dataclasses.asdict(notification))


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def decode(data: dict[str, Any]) -> Notification:
    trade = refund = None
    if data.get("trade"):
        t = dict(data["trade"])
        trade = TradeStatus(**{**t, "state": TradeState(t["state"]), "paid_at": _time(t.get("paid_at"))})
    if data.get("refund"):
        r = dict(data["refund"])
        refund = RefundStatus(**{**r, "state": RefundState(r["state"]), "succeeded_at": _time(r.get("succeeded_at"))})
    return Notification(kind=data["kind"], notification_id=data["notification_id"], trade=trade, refund=refund)


async def record(db: Database, merchant_id: str, notification: Notification) -> tuple[int | None, bool]:
    """Store a verified callback; ``(id, True)`` the first time, ``(None, False)`` for a duplicate."""
    now = utcnow()
    try:
        async with db.write() as conn:
            event_id = (
                await conn.execute(
                    sa.insert(channel_events)
                    .values(
                        merchant_id=merchant_id,
                        notification_id=notification.notification_id[:128],
                        kind=notification.kind,
                        payload=encode(notification),
                        received_at=now,
                        due_at=now,
                    )
                    .returning(channel_events.c.id)
                )
            ).scalar_one()
    except IntegrityError:
        return None, False
    return int(event_id), True


async def finish(db: Database, event_id: int, outcome: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            sa.update(channel_events)
            .where(channel_events.c.id == event_id)
            .values(processed_at=utcnow(), outcome=outcome[:200], due_at=None)
        )


async def retry(db: Database, event_id: int, error: str, delay_s: float) -> None:
    async with db.write() as conn:
        await conn.execute(
            sa.update(channel_events)
            .where(channel_events.c.id == event_id)
            .values(
                outcome=error[:200],
                attempts=channel_events.c.attempts + 1,
                due_at=utcnow() + dt.timedelta(seconds=delay_s),
            )
        )
