"""Keeping the channels' certificates current on every instance: each instance takes up what the others
fetched, and one instance at a time fetches on a merchant's schedule.

Every ``reload_s`` each instance loads the certificates kept in the database into its channels (cheap: a few
rows). A merchant whose channel refreshes on a schedule (WeChat platform certificates) has one row in
``channel_key_refresh``; whichever instance claims it when due downloads, keeps what it found for all, and sets
the next due time. A failed download is retried sooner, with backoff, and logged; the certificates already
trusted keep working meanwhile (WeChat publishes a new certificate well before it uses it).
"""

from __future__ import annotations

import asyncio
import datetime as dt

from gateway.channels.base import ChannelError
from gateway.model import utcnow
from gateway.services import Services, log
from gateway.store import channel_state

RELOAD_S = 60.0
LEASE_S = 300.0


async def reload_all(svc: Services) -> None:
    for merchant_id, channel in svc.channels.items():
        try:
            await channel.load_trust()
        except Exception:
            log.exception("channel_trust_reload_failed", merchant=merchant_id)


async def refresh_due(svc: Services) -> list[str]:
    """Claim and refresh the merchants whose schedule is due; the merchants refreshed."""
    done = []
    for merchant_id in await channel_state.claim_refresh(svc.db, lease_s=LEASE_S):
        channel = svc.channels.get(merchant_id)
        every = channel.refresh_every_s() if channel is not None else None
        if channel is None or every is None:
            await channel_state.refreshed(svc.db, merchant_id, next_at=utcnow() + dt.timedelta(days=1))
            continue
        try:
            added = await channel.refresh_trust(force=True)
        except (ChannelError, OSError) as exc:
            attempts = await channel_state.refresh_attempts(svc.db, merchant_id)
            delay = min(every, 60.0 * 2 ** min(attempts, 10))
            log.warning("channel_trust_refresh_failed", merchant=merchant_id, error=str(exc), retry_in_s=delay)
            await channel_state.refreshed(
                svc.db, merchant_id, next_at=utcnow() + dt.timedelta(seconds=delay), error=str(exc)[:2000]
            )
            continue
        log.info("channel_trust_refreshed", merchant=merchant_id, new_certificates=added)
        await channel_state.refreshed(svc.db, merchant_id, next_at=utcnow() + dt.timedelta(seconds=every))
        done.append(merchant_id)
    return done


async def run(svc: Services, *, reload_s: float = RELOAD_S) -> None:
    scheduled = [m for m, c in svc.channels.items() if c.refresh_every_s() is not None]
    await channel_state.schedule_refresh(svc.db, scheduled)
    while True:
        await reload_all(svc)
        try:
            await refresh_due(svc)
        except Exception:
            log.exception("channel_trust_schedule_failed")
        await asyncio.sleep(reload_s)
