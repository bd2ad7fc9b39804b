"""Retention on SQLite and PostgreSQL: a month of orders, refunds, callbacks, notifications, audit rows and
reconciliation results, two months old, is archived, verified, removed and restored with every count and fen
total as it was; young rows and old rows still in play never leave; a file or a row changed after archiving
stops the removal; the audit chain verifies after its oldest part is archived and removed."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import subprocess
import sys

import pytest
import sqlalchemy as sa

from gateway.config import RetentionConfig, parse_config
from gateway.retention import archive as archives
from gateway.retention.kinds import TABLES_OF_KIND
from gateway.runtime import start_gateway
from gateway.store import audit, registry
from gateway.store.console_tables import refund_proposals
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from gateway.store.platform_tables import job_leases
from gateway.store.recon_tables import his_details, recon_exceptions, recon_observations, recon_runs, statements
from gateway.store.tables import audit_log, channel_events, notifications, orders, refunds
from tests.support.gateway_rig import APP_ID, HOSPITAL, MERCHANT, eventually, gateway_config
from tests.support.memory_channel import MemoryChannel

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
OLD_DAYS = range(45, 75)
"""A month of days, each 45 to 74 days ago."""
KINDS = ("orders", "callbacks", "notifications", "audit", "recon")
TABLES = sorted({t for tables in TABLES_OF_KIND.values() for t in tables}, key=lambda t: t.name)


async def _audit(conn, n: int, when: dt.datetime) -> None:
    await conn.execute(
        sa.insert(audit_log).values(
            at=when, actor="cli", action="order.completed", subject=f"P{n:03d}0", detail={"n": n}
        )
    )


@pytest.fixture
async def setup(tmp_path, keys, db_url):
    """A database whose audit chain begins with the old month (written before the tenants were imported)."""
    cfg = gateway_config(tmp_path, keys, db_url)
    db = Database(cfg.database.url)
    await upgrade(db)
    async with db.write() as conn:
        for n in reversed(OLD_DAYS):
            await _audit(conn, n, NOW - dt.timedelta(days=n))
    await registry.sync_from_config(db, cfg)
    yield cfg, db
    await db.close()


async def _order(conn, no: str, when: dt.datetime, fen: int, **values) -> int:
    row = {
        "hospital_id": HOSPITAL, "app_id": APP_ID, "merchant_id": MERCHANT, "channel": "wechat",
        "business_order_no": f"B-{no}", "out_trade_no": no, "request_digest": "x" * 64, "business_type": "prepay",
        "scene": "native", "subject": "预交金", "amount_fen": fen, "his_params": {"inpatient_no": "Z1"},
        "status": "completed", "paid_fen": fen, "paid_at": when, "his_state": "done", "his_receipt_no": f"RC{no}",
        "expires_at": when, "created_at": when, "updated_at": when, **values,
    }  # fmt: skip
    return int((await conn.execute(sa.insert(orders).values(**row).returning(orders.c.id))).scalar_one())


async def _refund(conn, order_id: int, no: str, when: dt.datetime, fen: int, state: str = "completed") -> None:
    await conn.execute(
        sa.insert(refunds).values(
            order_id=order_id, hospital_id=HOSPITAL, channel="wechat", business_refund_no=f"BR-{no}",
            out_refund_no=no, amount_fen=fen, origin="business", state=state, his_refundable_fen=fen,
            refunded_at=when, created_at=when, updated_at=when,
        )
    )  # fmt: skip
    await conn.execute(
        sa.update(orders).where(orders.c.id == order_id).values(refunded_fen=orders.c.refunded_fen + fen)
    )


async def _day(conn, n: int, when: dt.datetime) -> None:
    """One day of a hospital's life."""
    day = when.date()
    for i in range(6):
        no = f"P{n:03d}{i}"
        oid = await _order(conn, no, when + dt.timedelta(minutes=i), 1000 + 37 * n + i)
        if i % 2 == 0:
            await _refund(conn, oid, f"R{n:03d}{i}", when + dt.timedelta(hours=1), 300 + i)
        await conn.execute(
            sa.insert(channel_events).values(
                merchant_id=MERCHANT, notification_id=f"N{n:03d}{i}", kind="payment", payload={"out_trade_no": no},
                received_at=when, processed_at=when, outcome="paid",
            )
        )  # fmt: skip
        await conn.execute(
            sa.insert(notifications).values(
                app_id=APP_ID, hospital_id=HOSPITAL, event_type="order.completed", subject_key=no, payload={"no": no},
                notify_url="https://app.example.cn/n", state="delivered" if i else "dead", attempts=1,
                created_at=when, delivered_at=when,
            )
        )  # fmt: skip
    await _order(conn, f"C{n:03d}", when, 500, status="closed", paid_fen=None, paid_at=None, his_state="none")
    if n > 800:
        await _audit(conn, n, when)
    await conn.execute(
        sa.insert(recon_runs).values(
            hospital_id=HOSPITAL, day=day, version=1, trigger="schedule", status="done", started_at=when,
            finished_at=when, his_fen=6000 + n, platform_fen=6000 + n, channel_fen=6000 + n, matched=6,
        )
    )  # fmt: skip
    await conn.execute(
        sa.insert(statements).values(
            hospital_id=HOSPITAL, merchant_id=MERCHANT, channel="wechat", day=day, raw=b"\x1f\x8b" + bytes([n % 256]),
            sha256=f"{n:064d}", size=12, status="parsed", pay_fen=6000 + n, refund_fen=900, fee_fen=36, fetched_at=when,
        )
    )  # fmt: skip
    await conn.execute(
        sa.insert(his_details).values(
            hospital_id=HOSPITAL, day=day, raw=b"detail", sha256=f"{n:064d}", size=6, record_count=6, pay_count=6,
            refund_count=3, pay_fen=6000 + n, refund_fen=900, fetched_at=when,
        )
    )  # fmt: skip
    key = f"pay:X{n:03d}"
    exc_id = (
        await conn.execute(
            sa.insert(recon_exceptions)
            .values(
                hospital_id=HOSPITAL, source="recon", day=day, first_version=1, last_version=1, last_day=day,
                entry_key=key, entry_type="pay", **{"class": "over_collection"}, out_trade_no=f"X{n:03d}",
                channel_fen=400, status="closed", created_at=when, updated_at=when,
            )
            .returning(recon_exceptions.c.id)
        )
    ).scalar_one()  # fmt: skip
    x_order = await _order(conn, f"X{n:03d}", when, 400, status="his_rejected", his_state="rejected")
    await conn.execute(
        sa.insert(refund_proposals).values(
            exception_id=exc_id, order_id=x_order, amount_fen=400, reason="长款退回", state="done",
            proposed_by="clerk1", proposed_at=when, decided_by="approver1", decided_at=when, updated_at=when,
        )
    )  # fmt: skip
    await conn.execute(
        sa.insert(recon_observations).values(
            hospital_id=HOSPITAL, entry_key=key, side="channel", day=day, amount_fen=400, at=when, flag=1
        )
    )


