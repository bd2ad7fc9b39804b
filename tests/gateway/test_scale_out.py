"""Two gateway instances on one PostgreSQL database, workers running in both: every notification is sent
once, and no order is queried at the channel by both at once (claims with ``FOR UPDATE SKIP LOCKED``)."""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store import outbox
from gateway.store.tables import notifications
from tests.gateway.saga_helpers import create
from tests.support.gateway_rig import APP_ID, HOSPITAL, NotifyReceiver, eventually

EVENTS = 60
ORDERS = 30


async def test_two_instances_send_each_notification_once(gateway_factory, keys, pg_url):
    receiver = await NotifyReceiver(keys.gateway.public(), delay_s=0.02).start()
    try:
        first = await gateway_factory(pg_url, notify_url=receiver.url, workers={"batch": 5})
        async with first.svc.db.write() as conn:
            for i in range(EVENTS):
                await outbox.enqueue(
                    conn, app_id=APP_ID, hospital_id=HOSPITAL, event_type="order.completed",
                    subject_key=f"T{i:03d}", payload={"n": i},
                )  # fmt: skip
        await gateway_factory(pg_url, notify_url=receiver.url, run_workers=True, workers={"batch": 5})
        await gateway_factory(pg_url, notify_url=receiver.url, run_workers=True, workers={"batch": 5})

        async def all_delivered() -> bool:
            async with first.svc.db.read() as conn:
                left = await conn.execute(
                    sa.select(sa.func.count()).select_from(notifications).where(notifications.c.state != "delivered")
                )
                return left.scalar() == 0

        await eventually(all_delivered, what="every notification delivered")
        assert sorted(receiver.received) == sorted(set(receiver.received))
        assert len(receiver.received) == EVENTS and receiver.bad_signatures == 0
    finally:
        await receiver.close()


async def test_two_instances_never_query_one_order_at_once(gateway_factory, api_factory, channel, pg_url):
    channel.query_delay_s = 0.05
    creator = await gateway_factory(pg_url, channel=channel, workers={"pending_query_after_s": 3600})
    client = api_factory(creator)
    trades = [(await create(client, f"SCALE-{i:02d}"))["out_trade_no"] for i in range(ORDERS)]
    assert channel.calls["query"] == 0
    settings = {"pending_query_after_s": 0, "batch": 4, "retry_base_s": 3600}
    async with creator.svc.db.write() as conn:
        await conn.execute(sa.text("UPDATE orders SET due_at = now()"))
    await gateway_factory(pg_url, channel=channel, run_workers=True, workers=settings)
    await gateway_factory(pg_url, channel=channel, run_workers=True, workers=settings)

    async def all_queried() -> bool:
        return all(channel.queried[t] >= 1 for t in trades)

    await eventually(all_queried, what="every open order queried")
    assert channel.max_concurrent_queries == 1
    assert all(channel.queried[t] == 1 for t in trades)
