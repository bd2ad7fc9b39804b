"""Finance actions on reconciliation exceptions, with their rules enforced here, on the server:

- an over-collection is refunded to the original route in two steps: a clerk proposes an amount, and a
  *different* person with the approver (or admin) role approves it; only then is a refund reserved against
  the payment and sent through the channel the money came in on (the refund saga, origin ``finance``);
- any open exception may be marked handled with a note saying how (an under-collection is settled offline);
- a reference (voucher, ticket, refund number) may be attached to any exception.

Every action writes the audit log in the transaction of the change, with the state before and after. The
exception's status follows its proposal: ``proposed`` → ``approved`` (money on its way) → ``closed`` once the
channel confirms the refund, or back to ``open`` if the channel refuses it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.console.auth import Role, User
from gateway.console.formatting import yuan
from gateway.model import PAID_ORDER, RefundOrigin, RefundState, utcnow
from gateway.recon import exceptions as recon
from gateway.sagas import refund as refund_saga
from gateway.sagas.common import new_trade_no
from gateway.services import Services, log
from gateway.store import audit
from gateway.store import orders as order_store
from gateway.store import refunds as refund_store
from gateway.store.console_tables import refund_proposals
from gateway.store.recon_tables import recon_exceptions
from gateway.store.tables import orders, refunds

REFUNDABLE_CLASS = "over_collection"
REFUND_DONE = (RefundState.succeeded, RefundState.completed)
REFUND_FAILED = (RefundState.failed, RefundState.rejected)
SETTLE_EVERY_S = 5.0


class ActionError(Exception):
    """A refused action; ``key`` and ``params`` name the message shown to the user."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


@dataclass(frozen=True)
class RefundTarget:
    """The payment an over-collection's money came in on, and how much of it may still go back."""

    order: Any
    suggested_fen: int
    refundable_fen: int


def _require(user: User, role: Role) -> None:
    if not user.can(role):
        raise ActionError("error.forbidden")


def _snapshot(exc: dict[str, Any]) -> dict[str, Any]:
    return {k: exc.get(k) for k in ("status", "note", "reference")}


async def _locked_exception(
    conn: AsyncConnection, svc: Services, exception_id: int, expect: str | None = None
) -> dict[str, Any]:
    """The exception, locked for this transaction; with ``expect``, refused unless it is in that status."""
    t = recon_exceptions
    row = (await conn.execute(svc.db.for_update(sa.select(t).where(t.c.id == exception_id)))).first()
    if row is None:
        raise ActionError("error.not_found")
    exc = dict(row._mapping)
    if expect is not None and exc["status"] != expect:
        raise ActionError("error.state", now=exc["status"])
    return exc


async def _order_for(conn: AsyncConnection, exc: dict[str, Any]) -> Any:
    """The payment behind the exception: the order itself (a payment), or the order a refund belongs to."""
    if exc["entry_type"] == "refund" and exc.get("out_refund_no"):
        stmt = sa.select(orders).join(refunds, refunds.c.order_id == orders.c.id)
        stmt = stmt.where(refunds.c.out_refund_no == exc["out_refund_no"], orders.c.hospital_id == exc["hospital_id"])
    elif exc.get("out_trade_no"):
        stmt = sa.select(orders).where(orders.c.out_trade_no == exc["out_trade_no"])
    else:
        return None
    return (await conn.execute(stmt)).first()


async def refund_target(conn: AsyncConnection, exc: dict[str, Any]) -> RefundTarget | None:
    """None when the exception cannot be refunded from the console: not an over-collection, or no paid order
    on our side to send the money back through."""
    if exc["class"] != REFUNDABLE_CLASS:
        return None
    order = await _order_for(conn, exc)
    if order is None or order.paid_fen is None:
        return None
    refundable = int(order.paid_fen) - await refund_store.counted_fen(conn, order.id)
    if refundable <= 0:
        return None
    wanted = exc["his_fen"] if exc["entry_type"] == "refund" else exc["channel_fen"]
    suggested = min(int(wanted if wanted is not None else refundable), refundable)
    return RefundTarget(order, suggested, refundable)


