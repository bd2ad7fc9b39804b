"""The outbound journal on its own: the daily limit holds under concurrent payments, a request id answers what
was journaled under it, a restart turns forwards on the wire into in-doubt ones, and a foreign file is refused."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from bridge.egress.journal import (
    EgressJournal,
    EgressJournalError,
    EgressState,
    NonceReplayed,
    OverDailyLimit,
    RequestConflict,
)


def accept_args(request_id: str, amount: int = 100, **over: object) -> dict[str, object]:
    args: dict[str, object] = {
        "terminal_id": "KIOSK-01",
        "request_id": request_id,
        "operation": "pay.codepay",
        "kind": "pay",
        "app": "agent-H001",
        "body_sha256": f"sha-{request_id}-{amount}",
        "params": {"amount_fen": amount},
        "amount_fen": amount,
        "day": "2026-12-01",
        "state": EgressState.forwarding,
        "daily_limit_fen": 1_000,
        "nonce": None,
    }
    args.update(over)
    return args


@pytest.fixture
async def journal(tmp_path):
    j = EgressJournal(tmp_path / "egress.sqlite3")
    await j.open()
    yield j
    await j.close()


async def test_concurrent_payments_never_pass_the_daily_limit_together(journal):
    results = await asyncio.gather(
        *(journal.accept(**accept_args(f"REQ-{i:04d}", 300)) for i in range(10)), return_exceptions=True
    )
    accepted = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, OverDailyLimit)]
    assert len(accepted) == 3 and len(refused) == 7
    assert {r.used_fen for r in refused} == {900}


async def test_refused_requests_do_not_count_and_other_days_and_kinds_are_apart(journal):
    first, _ = await journal.accept(**accept_args("REQ-0001", 900))
    await journal.move(first.seq, EgressState.failed, expect=[EgressState.forwarding], answer={"status": "failed"})
    await journal.accept(**accept_args("REQ-0002", 900))
    await journal.accept(**accept_args("REQ-0003", 900, day="2026-12-02"))
    await journal.accept(**accept_args("REQ-0004", 900, kind="refund", operation="refund"))
    with pytest.raises(OverDailyLimit):
        await journal.accept(**accept_args("REQ-0005", 200))


async def test_a_request_id_answers_its_entry_or_is_a_conflict(journal):
    entry, created = await journal.accept(**accept_args("REQ-0001"))
    again, created_again = await journal.accept(**accept_args("REQ-0001"))
    assert created and not created_again and again.seq == entry.seq
    with pytest.raises(RequestConflict):
        await journal.accept(**accept_args("REQ-0001", 200))
    with pytest.raises(NonceReplayed):
        await journal.accept(**accept_args("REQ-0002", nonce=("KIOSK-01", "n" * 20, 9e9)))
        await journal.accept(**accept_args("REQ-0003", nonce=("KIOSK-01", "n" * 20, 9e9)))
    assert await journal.get("KIOSK-01", "REQ-0003") is None


async def test_a_restart_makes_forwards_on_the_wire_in_doubt_and_due(tmp_path):
    j = EgressJournal(tmp_path / "egress.sqlite3")
    await j.open()
    on_wire, _ = await j.accept(**accept_args("REQ-0001"))
    done, _ = await j.accept(**accept_args("REQ-0002"))
    await j.move(done.seq, EgressState.done, expect=[EgressState.forwarding], answer={"status": "paid"})
    queued, _ = await j.accept(**accept_args("REQ-0003", kind="refund", operation="refund", state=EgressState.queued))
    await j.close()

    j = EgressJournal(tmp_path / "egress.sqlite3")
    await j.open()
    try:
        assert await j.recover() == 1
        entry = await j.get_seq(on_wire.seq)
        assert entry is not None and entry.state is EgressState.in_doubt and "restarted" in (entry.note or "")
        assert set(await j.due(now=9e9, stale_before=0)) == {on_wire.seq, queued.seq}
        counts, oldest = await j.stats()
        assert counts["in_doubt"] == 1 and counts["queued"] == 1 and oldest is not None
    finally:
        await j.close()


async def test_a_sqlite_file_that_is_not_an_egress_journal_is_refused(tmp_path):
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(EgressJournalError, match="not a HIS Bridge egress journal"):
        await EgressJournal(path).open()
