"""Leases that give each scheduled job — a hospital-day's reconciliation, a day's archive — to exactly one
gateway instance at a time.

A job row is created once (``ensure``; a second instance creating the same one changes nothing). An instance
claims due jobs with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (two instances claiming at once get disjoint
jobs, neither waits; SQLite's ``BEGIN IMMEDIATE`` serializes the claim), and holds each for ``lease_s``,
renewed while it works. A job whose instance died becomes claimable when its lease runs out; the instance that
takes it over learns which run was abandoned (``previous_run_id``).

Exactly once: a job's result and its ``done`` mark are committed in one transaction (``complete``, called
inside the job's own final transaction), which first checks — under a row lock — that this instance still
holds the lease. An instance that stalled past its lease and was replaced finds it lost and rolls back, so a
day is never written by two runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import utcnow
from gateway.store.db import Database
from gateway.store.platform_tables import job_leases

MAX_ATTEMPTS = 48
"""A job that failed this often is left failed (and alerted on) rather than tried again: a day at 30 minutes."""


class LeaseLost(Exception):
    """Another instance holds this job now: the work must not be written."""


@dataclass(frozen=True)
class Lease:
    id: int
    job: str
    hospital_id: str
    day: dt.date
    instance: str
    lease_until: dt.datetime
    attempts: int
    previous_instance: str | None
    """Who held it before this claim, when it was running then (its instance died or stalled)."""
    previous_run_id: int | None


def _insert(db: Database) -> Any:
    return (postgresql.insert if db.is_postgres else sqlite.insert)(job_leases)


async def ensure(
    db: Database, job: str, pairs: Iterable[tuple[str, dt.date]], *, done: Iterable[tuple[str, dt.date]] = ()
) -> int:
    """Create the jobs that do not exist yet (``done`` ones already finished, e.g. by a scheduled run from
    before leases existed); returns how many were created."""
    now = utcnow()
    finished = set(done)
    rows = [
        {
            "job": job,
            "hospital_id": h,
            "day": d,
            "state": "done" if (h, d) in finished else "due",
            "due_at": None if (h, d) in finished else now,
            "created_at": now,
            "finished_at": now if (h, d) in finished else None,
        }
        for h, d in pairs
    ]
    if not rows:
        return 0
    stmt = _insert(db).values(rows).on_conflict_do_nothing(index_elements=["job", "hospital_id", "day"])
    async with db.write() as conn:
        result = await conn.execute(stmt)
    return max(int(result.rowcount or 0), 0)


async def claim(db: Database, job: str, instance: str, *, limit: int, lease_s: float) -> list[Lease]:
    """Take up to ``limit`` due jobs: new ones, failed ones whose retry time came, and running ones whose lease
    ran out."""
    if limit <= 0:
        return []
    now = utcnow()
    c = job_leases.c
    select = (
        sa.select(job_leases)
        .where(c.job == job, c.due_at.is_not(None), c.due_at <= now, c.state != "done")
        .order_by(c.due_at, c.id)
        .limit(limit)
    )
    until = now + dt.timedelta(seconds=lease_s)
    async with db.write() as conn:
        rows = (await conn.execute(db.for_update(select, skip_locked=True))).all()
        if not rows:
            return []
        await conn.execute(
            sa.update(job_leases)
            .where(c.id.in_([r.id for r in rows]))
            .values(
                state="running", instance=instance, lease_until=until, due_at=until, attempts=c.attempts + 1,
                started_at=now, error=None,
            )
        )  # fmt: skip
    return [_lease(r, instance, until) for r in rows]


def _lease(row: Any, instance: str, until: dt.datetime) -> Lease:
    taken_over = row.state == "running"
    return Lease(
        id=row.id,
        job=row.job,
        hospital_id=row.hospital_id,
        day=row.day,
        instance=instance,
        lease_until=until,
        attempts=int(row.attempts) + 1,
        previous_instance=row.instance if taken_over else None,
        previous_run_id=row.run_id if taken_over else None,
    )


async def renew(db: Database, lease: Lease, lease_s: float) -> bool:
    """Extend the lease; False when this instance no longer holds it."""
    until = utcnow() + dt.timedelta(seconds=lease_s)
    c = job_leases.c
    async with db.write() as conn:
        result = await conn.execute(
            sa.update(job_leases)
            .where(c.id == lease.id, c.instance == lease.instance, c.state == "running")
            .values(lease_until=until, due_at=until)
        )
    return bool(result.rowcount)


async def attach_run(db: Database, lease: Lease, run_id: int) -> None:
    """Record which run works this job now, so an instance taking over can mark it abandoned."""
    c = job_leases.c
    async with db.write() as conn:
        await conn.execute(
            sa.update(job_leases).where(c.id == lease.id, c.instance == lease.instance).values(run_id=run_id)
        )


async def complete(conn: AsyncConnection, db: Database, lease: Lease) -> None:
    """Inside the job's final transaction: check this instance still holds the lease and mark the job done, in
    the same commit as its result. Raises ``LeaseLost`` (the transaction must roll back) otherwise."""
    c = job_leases.c
    row = (await conn.execute(db.for_update(sa.select(c.instance, c.state).where(c.id == lease.id)))).first()
    if row is None or row.instance != lease.instance or row.state != "running":
        raise LeaseLost(f"{lease.job} {lease.hospital_id} {lease.day}: now held by {row.instance if row else None}")
    await conn.execute(
        sa.update(job_leases)
        .where(c.id == lease.id)
        .values(state="done", due_at=None, lease_until=None, finished_at=utcnow(), error=None)
    )


async def finish(db: Database, lease: Lease) -> bool:
    """Mark the job done on its own (a job with no final transaction to join); False if the lease was lost."""
    try:
        async with db.write() as conn:
            await complete(conn, db, lease)
    except LeaseLost:
        return False
    return True


async def fail(db: Database, lease: Lease, error: str, *, retry_s: float) -> None:
    """The attempt failed: the job is claimable again after ``retry_s`` (not after ``MAX_ATTEMPTS``)."""
    c = job_leases.c
    retry = utcnow() + dt.timedelta(seconds=retry_s) if lease.attempts < MAX_ATTEMPTS else None
    async with db.write() as conn:
        await conn.execute(
            sa.update(job_leases)
            .where(c.id == lease.id, c.instance == lease.instance, c.state == "running")
            .values(state="failed", due_at=retry, lease_until=None, instance=None, error=error[:4000])
        )


async def states(db: Database, job: str) -> dict[str, int]:
    """How many jobs are in each state (for the metrics)."""
    c = job_leases.c
    async with db.read() as conn:
        rows = (await conn.execute(sa.select(c.state, sa.func.count()).where(c.job == job).group_by(c.state))).all()
    return {state: int(n) for state, n in rows}