async def propose_refund(svc: Services, user: User, exception_id: int, amount_fen: int, reason: str) -> int:
    """A clerk (or above) proposes to refund ``amount_fen`` of an open over-collection; returns the proposal id."""
    _require(user, Role.clerk)
    reason = reason.strip()
    if not reason:
        raise ActionError("error.reason_required")
    async with svc.db.write() as conn:
        exc = await _locked_exception(conn, svc, exception_id, expect="open")
        target = await refund_target(conn, exc)
        if target is None:
            raise ActionError("error.not_refundable")
        if not 0 < amount_fen <= target.refundable_fen:
            raise ActionError("error.amount", amount=yuan(target.refundable_fen))
        now = utcnow()
        proposal_id = (
            await conn.execute(
                sa.insert(refund_proposals)
                .values(
                    exception_id=exception_id,
                    order_id=target.order.id,
                    amount_fen=amount_fen,
                    reason=reason[:200],
                    state="proposed",
                    proposed_by=user.username,
                    proposed_at=now,
                    updated_at=now,
                )
                .returning(refund_proposals.c.id)
            )
        ).scalar_one()
        after = await recon.update_exception(
            svc.db, exception_id, user.username, status="proposed", expect_status="open", conn=conn
        )
        await audit.record(
            conn,
            user.username,
            "console.refund_proposed",
            recon.subject(exception_id),
            {
                "proposal": int(proposal_id),
                "out_trade_no": target.order.out_trade_no,
                "amount_fen": amount_fen,
                "reason": reason[:200],
                "before": _snapshot(exc),
                "after": _snapshot(after),
            },
        )
    return int(proposal_id)


