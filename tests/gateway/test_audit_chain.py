"""The audit log is tamper-evident (issue 15, item 12): every row sealed into one hash chain, even with many
writers and several sealing instances on PostgreSQL at once; an edited, deleted or rewritten row is found, and
``his-gateway audit verify`` says where."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from gateway.store import audit
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from gateway.store.tables import audit_log
from tests.support.gateway_rig import make_keys

pytestmark = pytest.mark.system


@pytest.fixture
async def db(db_url):
    database = Database(db_url)
    await upgrade(database)
    yield database
    await database.close()


async def _write(db: Database, n: int) -> None:
    async with db.write() as conn:
        await audit.record(conn, "clerk1", "order.paid", f"T{n}", {"fen": n, "note": "支付 ok"})
        await audit.record(conn, "clerk1", "order.completed", f"T{n}", None)


async def test_many_writers_and_two_sealers_make_one_unforked_chain(db):
    stop = asyncio.Event()

    async def sealer() -> None:
        while not stop.is_set():
            await audit.seal(db, batch=7)
            await asyncio.sleep(0)

    sealers = [asyncio.create_task(sealer()) for _ in range(2)]
    await asyncio.gather(*(_write(db, n) for n in range(60)))
    stop.set()
    await asyncio.gather(*sealers)
    await audit.seal_all(db)
    verdict = await audit.verify(db)
    assert verdict.intact, verdict.problem
    assert (verdict.rows, verdict.head_seq, verdict.unsealed) == (120, 120, 0)
    async with db.read() as conn:
        rows = (await conn.execute(sa.select(audit_log.c.chain_seq, audit_log.c.prev_hash))).all()
    assert sorted(r.chain_seq for r in rows) == list(range(1, 121))
    assert len({r.prev_hash for r in rows}) == 120  # no two rows follow the same row


async def _sealed(db: Database, n: int = 5) -> list:
    for i in range(n):
        await _write(db, i)
    await audit.seal_all(db)
    async with db.read() as conn:
        return (await conn.execute(sa.select(audit_log).order_by(audit_log.c.chain_seq))).all()


async def test_an_edited_row_breaks_the_chain_at_that_row(db):
    rows = await _sealed(db)
    async with db.write() as conn:
        await conn.execute(sa.update(audit_log).where(audit_log.c.id == rows[4].id).values(detail={"fen": 1}))
    verdict = await audit.verify(db)
    assert not verdict.intact and verdict.broken_at == rows[4].id
    assert "altered" in verdict.problem and verdict.head_seq == 4


async def test_a_deleted_row_is_found(db):
    rows = await _sealed(db)
    async with db.write() as conn:
        await conn.execute(sa.delete(audit_log).where(audit_log.c.id == rows[2].id))
    verdict = await audit.verify(db)
    assert verdict.broken_at == rows[3].id and "missing" in verdict.problem


async def test_a_chain_rewritten_from_a_row_on_is_found_by_a_recorded_head(db):
    rows = await _sealed(db)
    head = await audit.verify(db)
    async with db.write() as conn:  # an administrator edits row 3 and re-seals everything after it
        await conn.execute(
            sa.update(audit_log).where(audit_log.c.chain_seq >= 3).values(chain_seq=None, prev_hash=None, row_hash=None)
        )
        await conn.execute(sa.update(audit_log).where(audit_log.c.id == rows[2].id).values(actor="someone"))
    await audit.seal_all(db)
    assert (await audit.verify(db)).intact  # consistent in itself...
    verdict = await audit.verify(db, anchor=(head.head_seq, head.head_hash))
    assert not verdict.intact and "rewritten" in verdict.problem  # ...but not the chain that was recorded
    async with db.write() as conn:
        await conn.execute(sa.delete(audit_log).where(audit_log.c.chain_seq == 10))
    truncated = await audit.verify(db, anchor=(head.head_seq, head.head_hash))
    assert "removed from its end" in truncated.problem


def test_the_verify_command_says_where_the_chain_breaks(tmp_path):
    keys = make_keys(tmp_path / "keys")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[signing]\nkey = "{keys.gateway_key_path}"\n[[hospitals]]\nid = "H001"\n')

    def his_gateway(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "-c", str(config), "audit", "verify", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ.copy(),
            stdin=subprocess.DEVNULL,
        )

    async def prepare() -> int:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'var' / 'gateway.sqlite3'}")
        try:
            await upgrade(db)
            for n in range(3):
                await _write(db, n)
            return 0
        finally:
            await db.close()

    asyncio.run(prepare())
    intact = his_gateway("--seal")
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.startswith("audit log intact: 6 sealed row(s), head 6:")

    async def tamper() -> int:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'var' / 'gateway.sqlite3'}")
        try:
            async with db.write() as conn:
                await conn.execute(sa.update(audit_log).where(audit_log.c.chain_seq == 2).values(subject="T999"))
            async with db.read() as conn:
                return (await conn.execute(sa.select(audit_log.c.id).where(audit_log.c.chain_seq == 2))).scalar()
        finally:
            await db.close()

    row_id = asyncio.run(tamper())
    broken = his_gateway()
    assert broken.returncode == 1
    assert f"audit log BROKEN at row {row_id}" in broken.stderr and "altered" in broken.stderr
    assert his_gateway("--expect", "nonsense").returncode == 2
