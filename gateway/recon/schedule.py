"""The daily schedule: each hospital at its own time (``recon_at``, else ``recon.at``, Asia/Shanghai)
reconciles the previous day.

Once per (hospital, day) across restarts and instances: a day that already has a scheduled run that finished
(or one still running, started within the last hour) is not run again; a failed one is retried every
``RETRY_S``. An instance that starts after the time catches up at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa
import structlog

from bridge import clock as shared_clock
from gateway.config import GatewayConfig
from gateway.recon.normalize import SHANGHAI
from gateway.store.db import Database
from gateway.store.recon_tables import recon_runs

if TYPE_CHECKING:
    from gateway.services import Services

log = structlog.get_logger("gateway.recon")

RETRY_S = 1800
STALE_RUNNING = dt.timedelta(hours=1)
Runner = Callable[[str, dt.date], Awaitable[object]]


def run_time(cfg: GatewayConfig, hospital: str) -> dt.time:
    text = cfg.hospital(hospital).recon_at or cfg.recon.at
    return dt.time.fromisoformat(text)


def due(cfg: GatewayConfig, now: dt.datetime) -> list[tuple[str, dt.date]]:
    """Hospitals whose time has come today, with the day they reconcile (yesterday, Asia/Shanghai)."""
    local = now.astimezone(SHANGHAI)
    return [(h.id, local.date() - dt.timedelta(days=1)) for h in cfg.hospitals if local.time() >= run_time(cfg, h.id)]


def next_wakeup(cfg: GatewayConfig, now: dt.datetime) -> dt.datetime:
    """The earliest scheduled time strictly after ``now``."""
    local = now.astimezone(SHANGHAI)
    times = []
    for h in cfg.hospitals:
        at = dt.datetime.combine(local.date(), run_time(cfg, h.id), SHANGHAI)
        times.append(at if at > local else at + dt.timedelta(days=1))
    return min(times)


async def _already_done(db: Database, hospital: str, day: dt.date, now: dt.datetime) -> bool:
    r = recon_runs.c
    stmt = sa.select(r.status, r.started_at).where(r.hospital_id == hospital, r.day == day, r.trigger == "schedule")
    async with db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    return any(s == "done" or (s == "running" and now - started < STALE_RUNNING) for s, started in rows)


async def tick(db: Database, cfg: GatewayConfig, now: dt.datetime, runner: Runner) -> list[tuple[str, dt.date]]:
    """Run what is due and not yet done; returns what it ran (failures are logged, retried next tick)."""
    ran = []
    for hospital, day in due(cfg, now):
        if await _already_done(db, hospital, day, now):
            continue
        ran.append((hospital, day))
        try:
            await runner(hospital, day)
        except Exception as exc:  # one hospital's failure must not stop the others
            log.error("recon_schedule_failed", hospital=hospital, day=day.isoformat(), error=str(exc))
    return ran


async def scheduler(
    db: Database,
    cfg: GatewayConfig,
    runner: Runner,
    *,
    clock: Callable[[], dt.datetime] = shared_clock.utcnow,
) -> None:
    """Run forever: tick, then sleep until the next scheduled time (or the retry interval, if sooner)."""
    while True:
        now = clock()
        try:
            await tick(db, cfg, now, runner)
        except Exception as exc:  # the database may be briefly away: try again later
            log.error("recon_schedule_tick_failed", error=str(exc))
        now = clock()
        wait = min((next_wakeup(cfg, now) - now).total_seconds(), RETRY_S)
        await shared_clock.sleep(max(wait, 1.0))


def start_scheduler(svc: Services) -> asyncio.Task[None]:
    """The scheduler as a task of a running gateway, with its channels and bridges."""
    from gateway.recon import run_reconciliation

    async def runner(hospital: str, day: dt.date) -> object:
        return await run_reconciliation(
            svc.db, svc.cfg, hospital, day, channels=svc.channels, his=svc.his.get(hospital), trigger="schedule"
        )

    return asyncio.create_task(scheduler(svc.db, svc.cfg, runner), name="recon-schedule")