async def _open_proposal(conn: AsyncConnection, svc: Services, exception_id: int) -> Any:
    t = refund_proposals
    stmt = svc.db.for_update(
        sa.select(t).where(t.c.exception_id == exception_id, t.c.state == "proposed").order_by(t.c.id.desc())
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise ActionError("error.no_proposal")
    return row


def _may_decide(user: User, proposal: Any) -> None:
    """Separation of duties: an approver (or admin) who is not the person who proposed."""
    _require(user, Role.approver)
    if proposal.proposed_by == user.username:
        raise ActionError("error.same_person")


async def approve_refund(svc: Services, user: User, exception_id: int, note: str = "") -> Any:
    """Approve the exception's pending proposal: reserve the refund against the payment in the same transaction,
    then drive it through the channel at once. Returns the refund row as it stands afterwards."""
    async with svc.db.write() as conn:
        exc = await _locked_exception(conn, svc, exception_id, expect="proposed")
        proposal = await _open_proposal(conn, svc, exception_id)
        _may_decide(user, proposal)
        order = await order_store.lock(svc.db, conn, proposal.order_id)
        assert order is not None
        available = int(order.paid_fen or 0) - await refund_store.counted_fen(conn, order.id)
        paid = order.paid_fen is not None and (order.status in PAID_ORDER or order.his_state == "held")
        if not paid or proposal.amount_fen > available:
            raise ActionError("error.amount", amount=yuan(max(available, 0)))
        now = utcnow()
        refund_id = (
            await conn.execute(
                sa.insert(refunds)
                .values(
                    order_id=order.id,
                    hospital_id=order.hospital_id,
                    channel=order.channel,
                    business_refund_no=None,
                    out_refund_no=new_trade_no("F"),
                    amount_fen=proposal.amount_fen,
                    reason=proposal.reason,
                    origin=RefundOrigin.finance.value,
                    state=RefundState.reserved.value,
                    due_at=svc.lease(),
                    created_at=now,
                    updated_at=now,
                )
                .returning(refunds.c.id)
            )
        ).scalar_one()
        await _decide(conn, proposal, user, "approved", note, now, refund_id=refund_id)
        after = await recon.update_exception(
            svc.db, exception_id, user.username, status="approved", expect_status="proposed", conn=conn
        )
        await audit.record(
            conn,
            user.username,
            "console.refund_approved",
            recon.subject(exception_id),
            {
                "proposal": int(proposal.id),
                "proposed_by": proposal.proposed_by,
                "refund_id": int(refund_id),
                "amount_fen": int(proposal.amount_fen),
                "before": _snapshot(exc),
                "after": _snapshot(after),
            },
        )
    refund = await refund_store.get(svc.db, int(refund_id))
    try:
        refund = await refund_saga.advance(svc, refund)
    except Exception:
        log.exception("console_refund_advance_failed", refund=refund_id)
    await settle(svc)
    return await refund_store.get(svc.db, int(refund_id))


async def _decide(
    conn: Any, proposal: Any, user: User, state: str, note: str, now: Any, *, refund_id: int | None = None
) -> None:
    """Record an approver's decision on a proposal (the second person of the two)."""
    await conn.execute(
        sa.update(refund_proposals)
        .where(refund_proposals.c.id == proposal.id)
        .values(
            state=state,
            decided_by=user.username,
            decided_at=now,
            decision_note=note.strip()[:2000] or None,
            refund_id=refund_id,
            updated_at=now,
        )
    )


async def reject_refund(svc: Services, user: User, exception_id: int, note: str) -> None:
    """An approver turns the proposal down; the exception is open again."""
    async with svc.db.write() as conn:
        exc = await _locked_exception(conn, svc, exception_id, expect="proposed")
        proposal = await _open_proposal(conn, svc, exception_id)
        _may_decide(user, proposal)
        now = utcnow()
        await _decide(conn, proposal, user, "rejected", note, now)
        after = await recon.update_exception(
            svc.db, exception_id, user.username, status="open", expect_status="proposed", conn=conn
        )
        await audit.record(
            conn,
            user.username,
            "console.refund_rejected",
            recon.subject(exception_id),
            {
                "proposal": int(proposal.id),
                "note": note.strip()[:500],
                "before": _snapshot(exc),
                "after": _snapshot(after),
            },
        )


async def mark_handled(svc: Services, user: User, exception_id: int, note: str) -> None:
    """Settled outside the system (an under-collection, typically): say how, and it leaves the open list."""
    _require(user, Role.clerk)
    note = note.strip()
    if not note:
        raise ActionError("error.note_required")
    async with svc.db.write() as conn:
        exc = await _locked_exception(conn, svc, exception_id, expect="open")
        after = await recon.update_exception(
            svc.db, exception_id, user.username, status="handled", note=note[:2000], expect_status="open", conn=conn
        )
        await audit.record(
            conn,
            user.username,
            "console.marked_handled",
            recon.subject(exception_id),
            {"before": _snapshot(exc), "after": _snapshot(after)},
        )


async def attach_reference(svc: Services, user: User, exception_id: int, reference: str) -> None:
    _require(user, Role.clerk)
    reference = reference.strip()
    if not reference:
        raise ActionError("error.reference_required")
    async with svc.db.write() as conn:
        exc = await _locked_exception(conn, svc, exception_id)
        after = await recon.update_exception(svc.db, exception_id, user.username, reference=reference[:128], conn=conn)
        await audit.record(
            conn,
            user.username,
            "console.reference_attached",
            recon.subject(exception_id),
            {"before": _snapshot(exc), "after": _snapshot(after)},
        )


async def proposals_for(svc: Services, exception_id: int) -> list[Any]:
    t = refund_proposals
    stmt = (
        sa.select(t, refunds.c.state.label("refund_state"), refunds.c.out_refund_no, refunds.c.last_error)
        .outerjoin(refunds, refunds.c.id == t.c.refund_id)
        .where(t.c.exception_id == exception_id)
        .order_by(t.c.id.desc())
    )
    async with svc.db.read() as conn:
        return list(await conn.execute(stmt))


async def settle(svc: Services) -> int:
    """Follow approved proposals to their refund's end: money back closes the exception (the refund number as
    its reference); a refund the channel refused reopens it with the reason. Idempotent and safe on several
    instances (each change is conditional on the state it saw). Returns how many proposals it settled."""
    t = refund_proposals
    stmt = (
        sa.select(
            t.c.id, t.c.exception_id, t.c.amount_fen, refunds.c.state, refunds.c.out_refund_no, refunds.c.last_error
        )
        .join(refunds, refunds.c.id == t.c.refund_id)
        .where(t.c.state == "approved", refunds.c.state.in_([s.value for s in (*REFUND_DONE, *REFUND_FAILED)]))
    )
    async with svc.db.read() as conn:
        finished = list(await conn.execute(stmt))
    settled = 0
    for p in finished:
        done = p.state in REFUND_DONE
        async with svc.db.write() as conn:
            moved = await conn.execute(
                sa.update(t)
                .where(t.c.id == p.id, t.c.state == "approved")
                .values(state="done" if done else "failed", updated_at=utcnow())
            )
            if not moved.rowcount:
                continue
            exc = await _locked_exception(conn, svc, p.exception_id)
            if exc["status"] != "approved":
                continue
            if done:
                resolution = f"refunded {yuan(p.amount_fen)} yuan to the original route ({p.out_refund_no})"
                after = await recon.close_exception(
                    svc.db, p.exception_id, "console", resolution, reference=p.out_refund_no, conn=conn
                )
            else:
                why = f"refund {p.out_refund_no} failed: {p.last_error or p.state}"[:2000]
                after = await recon.update_exception(
                    svc.db, p.exception_id, "console", status="open", note=why, conn=conn
                )
            await audit.record(
                conn,
                "console",
                "console.refund_done" if done else "console.refund_failed",
                recon.subject(p.exception_id),
                {"proposal": int(p.id), "refund": p.out_refund_no, "before": _snapshot(exc), "after": _snapshot(after)},
            )
            settled += 1
    return settled


async def settle_forever(svc: Services) -> None:
    """The console's background task: settle proposals whose refund finished through a callback or a worker."""
    while True:
        try:
            await settle(svc)
        except Exception:
            log.exception("console_settle_failed")
        await asyncio.sleep(SETTLE_EVERY_S)
