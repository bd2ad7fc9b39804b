"""Entries that cross midnight by more than any clock window (issue 10, case 2), on SQLite and PostgreSQL: a
payment at 22:00 that the HIS books at 00:40, and an insurance partial refund paid at 23:00 and written back at
00:45, are one entry each that arrives late — whichever day is run first, however often days are re-run. They
wait as ``cross_day`` while their counterpart is missing, never flip between over- and under-collection, and
the console never offers to pay out a refund the channel already paid."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from gateway.console import actions
from gateway.recon import exceptions as ex
from gateway.recon import run_reconciliation
from gateway.services import Services
from gateway.store import audit, registry
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from tests.support.console_rig import user
from tests.support.gateway_rig import HOSPITAL, MERCHANT, gateway_config
from tests.support.recon_rig import BillChannel, PagedHis, add_order, add_refund, at, paid_everywhere

D0 = dt.date(2026, 3, 13)
D1 = D0 + dt.timedelta(days=1)
D2 = D1 + dt.timedelta(days=1)


@pytest.fixture
async def setup(tmp_path, keys, db_url):
    cfg = gateway_config(tmp_path, keys, db_url)
    db = Database(cfg.database.url)
    await upgrade(db)
    await registry.sync_from_config(db, cfg)
    yield cfg, db
    await db.close()


async def late_day(db: Database) -> tuple[BillChannel, PagedHis]:
    """Day 0: a clean payment; a payment at 22:00 that the HIS books at 00:40; a deposit paid in full at 10:00
    whose insurance share is refunded at 23:00 and written back to the HIS at 00:45. Day 1: a clean payment."""
    channel, his = BillChannel(), PagedHis()
    await paid_everywhere(db, channel, his, "P-CLEAN", 5000, at(D0, "09:00:00"))
    await paid_everywhere(db, channel, his, "P-LATE", 2200, at(D0, "22:00:00"), his_when=at(D1, "00:40:00"))
    order = await paid_everywhere(db, channel, his, "P-INS", 30000, at(D0, "10:00:00"))
    channel.refund("P-INS", "R-INS", 18000, at(D0, "23:00:00"))
    await add_refund(db, order, "R-INS", 18000, at(D0, "23:00:00"))
    his.book_refund("P-INS", "R-INS", 18000, at(D1, "00:45:00"))
    await paid_everywhere(db, channel, his, "P-D1", 700, at(D1, "09:00:00"))
    return channel, his


async def open_rows(db: Database) -> dict[str, tuple[str, str]]:
    rows = await ex.list_exceptions(db, hospital=HOSPITAL, source="recon", limit=1000)
    return {r["entry_key"]: (r["class"], r["status"]) for r in rows if r["status"] not in ("handled", "closed")}


@pytest.mark.parametrize("order", [(D0, D1), (D1, D0), (D0, D1, D0), (D1, D0, D1, D0), (D0, D0, D1, D1)])
async def test_late_counterparts_are_one_entry_whatever_order_days_run_in(setup, order):
    cfg, db = setup
    channel, his = await late_day(db)
    run = dict(channels={MERCHANT: channel}, source=his)
    for day in order:
        await run_reconciliation(db, cfg, HOSPITAL, day, **run)
    assert await open_rows(db) == {}
    rows = await ex.list_exceptions(db, hospital=HOSPITAL, source="recon")
    assert all(r["status"] == "closed" for r in rows), rows
    for row in rows:  # never over- on one day and under- on the other: the row only ever waited
        history = await audit.entries(db, ex.subject(row["id"]))
        assert not [h for h in history if h["action"] == "recon.exception.reclassified"], history


async def test_the_first_day_alone_leaves_both_waiting_not_flagged(setup):
    cfg, db = setup
    channel, his = await late_day(db)
    summary = await run_reconciliation(db, cfg, HOSPITAL, D0, channels={MERCHANT: channel}, source=his)
    assert summary.exceptions == {"cross_day": ["pay:P-LATE", "refund:R-INS"]}
    assert summary.counts["matched"] == 2 and summary.counts["cross_day"] == 2
    assert await open_rows(db) == {"pay:P-LATE": ("cross_day", "open"), "refund:R-INS": ("cross_day", "open")}

    # What finance could do meanwhile: nothing that moves money — waiting is not an over-collection, and the
    # refund the channel already paid is never offered for payment again.
    rows = {r["entry_key"]: r for r in await ex.list_exceptions(db, hospital=HOSPITAL, source="recon")}
    async with db.read() as conn:
        assert await actions.refund_target(conn, rows["pay:P-LATE"]) is None
        assert [r for r in await actions.remedies(conn, rows["refund:R-INS"]) if r.allowed] == []


async def test_a_rerun_of_the_first_day_after_the_second_does_not_flip_anything(setup):
    cfg, db = setup
    cfg.recon.suspense_days = 0  # flag one-sided entries at once: the harshest setting
    channel, his = await late_day(db)
    run = dict(channels={MERCHANT: channel}, source=his)
    first = await run_reconciliation(db, cfg, HOSPITAL, D0, **run)
    assert first.exceptions == {"over_collection": ["pay:P-LATE"], "under_collection": ["refund:R-INS"]}
    second = await run_reconciliation(db, cfg, HOSPITAL, D1, **run)
    assert second.exceptions == {} and second.cleared == ["pay:P-LATE", "refund:R-INS"]
    rerun = await run_reconciliation(db, cfg, HOSPITAL, D0, **run)
    assert rerun.exceptions == {} and await open_rows(db) == {}
    rows = await ex.list_exceptions(db, hospital=HOSPITAL, source="recon")
    assert {r["entry_key"]: r["note"].splitlines()[-1] for r in rows} == {
        "pay:P-LATE": f"auto: matched on run v1 of {D1}",
        "refund:R-INS": f"auto: matched on run v1 of {D1}",
    }


async def test_a_proposal_on_an_entry_whose_counterpart_turns_up_is_cancelled(setup):
    cfg, db = setup
    cfg.recon.suspense_days = 0
    channel, his = BillChannel(), PagedHis()
    channel.pay("P-HELD", 1500, at(D0, "21:00:00"))
    await add_order(db, "P-HELD", 1500, at(D0, "21:00:00"), status="his_rejected", his_state="rejected")
    run = dict(channels={MERCHANT: channel}, source=his)
    await run_reconciliation(db, cfg, HOSPITAL, D0, **run)
    [row] = await ex.list_exceptions(db, hospital=HOSPITAL, source="recon")
    assert row["class"] == "over_collection"
    svc = Services(cfg, db, {}, {})
    await actions.propose_refund(svc, user("clerk1", "clerk"), row["id"], 1500, "HIS 拒收")
    # The HIS books it after all (its refusal was wrong): the next day's run finds the record.
    his.book("P-HELD", 1500, at(D1, "08:00:00"))
    await run_reconciliation(db, cfg, HOSPITAL, D1, **run)
    now = await ex.get_exception(db, row["id"])
    assert now is not None and now["class"] == "status_mismatch" and now["status"] == "open"
    assert "held back from the HIS" in now["detail"]
    with pytest.raises(actions.ActionError) as refused:
        await actions.approve(svc, user("approver1", "approver"), row["id"])
    assert refused.value.key == "error.state"
    [proposal] = await actions.proposals_for(svc, row["id"])
    assert proposal.state == "cancelled" and "status_mismatch" in proposal.decision_note


async def test_a_one_sided_entry_takes_its_real_class_after_the_horizon_in_any_order(setup):
    cfg, db = setup
    cfg.recon.suspense_days = 2
    for order in itertools.permutations([D0, D1, D2]):
        channel, his = BillChannel(), PagedHis()
        no = "P-NEVER-" + "".join(d.strftime("%d") for d in order)
        channel.pay(no, 900, at(D0, "15:00:00"))
        await add_order(db, no, 900, at(D0, "15:00:00"))
        for day in order:
            await run_reconciliation(db, cfg, HOSPITAL, day, channels={MERCHANT: channel}, source=his)
        rows = {r["entry_key"]: r for r in await ex.list_exceptions(db, hospital=HOSPITAL, source="recon")}
        row = rows[f"pay:{no}"]
        assert (row["class"], row["status"], row["day"]) == ("over_collection", "open", D0), order
