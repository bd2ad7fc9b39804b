import asyncio
import sqlite3

import pytest

from bridge.journal import APPLICATION_ID, Journal, JournalCorrupt, RequestConflict, State


async def _accept(j: Journal, rid: str, key: str = "T1", digest: str = "d1", op: str = "charge.commit"):
    return await j.accept(
        request_id=rid,
        client_id="c",
        operation=op,
        business_key=key,
        body_sha256=digest,
        params={"request_id": rid, "trade_no": key},
    )


@pytest.fixture
async def journal(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    await j.open()
    yield j
    await j.close()


async def test_accept_is_idempotent_and_conflicts_on_other_body(journal):
    e1, created1 = await _accept(journal, "req-00001")
    e2, created2 = await _accept(journal, "req-00001")
    assert created1 and not created2 and e1.seq == e2.seq
    with pytest.raises(RequestConflict):
        await _accept(journal, "req-00001", digest="other")
    with pytest.raises(RequestConflict):
        await _accept(journal, "req-00001", op="prepay.commit")


async def test_settings_are_durable(journal, tmp_path):
    conn = sqlite3.connect(tmp_path / "j.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    # synchronous is per connection: check the writer's own setting
    assert journal._file._wconn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


async def test_concurrent_writes_share_commits(journal):
    results = await asyncio.gather(*[_accept(journal, f"req-{i:05d}", key=f"T{i}") for i in range(300)])
    assert len({e.seq for e, _ in results}) == 300
    assert journal.commits < 300  # group commit batched them


async def test_update_respects_expected_state(journal):
    entry, _ = await _accept(journal, "req-00002")
    moved = await journal.update(entry.seq, State.in_flight, expect=[State.accepted], attempts_delta=1)
    assert moved.state is State.in_flight and moved.attempts == 1
    assert await journal.update(entry.seq, State.done, expect=[State.accepted]) is None
    done = await journal.update(entry.seq, State.done, expect=[State.in_flight], result={"receipt_no": "R1"})
    assert done.result == {"receipt_no": "R1"}


async def test_nonce_is_remembered_once_and_survives_reopen(tmp_path):
    j = Journal(tmp_path / "n.sqlite3")
    await j.open()
    assert await j.remember_nonce("k", "n" * 16, 1e12)
    assert not await j.remember_nonce("k", "n" * 16, 1e12)
    await j.close()
    j2 = Journal(tmp_path / "n.sqlite3")
    await j2.open()
    assert not await j2.remember_nonce("k", "n" * 16, 1e12)
    await j2.close()


async def test_unfinished_walks_in_order_by_pages(journal):
    for i in range(25):
        await _accept(journal, f"req-{i:05d}", key=f"K{i % 3}")
    first, _ = await _accept(journal, "req-99999")
    await journal.update(first.seq, State.done)
    seen = [seq async for seq, _ in journal.unfinished(page=7)]
    assert seen == sorted(seen) and len(seen) == 25 and first.seq not in seen


async def test_prune_deletes_old_finished_entries_in_batches(tmp_path):
    now = [1000.0]
    j = Journal(tmp_path / "p.sqlite3", clock=lambda: now[0])
    await j.open()
    for i in range(10):
        e, _ = await _accept(j, f"req-{i:05d}", key=f"K{i}")
        if i < 7:
            await j.update(e.seq, State.done)
    now[0] = 5000.0
    assert await j.prune(older_than=2000.0, batch=3) == 3
    assert await j.prune(older_than=2000.0, batch=100) == 4
    assert await j.prune(older_than=2000.0, batch=100) == 0
    counts, _ = await j.stats()
    assert counts["accepted"] == 3 and counts["done"] == 0
    await j.close()


async def test_foreign_sqlite_file_is_refused_not_replaced(tmp_path):
    path = tmp_path / "foreign.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices(id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(JournalCorrupt, match="not a HIS Bridge journal"):
        await Journal(path).open()
    assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == [("invoices",)]


async def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(JournalCorrupt):
        await Journal(path).open()
    assert path.read_bytes().startswith(b"this is not sqlite")