async def seed(db: Database) -> None:
    async with db.write() as conn:
        for n in OLD_DAYS:
            await _day(conn, n, NOW - dt.timedelta(days=n))
        old = NOW - dt.timedelta(days=60)
        # Old, but still in play: an order whose HIS step is due, one with an open exception, a pending refund.
        await _order(conn, "OPEN-DUE", old, 777, status="paid", his_state="pending", due_at=NOW)
        await _order(conn, "OPEN-EXC", old, 888)
        await conn.execute(
            sa.insert(recon_exceptions).values(
                hospital_id=HOSPITAL, source="gateway", day=old.date(), first_version=1, last_version=1,
                last_day=old.date(), entry_key="pay:OPEN-EXC", entry_type="pay", **{"class": "his_stuck"},
                out_trade_no="OPEN-EXC", status="open", created_at=old, updated_at=old,
            )
        )  # fmt: skip
        pending = await _order(conn, "OPEN-REF", old, 999)
        await _refund(conn, pending, "R-OPEN", old, 99, state="refunding")
        await conn.execute(
            sa.insert(notifications).values(
                app_id=APP_ID, hospital_id=HOSPITAL, event_type="order.completed", subject_key="OPEN-N",
                payload={}, state="pending", attempts=3, created_at=old, due_at=NOW,
            )
        )  # fmt: skip
        # Young rows: last week's.
        for n in range(1, 8):
            await _day(conn, 900 + n, NOW - dt.timedelta(days=n))
    await audit.seal_all(db)


