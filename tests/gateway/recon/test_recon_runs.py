"""The database-backed run on SQLite and PostgreSQL, with a statement rendered in WeChat's own format and a HIS
that pages: a cross-midnight payment waits, then clears itself the next day (and a re-run of the first day
does not bring it back); re-runs are versioned and keep finance's work; a statement whose summary does not add
up fails the run loudly and is kept for inspection; the console's API moves exceptions only along the
workflow, audited."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
import sqlalchemy as sa

from gateway.recon import exceptions as ex
from gateway.recon import run_reconciliation
from gateway.recon.normalize import StatementError
from gateway.store import audit, registry
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from gateway.store.recon_tables import his_details, recon_observations, recon_runs, statements
from tests.support.gateway_rig import HOSPITAL, MERCHANT, gateway_config
from tests.support.recon_rig import BillChannel, PagedHis, add_order, at, paid_everywhere

D0 = dt.date(2025, 3, 14)
D1 = D0 + dt.timedelta(days=1)


@pytest.fixture
async def setup(tmp_path, keys, db_url):
    cfg = gateway_config(tmp_path, keys, db_url)
    db = Database(cfg.database.url)
    await upgrade(db)
    await registry.sync_from_config(db, cfg)
    yield cfg, db
    await db.close()


async def test_cross_midnight_payment_is_held_then_clears_itself(setup):
    cfg, db = setup
    channel, his = BillChannel(), PagedHis()
    for i in range(5):
        await paid_everywhere(db, channel, his, f"P-{i}", 100 + i, at(D0, f"1{i}:00:00"))
    await paid_everywhere(db, channel, his, "P-LATE", 2500, at(D0, "23:59:58"), his_when=at(D1, "00:00:03"))
    await paid_everywhere(db, channel, his, "P-D1", 700, at(D1, "09:00:00"))
    run = dict(channels={MERCHANT: channel}, source=his)

    first = await run_reconciliation(db, cfg, HOSPITAL, D0, **run)
    assert first.exceptions == {"cross_day": ["pay:P-LATE"]} and first.counts["matched"] == 5
    assert first.counts["his_count"] == 5 and his.calls == 3  # five records, two a page
    (held,) = await ex.list_exceptions(db, hospital=HOSPITAL)
    assert held["class"] == "cross_day" and held["status"] == "open" and held["his_record"] is None
    assert held["channel_fen"] == 2500 and held["platform_fen"] == 2500

    second = await run_reconciliation(db, cfg, HOSPITAL, D1, **run)
    assert second.exceptions == {} and second.cleared == ["pay:P-LATE"] and second.counts["matched"] == 2
    row = await ex.get_exception(db, held["id"])
    assert row is not None and row["status"] == "closed" and row["note"] == f"auto: matched on run v1 of {D1}"
    async with db.read() as conn:
        kept = (await conn.execute(sa.select(recon_observations).order_by(recon_observations.c.day))).all()
        details = (await conn.execute(sa.select(his_details.c.day, his_details.c.record_count))).all()
    assert {(o.entry_key, o.side, o.day) for o in kept} == {
        ("pay:P-LATE", "channel", D0), ("pay:P-LATE", "platform", D0), ("pay:P-LATE", "his", D1)
    }  # fmt: skip
    assert sorted(details) == [(D0, 5), (D1, 2)]

    # Re-running the first day neither holds it again nor reopens its exception.
    again = await run_reconciliation(db, cfg, HOSPITAL, D0, **run)
    assert again.version == 2 and again.exceptions == {} and again.counts["cross_day"] == 0
    assert again.counts["matched"] == 6
    row = await ex.get_exception(db, held["id"])
    assert row is not None and row["status"] == "closed"
    # And re-running the second day finds it matched again, with nothing left to clear.
    rerun = await run_reconciliation(db, cfg, HOSPITAL, D1, **run)
    assert rerun.exceptions == {} and rerun.cleared == [] and rerun.counts["matched"] == 2


async def test_held_item_is_flagged_with_its_real_class_when_old(setup):
    cfg, db = setup
    cfg.recon.suspense_days = 1
    channel, his = BillChannel(), PagedHis()
    channel.pay("P-NEVER", 900, at(D0, "23:50:00"))
    await add_order(db, "P-NEVER", 900, at(D0, "23:50:00"))
    run = dict(channels={MERCHANT: channel}, source=his)
    assert (await run_reconciliation(db, cfg, HOSPITAL, D0, **run)).exceptions == {"cross_day": ["pay:P-NEVER"]}
    later = await run_reconciliation(db, cfg, HOSPITAL, D1, **run)
    assert later.exceptions == {"over_collection": ["pay:P-NEVER"]}
    (row,) = await ex.list_exceptions(db, hospital=HOSPITAL)
    assert (row["class"], row["day"], row["last_day"], row["status"]) == ("over_collection", D0, D1, "open")


async def test_rerun_keeps_finance_work_and_closes_what_matched_since(setup):
    cfg, db = setup
    cfg.recon.suspense_days = 0  # flag one-sided entries at once
    channel, his = BillChannel(), PagedHis()
    await paid_everywhere(db, channel, his, "P-OK", 100, at(D0, "10:00:00"))
    channel.pay("P-OVER", 300, at(D0, "11:00:00"))
    await add_order(db, "P-OVER", 300, at(D0, "11:00:00"))
    channel.pay("P-LATE-HIS", 400, at(D0, "12:00:00"))
    await add_order(db, "P-LATE-HIS", 400, at(D0, "12:00:00"))
    run = dict(channels={MERCHANT: channel}, source=his)

    first = await run_reconciliation(db, cfg, HOSPITAL, D0, **run)
    assert first.exceptions == {"over_collection": ["pay:P-LATE-HIS", "pay:P-OVER"]}
    rows = {r["entry_key"]: r for r in await ex.list_exceptions(db, hospital=HOSPITAL, day=D0)}
    over = rows["pay:P-OVER"]
    await ex.update_exception(db, over["id"], "clerk", status="proposed", note="退款给患者")
    await ex.update_exception(db, over["id"], "boss", status="approved", expect_status="proposed")

    his.book("P-LATE-HIS", 400, at(D0, "12:00:05"))  # the HIS caught up
    second = await run_reconciliation(db, cfg, HOSPITAL, D0, **run)
    assert second.version == 2 and second.exceptions == {"over_collection": ["pay:P-OVER"]}
    kept = await ex.get_exception(db, over["id"])
    assert kept is not None and (kept["status"], kept["note"], kept["last_version"]) == ("approved", "退款给患者", 2)
    gone = await ex.get_exception(db, rows["pay:P-LATE-HIS"]["id"])
    assert gone is not None and gone["status"] == "closed" and gone["note"] == f"auto: matched on run v2 of {D0}"

    summary = await ex.summary(db, HOSPITAL, D0)
    assert summary["run"]["version"] == 2 and summary["run"]["over_collection"] == 1 and summary["open"] == 1
    totals = await ex.daily_totals(db, HOSPITAL, 3, today=D1 + dt.timedelta(days=1))
    assert [t["day"] for t in totals] == [D0 - dt.timedelta(days=1), D0, D1]
    assert totals[1]["matched"] == 2 and totals[1]["run_version"] == 2 and totals[2]["run_version"] is None


async def test_exception_workflow_is_enforced_and_audited(setup):
    cfg, db = setup
    cfg.recon.suspense_days = 0
    channel, his = BillChannel(), PagedHis()
    channel.pay("P-X", 100, at(D0, "10:00:00"))
    await run_reconciliation(db, cfg, HOSPITAL, D0, channels={MERCHANT: channel}, source=his)
    (row,) = await ex.list_exceptions(db, hospital=HOSPITAL, classes=["over_collection"], statuses=["open"])
    assert row["platform_record"] is None and row["detail"].startswith("over_collection: channel 1.00")
    with pytest.raises(ex.TransitionError):
        await ex.update_exception(db, row["id"], "clerk", status="approved")
    with pytest.raises(ex.StaleStatus):
        await ex.update_exception(db, row["id"], "clerk", status="proposed", expect_status="approved")
    await ex.update_exception(db, row["id"], "clerk", reference="OA-17")
    closed = await ex.close_exception(db, row["id"], "boss", "退回患者原路", reference="RF-1")
    assert (closed["status"], closed["handled_by"], closed["reference"]) == ("closed", "boss", "RF-1")
    with pytest.raises(ex.TransitionError):
        await ex.update_exception(db, row["id"], "clerk", status="open")
    log = await audit.entries(db, ex.subject(row["id"]))
    assert [e["action"] for e in log] == ["recon.exception.closed", "recon.exception.note"]
    assert await ex.count_exceptions(db, hospital=HOSPITAL, search="P-X") == 1


async def test_a_statement_that_does_not_add_up_fails_the_run_loudly(setup):
    cfg, db = setup
    channel, his = BillChannel(), PagedHis()
    await paid_everywhere(db, channel, his, "P-1", 100, at(D0, "10:00:00"))
    channel.tamper = True
    with pytest.raises(StatementError, match="summary mismatch"):
        await run_reconciliation(db, cfg, HOSPITAL, D0, channels={MERCHANT: channel}, source=his)
    async with db.read() as conn:
        run = (await conn.execute(sa.select(recon_runs))).one()
        kept = (await conn.execute(sa.select(statements))).one()
    assert run.status == "failed" and "summary mismatch" in run.error
    assert kept.status == "failed" and kept.sha256 == hashlib.sha256(kept.raw).hexdigest()
    assert await ex.list_exceptions(db, hospital=HOSPITAL) == []


async def test_schedule_runs_each_hospital_once_per_day_at_its_time(setup):
    from gateway.recon import schedule
    from gateway.tenants.snapshot import Tenants

    cfg, db = setup
    channel, his = BillChannel(), PagedHis()
    await paid_everywhere(db, channel, his, "P-1", 100, at(D0, "10:00:00"))
    ran: list[tuple[str, dt.date]] = []
    tenants = Tenants.from_config(cfg)
    now = [at(D1, "08:00:00")]

    async def runner(hospital: str, day: dt.date, on_start, within_commit) -> None:
        ran.append((hospital, day))
        await run_reconciliation(
            db, cfg, hospital, day, channels={MERCHANT: channel}, source=his, trigger="schedule",
            on_start=on_start, within_commit=within_commit,
        )  # fmt: skip

    def scheduler(instance: str) -> schedule.Scheduler:
        return schedule.Scheduler(db, cfg, lambda: tenants, runner, instance=instance, clock=lambda: now[0])

    first = scheduler("a")
    hospitals = tenants.active_hospitals()
    assert schedule.next_wakeup(hospitals, cfg.recon.at, now[0]) == at(D1, "11:30:00")
    now[0] = at(D1, "11:29:59")
    assert await first.tick() == []
    now[0] = at(D1, "11:30:00")
    assert [(c.hospital_id, c.day) for c in await first.tick()] == [(HOSPITAL, D0)]
    await first.drain()
    now[0] = at(D1, "15:00:00")
    assert await first.tick() == [] and await scheduler("b").tick() == []  # done: not again, even after a restart
    assert ran == [(HOSPITAL, D0)]
    assert schedule.next_wakeup(hospitals, cfg.recon.at, at(D1, "11:30:00")) == at(
        D1 + dt.timedelta(days=1), "11:30:00"
    )

    hospitals[0].recon_at = "06:15"
    assert schedule.due(hospitals, cfg.recon.at, at(D1, "06:20:00")) == [(HOSPITAL, D0)]
