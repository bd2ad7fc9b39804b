"""Prometheus figures of the money seams, read from the database at scrape time: exceptions finance has not
closed, by source and class, and HIS steps that wait on the HIS (how many are past ``his_stuck_after_s``, and
how long the oldest has waited).

Every instance reports the same database-wide figures, so the alert rules aggregate with ``max`` across
instances. The queries use the status/state indexes and touch only unfinished rows.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Gauge

from gateway.model import HIS_SENDABLE, OrderStatus, RefundOrigin, RefundState, utcnow
from gateway.store.db import Database
from gateway.store.recon_tables import recon_exceptions
from gateway.store.tables import orders, refunds

WORKING = ("open", "proposed", "approved")
REFUND_WAITS = {
    RefundState.his_applying.value: refunds.c.created_at,
    RefundState.succeeded.value: refunds.c.refunded_at,
    RefundState.his_cancelling.value: refunds.c.updated_at,
}


class MoneyMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.exceptions_open = Gauge(
            "hisgateway_exceptions_open",
            "Exceptions finance has not closed (open, proposed or approved), by who found them and their class.",
            ["source", "class"],
            registry=r,
        )
        self.his_stuck = Gauge(
            "hisgateway_his_stuck",
            "HIS steps (order commits; refund applications, write-backs and cancels) unfinished longer than"
            " workers.his_stuck_after_s.",
            ["kind"],
            registry=r,
        )
        self.his_oldest_wait = Gauge(
            "hisgateway_his_oldest_wait_seconds",
            "How long the oldest unfinished HIS step has waited, by kind (0 when none waits).",
            ["kind"],
            registry=r,
        )

    async def refresh(self, db: Database, stuck_after_s: float) -> None:
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=stuck_after_s)
        t = recon_exceptions.c
        o, r = orders.c, refunds.c
        order_wait = sa.and_(o.status == OrderStatus.paid.value, o.his_state.in_([s.value for s in HIS_SENDABLE]))
        refund_waits = [(r.state == state, since) for state, since in REFUND_WAITS.items()]
        business = r.origin == RefundOrigin.business.value
        async with db.read() as conn:
            counts = await conn.execute(
                sa.select(t.source, t["class"], sa.func.count())
                .where(t.status.in_(WORKING))
                .group_by(t.source, t["class"])
            )
            self.exceptions_open.clear()
            for source, cls, n in counts:
                self.exceptions_open.labels(source, cls).set(int(n))
            stuck_orders, oldest_paid = (
                await conn.execute(
                    sa.select(sa.func.count().filter(o.paid_at < cutoff), sa.func.min(o.paid_at)).where(order_wait)
                )
            ).one()
            stuck_refunds, oldest_refund = 0, None
            for waiting, since in refund_waits:
                n, oldest = (
                    await conn.execute(
                        sa.select(sa.func.count().filter(since < cutoff), sa.func.min(since)).where(waiting, business)
                    )
                ).one()
                stuck_refunds += int(n or 0)
                if oldest is not None and (oldest_refund is None or oldest < oldest_refund):
                    oldest_refund = oldest
        self.his_stuck.labels("order").set(int(stuck_orders or 0))
        self.his_stuck.labels("refund").set(stuck_refunds)
        for kind, oldest in (("order", oldest_paid), ("refund", oldest_refund)):
            age = (now - _aware(oldest)).total_seconds() if oldest is not None else 0.0
            self.his_oldest_wait.labels(kind).set(max(0.0, age))


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
