"""Prometheus figures of the platform: scheduled jobs (each hospital-day's reconciliation, the daily archive) by
state and how long the oldest claimable one has waited, read from the database at scrape time; and the tenants'
version this instance has loaded (each instance its own, so an instance that stopped following changes shows)."""

from __future__ import annotations

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Gauge

from gateway.model import utcnow
from gateway.store.db import Database
from gateway.store.platform_tables import JOB_STATES, job_leases

JOBS = ("recon", "archive")


class PlatformMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.jobs = Gauge(
            "hisgateway_jobs",
            "Scheduled jobs by state (due, running, failed; done jobs are not counted).",
            ["kind", "state"],
            registry=r,
        )
        self.oldest_due = Gauge(
            "hisgateway_jobs_oldest_due_seconds",
            "How long the oldest job that any instance could claim has waited (0 when none): one that grows means"
            " no instance is taking the work.",
            ["kind"],
            registry=r,
        )
        self.tenants_version = Gauge(
            "hisgateway_tenants_version",
            "The tenants' version this instance has loaded; instances behind the others have missed a change.",
            registry=r,
        )

    async def refresh(self, db: Database, tenants_version: int) -> None:
        now = utcnow()
        c = job_leases.c
        async with db.read() as conn:
            counts = (
                await conn.execute(
                    sa.select(c.job, c.state, sa.func.count()).where(c.state != "done").group_by(c.job, c.state)
                )
            ).all()
            oldest = dict(
                (
                    await conn.execute(
                        sa.select(c.job, sa.func.min(c.due_at))
                        .where(c.state != "done", c.due_at.is_not(None), c.due_at <= now)
                        .group_by(c.job)
                    )
                ).all()
            )
        found = {(job, state): int(n) for job, state, n in counts}
        for job in JOBS:
            for state in JOB_STATES:
                if state != "done":
                    self.jobs.labels(job, state).set(found.get((job, state), 0))
            since = oldest.get(job)
            self.oldest_due.labels(job).set(max(0.0, (now - since).total_seconds()) if since is not None else 0.0)
        self.tenants_version.set(tenants_version)