async def figures(db: Database) -> dict[str, tuple[int, dict[str, int]]]:
    """Per table: rows and the total of each fen column (the audit log without retention's own entries)."""
    out = {}
    async with db.read() as conn:
        for table in TABLES:
            money = [c for c in table.c if c.name.endswith("_fen") and isinstance(c.type, sa.BigInteger)]
            stmt = sa.select(sa.func.count(), *(sa.func.coalesce(sa.func.sum(c), 0) for c in money)).select_from(table)
            if table is audit_log:
                stmt = stmt.where(~audit_log.c.action.startswith("archive."))
            row = (await conn.execute(stmt)).one()
            out[table.name] = (int(row[0]), {c.name: int(v) for c, v in zip(money, row[1:], strict=True)})
    return out


async def test_a_month_archived_verified_removed_and_restored(setup, tmp_path):
    _, db = setup
    await seed(db)
    before = await figures(db)
    directory = tmp_path / "archive"
    written: list[archives.Archive] = []
    for kind in KINDS:
        archive = await archives.write(db, kind, NOW - dt.timedelta(days=30), directory)
        assert archive is not None and archive.state == "written", kind
        written.append(await archives.verify(db, archive.id))
    assert all(a.state == "verified" for a in written)
    by_kind = {a.kind: a for a in written}
    assert by_kind["orders"].manifest["tables"]["orders"]["rows"] == 30 * 8 - 30  # X orders wait for their proposals
    assert by_kind["orders"].manifest["tables"]["refunds"]["rows"] == 30 * 3
    assert by_kind["audit"].manifest["audit_chain"]["first_seq"] == 1
    assert by_kind["callbacks"].manifest["tables"]["channel_events"]["rows"] == 30 * 6
    assert by_kind["recon"].manifest["tables"]["refund_proposals"]["rows"] == 30

    for archive in written:
        await archives.remove(db, archive.id)
    after = await figures(db)
    for name, (rows, totals) in before.items():
        archived = [a.manifest["tables"][name] for a in written if name in a.manifest["tables"]]
        assert after[name][0] == rows - sum(t["rows"] for t in archived), name
        for column, total in totals.items():
            assert after[name][1][column] == total - sum(t["totals"][column] for t in archived), (name, column)
    async with db.read() as conn:
        kept = set((await conn.execute(sa.select(orders.c.out_trade_no))).scalars())
        waiting = set((await conn.execute(sa.select(notifications.c.subject_key))).scalars())
    assert {"OPEN-DUE", "OPEN-EXC", "OPEN-REF"} <= kept and all(not k.startswith("P0") for k in kept)
    assert "OPEN-N" in waiting and {f"P{900 + n:03d}0" for n in range(1, 8)} <= kept
    anchor = await archives.audit_anchor(db)
    assert anchor == (30, by_kind["audit"].manifest["audit_chain"]["head_hash"])
    verdict = await audit.verify(db, after=anchor)
    assert verdict.intact and verdict.rows == 3 + 7, verdict  # the tenants' import, and last week
    assert not (await audit.verify(db)).intact, "without the archive's head, the shortened chain does not verify"

    # The orders the proposals held can go once the exceptions (and proposals) are archived: a second run.
    second = await archives.write(db, "orders", NOW - dt.timedelta(days=30), directory)
    assert second is not None and second.manifest["tables"]["orders"]["rows"] == 30
    await archives.verify(db, second.id)
    await archives.remove(db, second.id)

    for archive in [second, *reversed(written)]:
        restored = await archives.restore(db, archive.id)
        assert restored.state == "restored"
    assert await figures(db) == before, "every count and fen total as it was"
    assert (await audit.verify(db)).intact
    for archive in written:  # a removed-then-restored archive's file still checks out
        assert (await archives.verify(db, archive.id)).state == "restored"


