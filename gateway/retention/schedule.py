"""Retention on a schedule: once a day at ``[retention] at`` (Asia/Shanghai), one instance — whichever claims
the day's ``archive`` job lease — runs every kind's policy. A failed day is tried again an hour later; the
archive files and the job row say what happened."""

from __future__ import annotations

import asyncio
import datetime as dt

import structlog

from gateway.model import utcnow
from gateway.recon.normalize import SHANGHAI
from gateway.retention import archive
from gateway.services import Services
from gateway.store import leases

log = structlog.get_logger("gateway.retention")

JOB = "archive"
LEASE_S = 6 * 3600.0
RETRY_S = 3600.0
POLL_S = 60.0


async def run_day(svc: Services, lease: leases.Lease) -> None:
    cfg = svc.cfg.retention
    failures = []
    for kind, days in cfg.days.items():
        try:
            outcome = await archive.run_policy(svc.db, kind, days, cfg.directory, remove_rows=cfg.remove)
            log.info(
                "retention_done", kind=kind, note=outcome.note, archive=outcome.archive.id if outcome.archive else None
            )
        except Exception as e:  # one kind's trouble must not stop the others
            log.error("retention_failed", kind=kind, error=str(e))
            failures.append(f"{kind}: {e}")
    if failures:
        await leases.fail(svc.db, lease, "; ".join(failures), retry_s=RETRY_S)
    else:
        await leases.finish(svc.db, lease)


async def retention_forever(svc: Services) -> None:
    at = dt.time.fromisoformat(svc.cfg.retention.at)
    while True:
        try:
            local = utcnow().astimezone(SHANGHAI)
            if local.time() >= at:
                await leases.ensure(svc.db, JOB, [("*", local.date())])
            for lease in await leases.claim(svc.db, JOB, svc.instance, limit=1, lease_s=LEASE_S):
                await run_day(svc, lease)
        except Exception:
            log.exception("retention_schedule_failed")
        await asyncio.sleep(POLL_S)
