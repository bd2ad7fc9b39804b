"""What operators see of the platform on /metrics: scheduled jobs by state, how long the oldest claimable one has
waited (none of the instances taking the work), and the tenants' version each instance has loaded."""

from __future__ import annotations

import datetime as dt
import re

import aiohttp
import sqlalchemy as sa

from gateway.model import utcnow
from gateway.store.platform_tables import job_leases


def value(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not exported"
    return float(match.group(1))


async def test_jobs_and_the_tenants_version_on_metrics(gateway_factory, sqlite_url):
    running = await gateway_factory(sqlite_url, metrics={"allow": ["127.0.0.0/8"]})
    now = utcnow()
    day = dt.date(2026, 11, 30)
    async with running.svc.db.write() as conn:
        await conn.execute(
            sa.insert(job_leases),
            [
                {"job": "recon", "hospital_id": "H001", "day": day, "state": "failed", "error": "no statement",
                 "due_at": now + dt.timedelta(minutes=30), "created_at": now},
                {"job": "recon", "hospital_id": "H002", "day": day, "state": "due", "error": None,
                 "due_at": now - dt.timedelta(minutes=20), "created_at": now},
                {"job": "recon", "hospital_id": "H003", "day": day, "state": "done", "error": None, "due_at": None,
                 "created_at": now},
            ],
        )  # fmt: skip
    async with aiohttp.ClientSession() as session, session.get(running.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert value(text, "hisgateway_jobs", '{kind="recon",state="failed"}') == 1
    assert value(text, "hisgateway_jobs", '{kind="recon",state="due"}') == 1
    assert value(text, "hisgateway_jobs", '{kind="archive",state="running"}') == 0
    assert 1190 <= value(text, "hisgateway_jobs_oldest_due_seconds", '{kind="recon"}') <= 1300
    assert value(text, "hisgateway_tenants_version") == running.svc.tenants.version > 1
