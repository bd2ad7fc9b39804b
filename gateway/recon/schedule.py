"""The daily schedule, spread over every instance: each hospital at its own time (``recon_at``, else
``recon.at``, Asia/Shanghai) reconciles the previous day, and each (hospital, day) is run by exactly one
instance.

Every instance, when a hospital's time has come, makes sure the day has a job row (``gateway.store.leases``),
then claims due jobs up to ``recon.concurrency`` at a time (``SKIP LOCKED``: instances starting together share
the work instead of waiting on each other). A claimed day's lease is renewed every third of ``recon.lease_s``
while its run goes on; the run writes its verdicts and marks the day done in one commit, only if its instance
still holds the lease. An instance that dies leaves its days to be taken over once their leases run out; the
one that takes a day over marks the abandoned run failed and starts a new version. A run that fails (statement
not ready yet, the agent away) is retried after ``recon.retry_s``. An instance started after the time catches
up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable

import sqlalchemy as sa
import structlog

from bridge import clock as shared_clock
from gateway.config import GatewayConfig, HospitalConfig
from gateway.model import utcnow
from gateway.recon.normalize import SHANGHAI
from gateway.recon.runs import RunStarted, WithinCommit, run_day
from gateway.services import Services
from gateway.store import leases
from gateway.store.db import Database
from gateway.store.recon_tables import recon_runs
from gateway.tenants.snapshot import Tenants

log = structlog.get_logger("gateway.recon")

JOB = "recon"
Runner = Callable[[str, dt.date, RunStarted, WithinCommit], Awaitable[object]]
"""``(hospital, day, on_start, within_commit)``: one run, with the hooks that tie it to its lease."""
Clock = Callable[[], dt.datetime]


def run_time(hospital: HospitalConfig, default_at: str) -> dt.time:
    return dt.time.fromisoformat(hospital.recon_at or default_at)


def due(hospitals: Iterable[HospitalConfig], default_at: str, now: dt.datetime) -> list[tuple[str, dt.date]]:
    """Hospitals whose time has come today, with the day they reconcile (yesterday, Asia/Shanghai)."""
    local = now.astimezone(SHANGHAI)
    yesterday = local.date() - dt.timedelta(days=1)
    return [(h.id, yesterday) for h in hospitals if local.time() >= run_time(h, default_at)]


def next_wakeup(hospitals: Iterable[HospitalConfig], default_at: str, now: dt.datetime) -> dt.datetime | None:
    """The earliest scheduled time strictly after ``now`` (None without hospitals)."""
    local = now.astimezone(SHANGHAI)
    times = []
    for h in hospitals:
        at = dt.datetime.combine(local.date(), run_time(h, default_at), SHANGHAI)
        times.append(at if at > local else at + dt.timedelta(days=1))
    return min(times, default=None)


async def _ran_before_leases(db: Database, pairs: list[tuple[str, dt.date]]) -> list[tuple[str, dt.date]]:
    """Days a scheduled run finished before this database had job leases (an upgrade on the day)."""
    if not pairs:
        return []
    r = recon_runs.c
    days = {d for _, d in pairs}
    stmt = sa.select(r.hospital_id, r.day).where(r.trigger == "schedule", r.status == "done", r.day.in_(days))
    async with db.read() as conn:
        done = {(h, d) for h, d in (await conn.execute(stmt)).all()}
    return [p for p in pairs if p in done]


async def abandon(db: Database, run_id: int, instance: str | None) -> None:
    """Mark the run an instance left behind (it died, or stalled past its lease) failed."""
    async with db.write() as conn:
        await conn.execute(
            sa.update(recon_runs)
            .where(recon_runs.c.id == run_id, recon_runs.c.status == "running")
            .values(status="failed", error=f"abandoned: instance {instance} lost its lease", finished_at=utcnow())
        )


class Scheduler:
    """One instance's share of the daily reconciliation."""

    def __init__(
        self,
        db: Database,
        cfg: GatewayConfig,
        tenants: Callable[[], Tenants],
        runner: Runner,
        *,
        instance: str,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.cfg = cfg
        self.tenants = tenants
        self.runner = runner
        self.instance = instance
        self.clock = clock
        self.running: dict[int, asyncio.Task[None]] = {}
        self._ensured: set[tuple[str, dt.date]] = set()
        self.wake = asyncio.Event()

    @property
    def poll_s(self) -> float:
        """How often due and abandoned days are looked for: well within a lease, and at most every 10 s."""
        return min(10.0, self.cfg.recon.lease_s / 4)

    async def tick(self) -> list[leases.Lease]:
        """Create the jobs whose time has come, claim what this instance has room for, and start them."""
        pairs = [
            p for p in due(self.tenants().active_hospitals(), self.cfg.recon.at, self.clock()) if p not in self._ensured
        ]
        if pairs:
            await leases.ensure(self.db, JOB, pairs, done=await _ran_before_leases(self.db, pairs))
            newest = max(day for _, day in pairs)
            self._ensured = {p for p in self._ensured if p[1] >= newest} | set(pairs)
        room = self.cfg.recon.concurrency - len(self.running)
        claimed = await leases.claim(self.db, JOB, self.instance, limit=room, lease_s=self.cfg.recon.lease_s)
        for lease in claimed:
            self.running[lease.id] = asyncio.create_task(
                self._run(lease), name=f"recon-{lease.hospital_id}-{lease.day}"
            )
        return claimed

    async def _run(self, lease: leases.Lease) -> None:
        hospital, day = lease.hospital_id, lease.day
        try:
            if lease.previous_run_id is not None:
                await abandon(self.db, lease.previous_run_id, lease.previous_instance)
                log.warning("recon_taken_over", hospital=hospital, day=day.isoformat(), was=lease.previous_instance)
            tenant = self.tenants().hospitals.get(hospital)
            if tenant is None or not tenant.enabled:
                await leases.finish(self.db, lease)
                log.info("recon_skipped", hospital=hospital, day=day.isoformat(), why="hospital disabled or removed")
                return
            work = asyncio.create_task(self._attempt(lease))
            heartbeat = asyncio.create_task(self._heartbeat(lease, work))
            try:
                await work
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recon_job_failed", hospital=hospital, day=day.isoformat())
        finally:
            self.running.pop(lease.id, None)
            self.wake.set()

    async def _attempt(self, lease: leases.Lease) -> None:
        async def on_start(run_id: int) -> None:
            await leases.attach_run(self.db, lease, run_id)

        async def within_commit(conn: object) -> None:
            await leases.complete(conn, self.db, lease)  # type: ignore[arg-type]

        try:
            await self.runner(lease.hospital_id, lease.day, on_start, within_commit)
        except leases.LeaseLost as e:
            log.warning("recon_lease_lost", hospital=lease.hospital_id, day=lease.day.isoformat(), error=str(e))
        except asyncio.CancelledError:
            log.warning("recon_cancelled", hospital=lease.hospital_id, day=lease.day.isoformat())
            raise
        except Exception as exc:  # one hospital's failure must not stop the others
            log.error("recon_schedule_failed", hospital=lease.hospital_id, day=lease.day.isoformat(), error=str(exc))
            await leases.fail(self.db, lease, f"{type(exc).__name__}: {exc}", retry_s=self.cfg.recon.retry_s)

    async def _heartbeat(self, lease: leases.Lease, work: asyncio.Task[None]) -> None:
        """Renew the lease every third of it; if another instance holds it now, stop the run (its commit
        would be refused anyway)."""
        every = self.cfg.recon.lease_s / 3
        while True:
            await shared_clock.sleep(every)
            try:
                held = await leases.renew(self.db, lease, self.cfg.recon.lease_s)
            except Exception as exc:  # the database briefly away: the lease still has two thirds to run
                log.warning("recon_lease_renew_failed", hospital=lease.hospital_id, error=str(exc))
                continue
            if not held:
                log.warning("recon_lease_lost", hospital=lease.hospital_id, day=lease.day.isoformat())
                work.cancel()
                return

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    await self.tick()
                except Exception as exc:  # the database may be briefly away: try again later
                    log.error("recon_schedule_tick_failed", error=str(exc))
                self.wake.clear()
                wait = self.poll_s
                nxt = next_wakeup(self.tenants().active_hospitals(), self.cfg.recon.at, self.clock())
                if nxt is not None:
                    wait = min(wait, max((nxt - self.clock()).total_seconds(), 0.5))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), wait)
        finally:
            for task in list(self.running.values()):
                task.cancel()
            await asyncio.gather(*self.running.values(), return_exceptions=True)

    async def drain(self) -> None:
        """Wait for the runs started so far (tests and tools)."""
        while self.running:
            await asyncio.gather(*list(self.running.values()), return_exceptions=True)


def start_scheduler(svc: Services) -> asyncio.Task[None]:
    """The scheduler as a task of a running gateway, with its channels and agent links."""

    async def runner(hospital: str, day: dt.date, on_start: RunStarted, within_commit: WithinCommit) -> object:
        return await run_day(
            svc.db, svc.cfg, hospital, day, channels=svc.channels, his=svc.his.get(hospital), trigger="schedule",
            tenants=svc.tenants, on_start=on_start, within_commit=within_commit,
        )  # fmt: skip

    scheduler = Scheduler(svc.db, svc.cfg, lambda: svc.tenants, runner, instance=svc.instance)
    return asyncio.create_task(scheduler.run_forever(), name="recon-schedule")
