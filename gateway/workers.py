"""The background workers of one gateway instance: each claims due rows and runs one step on each.

Several instances may run the same workers on one PostgreSQL database: claims take row locks with
``SKIP LOCKED`` and lease the rows (``gateway.store.claims``), so no two instances work on one order, refund,
callback or notification at once. A step that raises is logged; its row comes back when its lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from gateway.model import OPEN_ORDER, HisState, OrderStatus
from gateway.notify_delivery import Deliverer
from gateway.sagas import callbacks, compensation, payment, refund
from gateway.services import Services, log
from gateway.store import claims, events, nonces, outbox
from gateway.store import orders as order_store
from gateway.store.tables import channel_events, notifications, orders, refunds

Step = Callable[[Any], Awaitable[Any]]
NONCE_PRUNE_S = 600


async def order_step(svc: Services, order: Any) -> None:
    if order.status in OPEN_ORDER:
        await compensation.check(svc, order)
    elif order.status == OrderStatus.paid and order.his_state in (HisState.none, HisState.pending):
        await payment.commit_his(svc, order)
    else:
        await order_store.update(svc.db, order.id, None, due_at=None)


async def event_step(svc: Services, event: Any) -> None:
    try:
        outcome = await callbacks.process(svc, event)
    except Exception as e:
        log.exception("callback_processing_failed", event_id=event.id)
        await events.retry(
            svc.db, event.id, f"{type(e).__name__}: {e}", svc.cfg.workers.retry_base_s * 2 ** min(event.attempts, 8)
        )
        return
    await events.finish(svc.db, event.id, outcome)


class Worker:
    def __init__(
        self,
        svc: Services,
        name: str,
        table: sa.Table,
        step: Step,
        wake: asyncio.Event,
        where: sa.ColumnElement[bool] | None = None,
    ) -> None:
        self.svc = svc
        self.name = name
        self.table = table
        self.step = step
        self.wake = wake
        self.where = where

    async def run_once(self) -> int:
        """Claim one batch and work it; the number of rows claimed."""
        w = self.svc.cfg.workers
        rows = await claims.claim(self.svc.db, self.table, limit=w.batch, lease_s=w.lease_s, where=self.where)
        await asyncio.gather(*(self._one(row) for row in rows))
        return len(rows)

    async def _one(self, row: Any) -> None:
        try:
            await self.step(row)
        except Exception:
            log.exception("worker_step_failed", worker=self.name, id=row.id)
        finally:
            if "leased_until" in self.table.c:
                with contextlib.suppress(Exception):
                    await claims.release(self.svc.db, self.table, row.id)

    async def run(self) -> None:
        while True:
            self.wake.clear()
            try:
                if await self.run_once():
                    continue
            except Exception:
                log.exception("worker_claim_failed", worker=self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.svc.cfg.workers.poll_interval_s)


def build_workers(svc: Services, deliverer: Deliverer) -> list[Worker]:
    return [
        Worker(svc, "orders", orders, lambda row: order_step(svc, row), svc.wake_orders),
        Worker(svc, "refunds", refunds, lambda row: refund.advance(svc, row), svc.wake_refunds),
        Worker(
            svc, "callbacks", channel_events, lambda row: event_step(svc, row), svc.wake_events,
            channel_events.c.processed_at.is_(None),
        ),
        Worker(
            svc, "outbox", notifications, deliverer.deliver, svc.wake_outbox, notifications.c.state == outbox.PENDING
        ),
    ]  # fmt: skip


async def prune_nonces(svc: Services) -> None:
    while True:
        try:
            await nonces.prune(svc.db)
        except Exception:
            log.exception("nonce_prune_failed")
        await asyncio.sleep(NONCE_PRUNE_S)
