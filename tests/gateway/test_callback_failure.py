"""A callback whose processing fails is retried later with back-off, its error recorded. Found by
``his-sandbox day``: the failure path logged with a keyword (``event=``) that the logger takes as its own
first argument, so it raised ``TypeError`` before the retry was scheduled, and the event was claimed again at once
with nothing recorded."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from gateway.model import utcnow
from gateway.store.tables import channel_events
from gateway.workers import event_step
from tests.support.gateway_rig import MERCHANT


async def test_a_failing_callback_is_retried_later_with_its_error(
    gateway_factory, sqlite_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await gateway_factory(sqlite_url)
    db = running.svc.db
    async with db.write() as conn:
        await conn.execute(
            sa.insert(channel_events).values(
                merchant_id=MERCHANT, notification_id="n-1", kind="payment", payload={}, received_at=utcnow(),
                due_at=utcnow(),
            )
        )  # fmt: skip
    async with db.read() as conn:
        event = (await conn.execute(sa.select(channel_events))).one()

    async def broken(svc, event):  # type: ignore[no-untyped-def]
        raise RuntimeError("the database went away")

    monkeypatch.setattr("gateway.workers.callbacks.process", broken)
    await event_step(running.svc, event)
    async with db.read() as conn:
        after = (await conn.execute(sa.select(channel_events))).one()
    assert after.attempts == 1
    assert "the database went away" in after.outcome
    assert after.processed_at is None and after.due_at > utcnow()
