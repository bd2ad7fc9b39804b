"""Finance actions through the console, with their rules enforced on the server: a clerk proposes the refund
of an over-collection, a different approver approves, the money goes back through the channel it came in on
and the exception closes; nobody approves their own proposal; a viewer cannot act; an under-collection is
marked handled with a note; every action is in the audit log with the state before and after."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from gateway.channels.base import RefundState as ChannelRefundState
from gateway.console import actions
from gateway.console.auth import Role, User
from gateway.recon import exceptions as recon
from gateway.store import audit
from gateway.store import orders as order_store
from gateway.store import refunds as refund_store
from tests.support.console_rig import add_staff, seed_over_collection, seed_under_collection
from tests.support.gateway_rig import drain
from tests.support.memory_channel import MemoryChannel

DAY = dt.date(2026, 11, 24)


async def _status(console, exception_id: int) -> str:
    return (await recon.get_exception(console.db, exception_id))["status"]


async def _history(console, exception_id: int) -> list[dict]:
    return list(reversed(await audit.entries(console.db, subject=recon.subject(exception_id))))


async def test_clerk_proposes_another_approves_money_returns_exception_closes(console, client_factory):
    exception_id, order = await seed_over_collection(console.db, console.channel, DAY, amount_fen=12_00)
    clerk = await client_factory("clerk1")
    await clerk.get(f"/exceptions/{exception_id}")
    status, text, url = await clerk.post(
        f"/exceptions/{exception_id}/propose", {"amount": "12.00", "reason": "HIS 未入账"}
    )
    assert status == 200 and url.endswith("done=flash.proposed"), text
    assert await _status(console, exception_id) == "proposed"
    assert console.channel.calls["refund"] == 0, "nothing moves on a proposal alone"
    assert 'id="approve"' not in text, "a clerk is not offered the approval"

    approver = await client_factory("approver1")
    await approver.get(f"/exceptions/{exception_id}")
    status, text, url = await approver.post(f"/exceptions/{exception_id}/approve", {"note": "核对无误"})
    assert status == 200 and url.endswith("done=flash.refunded"), text

    [(out_refund_no, refund)] = console.channel.refunds.items()
    assert refund["out_trade_no"] == order.out_trade_no and refund["amount"] == 12_00
    exc = await recon.get_exception(console.db, exception_id)
    assert exc["status"] == "closed" and exc["reference"] == out_refund_no
    stored = await refund_store.by_out_refund_no(console.db, "wechat", out_refund_no)
    assert stored.origin == "finance" and stored.state == "completed" and stored.order_id == order.id
    assert (await order_store.get(console.db, order.id)).refunded_fen == 12_00

    history = await _history(console, exception_id)
    proposed = next(h for h in history if h["action"] == "console.refund_proposed")
    approved = next(h for h in history if h["action"] == "console.refund_approved")
    done = next(h for h in history if h["action"] == "console.refund_done")
    assert proposed["actor"] == "clerk1" and proposed["detail"]["before"]["status"] == "open"
    assert proposed["detail"]["after"]["status"] == "proposed" and proposed["detail"]["amount_fen"] == 12_00
    assert approved["actor"] == "approver1" and approved["detail"]["proposed_by"] == "clerk1"
    assert approved["detail"]["before"]["status"] == "proposed" and approved["detail"]["after"]["status"] == "approved"
    assert done["detail"]["after"] == {
        "status": "closed",
        "class": "over_collection",
        "note": exc["note"],
        "reference": out_refund_no,
    }
    assert all(h["at"] is not None for h in history)


async def test_nobody_approves_their_own_proposal_not_even_an_admin(console, client_factory):
    exception_id, _ = await seed_over_collection(console.db, console.channel, DAY)
    admin = await client_factory("admin1")
    await admin.get(f"/exceptions/{exception_id}")
    await admin.post(f"/exceptions/{exception_id}/propose", {"amount": "5", "reason": "partial"})
    status, text, _ = await admin.post(f"/exceptions/{exception_id}/approve", {})
    assert status == 403 and "职责分离" in text
    assert await _status(console, exception_id) == "proposed" and console.channel.calls["refund"] == 0
    approver = await client_factory("approver1")
    await approver.get(f"/exceptions/{exception_id}")
    status, _, _ = await approver.post(f"/exceptions/{exception_id}/approve", {})
    assert status == 200 and await _status(console, exception_id) == "closed"
    assert [r["amount"] for r in console.channel.refunds.values()] == [5_00]


@pytest.mark.parametrize(("who", "action", "form"), [
    ("clerk2", "approve", {}),
    ("clerk2", "reject", {"note": "no"}),
    ("viewer1", "approve", {}),
    ("viewer1", "handle", {"note": "done"}),
    ("viewer1", "reference", {"reference": "V-1"}),
])  # fmt: skip
async def test_roles_are_enforced_on_the_server(console, client_factory, who, action, form):
    exception_id, _ = await seed_over_collection(console.db, console.channel, DAY)
    await actions.propose_refund(console.svc, User(0, "clerk1", Role.clerk), exception_id, 12_00, "over")
    client = await client_factory(who)
    status, text = await client.get(f"/exceptions/{exception_id}")
    assert 'id="approve"' not in text and 'id="handle-form"' not in text
    status, text, _ = await client.post(f"/exceptions/{exception_id}/{action}", form)
    assert status == 403, text
    assert await _status(console, exception_id) == "proposed" and console.channel.calls["refund"] == 0


async def test_a_viewer_cannot_propose(console, client_factory):
    exception_id, _ = await seed_over_collection(console.db, console.channel, DAY)
    viewer = await client_factory("viewer1")
    status, text = await viewer.get(f"/exceptions/{exception_id}")
    assert 'id="propose-form"' not in text
    status, _, _ = await viewer.post(f"/exceptions/{exception_id}/propose", {"amount": "1.00", "reason": "x"})
    assert status == 403 and await _status(console, exception_id) == "open"


async def test_amounts_are_checked_against_what_the_payment_still_covers(console, client_factory):
    exception_id, _ = await seed_over_collection(console.db, console.channel, DAY, amount_fen=12_00)
    clerk = await client_factory("clerk1")
    await clerk.get(f"/exceptions/{exception_id}")
    for amount in ("12.01", "0", "-3", "abc", "1.005"):
        status, text, _ = await clerk.post(f"/exceptions/{exception_id}/propose", {"amount": amount, "reason": "x"})
        assert status == 400, (amount, text)
    status, _, _ = await clerk.post(f"/exceptions/{exception_id}/propose", {"amount": "12.00", "reason": ""})
    assert status == 400 and await _status(console, exception_id) == "open"


async def test_a_rejected_proposal_reopens_the_exception(console, client_factory):
    exception_id, _ = await seed_over_collection(console.db, console.channel, DAY)
    await actions.propose_refund(console.svc, User(0, "clerk1", Role.clerk), exception_id, 12_00, "over")
    approver = await client_factory("approver1")
    await approver.get(f"/exceptions/{exception_id}")
    status, _text, _ = await approver.post(f"/exceptions/{exception_id}/reject", {"note": "HIS 已补记"})
    assert status == 200 and await _status(console, exception_id) == "open"
    [rejected] = [h for h in await _history(console, exception_id) if h["action"] == "console.refund_rejected"]
    assert rejected["actor"] == "approver1" and rejected["detail"]["after"]["status"] == "open"
    assert console.channel.calls["refund"] == 0


async def test_an_under_collection_is_marked_handled_with_a_note_and_a_reference(console, client_factory):
    exception_id = await seed_under_collection(console.db, DAY)
    clerk = await client_factory("clerk1")
    status, text = await clerk.get(f"/exceptions/{exception_id}")
    assert 'id="propose-form"' not in text, "an under-collection is not refunded"
    status, _, _ = await clerk.post(f"/exceptions/{exception_id}/propose", {"amount": "35.00", "reason": "x"})
    assert status == 400
    status, _, _ = await clerk.post(f"/exceptions/{exception_id}/handle", {"note": "  "})
    assert status == 400 and await _status(console, exception_id) == "open"
    status, _, _ = await clerk.post(f"/exceptions/{exception_id}/handle", {"note": "患者已补缴现金，收据 X123"})
    assert status == 200
    status, _, _ = await clerk.post(f"/exceptions/{exception_id}/reference", {"reference": "PZ-2026-0042"})
    assert status == 200
    exc = await recon.get_exception(console.db, exception_id)
    assert exc["status"] == "handled" and exc["handled_by"] == "clerk1"
    assert exc["note"] == "患者已补缴现金，收据 X123" and exc["reference"] == "PZ-2026-0042"
    history = await _history(console, exception_id)
    handled = next(h for h in history if h["action"] == "console.marked_handled")
    referenced = next(h for h in history if h["action"] == "console.reference_attached")
    assert handled["detail"]["before"] == {
        "status": "open",
        "class": "under_collection",
        "note": None,
        "reference": None,
    }
    assert handled["detail"]["after"]["status"] == "handled"
    assert referenced["detail"]["before"]["reference"] is None
    assert referenced["detail"]["after"]["reference"] == "PZ-2026-0042"
    status, _, _ = await clerk.post(f"/exceptions/{exception_id}/handle", {"note": "again"})
    assert status == 409


async def test_a_refund_the_channel_refuses_reopens_the_exception(console, client_factory):
    exception_id, _ = await seed_over_collection(console.db, console.channel, DAY)
    await actions.propose_refund(console.svc, User(0, "clerk1", Role.clerk), exception_id, 12_00, "over")
    console.channel.refuse_refund = "NOT_ENOUGH"
    refund = await actions.approve_refund(console.svc, User(0, "approver1", Role.approver), exception_id)
    assert refund.state == "failed"
    exc = await recon.get_exception(console.db, exception_id)
    assert exc["status"] == "open" and refund.out_refund_no in exc["note"]
    [proposal] = await actions.proposals_for(console.svc, exception_id)
    assert proposal.state == "failed"


async def test_a_refund_in_flight_closes_the_exception_when_the_channel_confirms(console):
    exception_id, _ = await seed_over_collection(console.db, console.channel, DAY)
    await actions.propose_refund(console.svc, User(0, "clerk1", Role.clerk), exception_id, 12_00, "over")
    console.channel.refund_outcome = ChannelRefundState.processing
    refund = await actions.approve_refund(console.svc, User(0, "approver1", Role.approver), exception_id)
    assert refund.state == "refunding" and await _status(console, exception_id) == "approved"
    console.channel.refunds[refund.out_refund_no]["state"] = ChannelRefundState.success
    await refund_store.update(console.db, refund.id, None, due_at=dt.datetime.now(dt.UTC))
    await drain(console.running.gateway)
    assert await actions.settle(console.svc) == 1
    assert await _status(console, exception_id) == "closed"
    assert await actions.settle(console.svc) == 0


async def test_two_approvals_at_once_send_one_refund(gateway_factory, db_url):
    channel = MemoryChannel()
    running = await gateway_factory(db_url, channel=channel)
    svc = running.svc
    await add_staff(svc.db)
    exception_id, order = await seed_over_collection(svc.db, channel, DAY, amount_fen=8_00)
    await actions.propose_refund(svc, User(0, "clerk1", Role.clerk), exception_id, 8_00, "over")
    approvers = [User(0, "approver1", Role.approver), User(0, "admin1", Role.admin)]
    results = await asyncio.gather(
        *(actions.approve_refund(svc, u, exception_id) for u in approvers), return_exceptions=True
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, actions.ActionError) for r in results if isinstance(r, Exception))
    assert len(channel.refunds) == 1 and (await order_store.get(svc.db, order.id)).refunded_fen == 8_00
    assert (await recon.get_exception(svc.db, exception_id))["status"] == "closed"