async def test_a_changed_row_or_file_stops_the_removal(setup, tmp_path):
    _, db = setup
    await seed(db)
    archive = await archives.write(db, "orders", NOW - dt.timedelta(days=30), tmp_path / "a")
    assert archive is not None
    with pytest.raises(archives.ArchiveError, match="only a verified archive"):
        await archives.remove(db, archive.id)
    with pytest.raises(archives.ArchiveError, match="is not removed yet"):
        await archives.write(db, "orders", NOW - dt.timedelta(days=30), tmp_path / "a")
    async with db.write() as conn:
        await conn.execute(sa.update(orders).where(orders.c.out_trade_no == "P0450").values(subject="改过"))
    with pytest.raises(archives.ArchiveError, match="differ from the database"):
        await archives.verify(db, archive.id)
    async with db.write() as conn:
        await conn.execute(sa.update(orders).where(orders.c.out_trade_no == "P0450").values(subject="预交金"))
    verified = await archives.verify(db, archive.id)
    # Changed after the verification: that batch is refused, none of its rows removed.
    async with db.write() as conn:
        await conn.execute(sa.update(refunds).where(refunds.c.out_refund_no == "R0450").values(reason="late edit"))
    before = await figures(db)
    with pytest.raises(archives.ArchiveError, match="changed since the archive was verified"):
        await archives.remove(db, verified.id)
    assert (await figures(db))["orders"] == before["orders"]

    callbacks = await archives.write(db, "callbacks", NOW - dt.timedelta(days=30), tmp_path / "a")
    assert callbacks is not None
    raw = gzip.decompress(callbacks.path.read_bytes()).replace(b'"paid"', b'"lost"', 1)
    callbacks.path.write_bytes(gzip.compress(raw))
    with pytest.raises(archives.ArchiveError, match="not the file written"):
        await archives.verify(db, callbacks.id)
    manifest = json.loads(
        callbacks.path.with_name(callbacks.path.name.replace(".jsonl.gz", ".manifest.json")).read_text()
    )
    assert manifest["file_sha256"] == callbacks.sha256 and manifest["tables"]["channel_events"]["rows"] == 30 * 6


@pytest.mark.system  # runs his-gateway as a process
def test_the_cli_runs_the_policy(tmp_path, keys, sqlite_url):
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[database]
url = "{sqlite_url}"
[signing]
key = "{keys.gateway_key_path}"
[retention]
days = {{ notifications = 30, callbacks = 30 }}
directory = "{tmp_path / "files"}"
"""
    )

    def gateway(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "-c", str(config), *args], capture_output=True, text=True, timeout=120
        )

    first = gateway("archive", "run")
    assert first.returncode == 0, first.stderr
    assert "notifications: nothing older than 30 days to archive" in first.stdout
    refused = gateway("archive", "run", "--kind", "orders", "--days", "7")
    assert refused.returncode == 1 and "kept at least 30 days" in refused.stderr
    assert gateway("archive", "list").returncode == 0
    assert gateway("audit", "verify").returncode == 0


def test_config_parses_retention(tmp_path, keys):
    cfg = parse_config(
        {"signing": {"key": str(keys.gateway_key_path)}, "retention": {"days": {"orders": 400}, "directory": "arch"}},
        base=tmp_path,
    )
    assert cfg.retention.days == {"orders": 400} and cfg.retention.directory == tmp_path / "arch"


async def test_the_schedule_archives_once_a_day_on_one_instance(tmp_path, keys, sqlite_url):
    """Two instances with the schedule on: the day's archive job is claimed by one of them, every configured kind
    is archived, verified and removed, and the day is not done twice."""
    cfg = gateway_config(tmp_path, keys, sqlite_url)
    cfg.retention = RetentionConfig(
        days={"callbacks": 30, "notifications": 30}, directory=tmp_path / "archive", schedule=True, at="00:00"
    )
    db = Database(cfg.database.url)
    await upgrade(db)
    await registry.sync_from_config(db, cfg)
    async with db.write() as conn:
        for n in OLD_DAYS:
            await _day(conn, n, NOW - dt.timedelta(days=n))
    instances = [
        await start_gateway(cfg, channels={MERCHANT: MemoryChannel()}, his={}, run_workers=True) for _ in range(2)
    ]
    try:

        async def archived() -> bool:
            found = await archives.listing(db)
            async with db.read() as conn:
                day_done = (
                    await conn.execute(sa.select(job_leases.c.state).where(job_leases.c.job == "archive"))
                ).scalar() == "done"
            return day_done and {a.kind for a in found if a.state == "removed"} == {"callbacks", "notifications"}

        await eventually(archived, timeout_s=60, what="the scheduled archive of callbacks and notifications")
        async with db.read() as conn:
            jobs = (await conn.execute(sa.select(job_leases).where(job_leases.c.job == "archive"))).all()
            left = (await conn.execute(sa.select(sa.func.count()).select_from(channel_events))).scalar()
        assert len(jobs) == 1 and jobs[0].state == "done" and jobs[0].attempts == 1
        assert left == 0 and len(await archives.listing(db)) == 2
    finally:
        for running in instances:
            await running.stop()
        await db.close()
