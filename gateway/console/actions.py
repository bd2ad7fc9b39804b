"""Finance actions on exceptions — reconciliation's and those the sagas raise — with their rules enforced here,
on the server, and checked again at the moment anything moves:

- money goes back only where the HIS agrees. Three remedies move money or HIS records, each in two steps (a
  clerk proposes, a *different* person with the approver or admin role approves):
  - ``refund``: return money the HIS does not hold (an over-collection, a payment the HIS refused, a payment
    after a close, an amount mismatch). Refused while the order's HIS step is pending, in doubt or done — the
    HIS may hold (or soon hold) the receipt; allowed only when the HIS refused the payment or was never told
    (``refunds.his_rule``). Checked again at approval under the order's lock, with the exception's current
    class, in the same transaction that reserves the money;
  - ``pay_refund``: pay out a refund the HIS applied but the channel never received (reserved again against
    the payment and the HIS's refundable amount, then the usual channel refund and write-back);
  - ``cancel_his_refund``: undo that application at the HIS instead (``refund.cancel``);
- ``redrive``: try a waiting HIS step now (a stuck commit, application or write-back), or a write-back the HIS
  refused once more under a new request id — one person, audited;
- any open exception may be marked handled with a note saying how (an under-collection is settled offline);
- a reference (voucher, ticket, refund number) may be attached to any exception.

Every action writes the audit log in the transaction of the change, with the state before and after. The
exception's status follows its proposal: ``proposed`` → ``approved`` (on its way) → ``closed`` once the refund
or the cancel is done, or back to ``open`` with the reason if it failed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.console.auth import Role, User
from gateway.console.formatting import yuan
from gateway.model import HIS_SENDABLE, OrderStatus, RefundOrigin, RefundState, utcnow
from gateway.recon import exceptions as recon
from gateway.sagas import refund as refund_saga
from gateway.sagas.common import new_trade_no
from gateway.services import Services, log
from gateway.store import audit
from gateway.store import orders as order_store
from gateway.store import refunds as refund_store
from gateway.store.console_tables import refund_proposals
from gateway.store.orders import Order
from gateway.store.recon_tables import recon_exceptions
from gateway.store.refunds import Refund
from gateway.store.tables import orders, refunds

REFUND, PAY_REFUND, CANCEL_HIS_REFUND = "refund", "pay_refund", "cancel_his_refund"
MONEY_BACK = {
    ("recon", "pay", "over_collection"),
    ("gateway", "pay", "his_rejected"),
    ("gateway", "pay", "paid_after_close"),
    ("gateway", "pay", "amount_mismatch"),
}
"""(source, entry type, class) of exceptions whose remedy may be returning the payment to the payer."""
HIS_REFUND_UNPAID = {("recon", "refund", "over_collection"), ("gateway", "refund", "his_refund_not_paid")}
"""Exceptions about a refund the HIS applied that was not paid out."""
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
class Remedy:
    """One thing finance could propose for an exception, and whether it can be proposed now (``why`` not)."""

    action: str
    order: Order
    refund: Refund | None
    suggested_fen: int
    refundable_fen: int
    why: str | None = None

    @property
    def allowed(self) -> bool:
        return self.why is None


RefundTarget = Remedy
"""The older name of a ``refund`` remedy."""


def _require(user: User, role: Role) -> None:
    if not user.can(role):
        raise ActionError("error.forbidden")


def _snapshot(exc: dict[str, Any]) -> dict[str, Any]:
    return {k: exc.get(k) for k in ("status", "class", "note", "reference")}


def _kind(exc: dict[str, Any]) -> tuple[str, str, str]:
    return (exc.get("source") or "recon", exc["entry_type"], exc["class"])


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


async def _order_for(conn: AsyncConnection, exc: dict[str, Any]) -> Order | None:
    """The payment behind the exception: the order itself (a payment), or the order a refund belongs to."""
    if exc["entry_type"] == "refund" and exc.get("out_refund_no"):
        stmt = sa.select(orders).join(refunds, refunds.c.order_id == orders.c.id)
        stmt = stmt.where(refunds.c.out_refund_no == exc["out_refund_no"], orders.c.hospital_id == exc["hospital_id"])
    elif exc.get("out_trade_no"):
        stmt = sa.select(orders).where(
            orders.c.out_trade_no == exc["out_trade_no"], orders.c.hospital_id == exc["hospital_id"]
        )
    else:
        return None
    return (await conn.execute(stmt)).first()


async def _refund_for(conn: AsyncConnection, exc: dict[str, Any]) -> Refund | None:
    if exc["entry_type"] != "refund" or not exc.get("out_refund_no"):
        return None
    stmt = sa.select(refunds).where(
        refunds.c.out_refund_no == exc["out_refund_no"], refunds.c.hospital_id == exc["hospital_id"]
    )
    return (await conn.execute(stmt)).first()


def _unpaid_why(refund: Refund, order: Order, action: str) -> str | None:
    """Why a HIS-applied refund cannot be paid out or cancelled now, or None."""
    if refund.origin != RefundOrigin.business or (refund.his_refund_id is None and refund.his_refundable_fen is None):
        return "the HIS never applied this refund"
    if action == PAY_REFUND:
        if refund.state != RefundState.rejected or refund.channel_refund_no is not None:
            return f"only a refund the channel never received can be paid out here (it is {refund.state})"
        return None
    if refund.state not in [s.value for s in REFUND_FAILED]:
        return f"only a refund that was not paid can be cancelled at the HIS (it is {refund.state})"
    return None


async def remedies(conn: AsyncConnection, exc: dict[str, Any]) -> list[Remedy]:
    """What could be proposed for this exception, each with the reason it cannot be proposed now (if so)."""
    kind = _kind(exc)
    order = await _order_for(conn, exc)
    if order is None:
        return []
    refundable = await refund_store.refundable_fen(conn, order)
    out: list[Remedy] = []
    if kind in MONEY_BACK:
        why = refund_store.his_rule(order)
        if why is None and refundable <= 0:
            why = "nothing is left to refund on this payment"
        wanted = exc.get("channel_fen") or refundable
        out.append(Remedy(REFUND, order, None, max(0, min(int(wanted), refundable)), refundable, why))
    if kind in HIS_REFUND_UNPAID:
        refund = await _refund_for(conn, exc)
        if refund is not None:
            for action in (PAY_REFUND, CANCEL_HIS_REFUND):
                why = _unpaid_why(refund, order, action)
                if why is None and action == PAY_REFUND and refund.amount_fen > refundable:
                    why = f"the payment covers only {refundable} fen more"
                out.append(Remedy(action, order, refund, refund.amount_fen, refundable, why))
    return out


async def refund_target(conn: AsyncConnection, exc: dict[str, Any]) -> Remedy | None:
    """The ``refund`` remedy when it can be proposed now, else None."""
    return next((r for r in await remedies(conn, exc) if r.action == REFUND and r.allowed), None)


async def propose(
    svc: Services, user: User, exception_id: int, action: str, amount_fen: int | None, reason: str
) -> int:
    """A clerk (or above) proposes a remedy for an open exception; returns the proposal id."""
    _require(user, Role.clerk)
    reason = reason.strip()
    if not reason:
        raise ActionError("error.reason_required")
    async with svc.db.write() as conn:
        exc = await _locked_exception(conn, svc, exception_id, expect="open")
        remedy = next((r for r in await remedies(conn, exc) if r.action == action), None)
        if remedy is None:
            raise ActionError("error.not_refundable")
        if not remedy.allowed:
            raise ActionError("error.not_now", why=remedy.why)
        amount = remedy.suggested_fen if action != REFUND or amount_fen is None else amount_fen
        if not 0 < amount <= remedy.refundable_fen and action != CANCEL_HIS_REFUND:
            raise ActionError("error.amount", amount=yuan(max(remedy.refundable_fen, 0)))
        now = utcnow()
        proposal_id = (
            await conn.execute(
                sa.insert(refund_proposals)
                .values(
                    exception_id=exception_id,
                    order_id=remedy.order.id,
                    action=action,
                    target_refund_id=remedy.refund.id if remedy.refund is not None else None,
                    amount_fen=amount,
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
            "console.refund_proposed" if action == REFUND else f"console.{action}_proposed",
            recon.subject(exception_id),
            {
                "proposal": int(proposal_id),
                "action": action,
                "out_trade_no": remedy.order.out_trade_no,
                "out_refund_no": remedy.refund.out_refund_no if remedy.refund is not None else None,
                "amount_fen": amount,
                "reason": reason[:200],
                "before": _snapshot(exc),
                "after": _snapshot(after),
            },
        )
    return int(proposal_id)


async def propose_refund(svc: Services, user: User, exception_id: int, amount_fen: int, reason: str) -> int:
    """A clerk proposes to return ``amount_fen`` of the payment behind an open exception to the payer."""
    return await propose(svc, user, exception_id, REFUND, amount_fen, reason)


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


async def _still_fits(conn: AsyncConnection, exc: dict[str, Any], proposal: Any) -> None:
    """The exception's class may have changed since the proposal (a re-run found the HIS record): the remedy must
    still be one the exception allows now."""
    kind = _kind(exc)
    fits = kind in MONEY_BACK if proposal.action == REFUND else kind in HIS_REFUND_UNPAID
    if not fits:
        raise ActionError("error.not_now", why=f"the exception is now {exc['class']}: the proposal no longer fits")


async def approve(svc: Services, user: User, exception_id: int, note: str = "") -> Refund | None:
    """Approve the exception's pending proposal and carry it out: everything re-checked under the order's lock in
    the transaction that moves it, then driven at once. Returns the refund as it stands afterwards."""
    async with svc.db.write() as conn:
        exc = await _locked_exception(conn, svc, exception_id, expect="proposed")
        proposal = await _open_proposal(conn, svc, exception_id)
        _may_decide(user, proposal)
        await _still_fits(conn, exc, proposal)
        if proposal.action == REFUND:
            refund_id = await _reserve_money_back(svc, conn, proposal)
        elif proposal.action == PAY_REFUND:
            refund_id = await _reserve_unpaid(svc, conn, proposal)
        else:
            refund_id = await _start_cancel(svc, conn, proposal)
        now = utcnow()
        await _decide(conn, proposal, user, "approved", note, now, refund_id=refund_id)
        after = await recon.update_exception(
            svc.db, exception_id, user.username, status="approved", expect_status="proposed", conn=conn
        )
        await audit.record(
            conn,
            user.username,
            "console.refund_approved" if proposal.action == REFUND else f"console.{proposal.action}_approved",
            recon.subject(exception_id),
            {
                "proposal": int(proposal.id),
                "action": proposal.action,
                "proposed_by": proposal.proposed_by,
                "refund_id": refund_id,
                "amount_fen": int(proposal.amount_fen),
                "before": _snapshot(exc),
                "after": _snapshot(after),
            },
        )
    refund = await refund_store.get(svc.db, refund_id)
    if refund is not None:
        try:
            refund = await refund_saga.advance(svc, refund)
        except Exception:
            log.exception("console_refund_advance_failed", refund=refund_id)
    await settle(svc)
    return await refund_store.get(svc.db, refund_id)


approve_refund = approve


async def _reserve_money_back(svc: Services, conn: AsyncConnection, proposal: Any) -> int:
    reservation = await refund_store.reserve_new(
        svc.db,
        conn,
        proposal.order_id,
        amount_fen=int(proposal.amount_fen),
        origin=RefundOrigin.finance,
        out_refund_no=new_trade_no("F"),
        reason=proposal.reason,
        require_his_clear=True,
        due_at=svc.lease(),
    )
    if reservation.refund is None:
        raise ActionError("error.not_now", why=reservation.why)
    return int(reservation.refund.id)


async def _reserve_unpaid(svc: Services, conn: AsyncConnection, proposal: Any) -> int:
    order = await order_store.lock(svc.db, conn, proposal.order_id)
    refund = await refund_store.get_in(conn, proposal.target_refund_id)
    if order is None or refund is None:
        raise ActionError("error.not_found")
    why = _unpaid_why(refund, order, PAY_REFUND)
    available = await refund_store.refundable_fen(conn, order)
    if why is None and refund.amount_fen > available:
        why = f"the payment covers only {available} fen more"
    limit = refund.his_refundable_fen
    if why is None and limit is not None and refund.amount_fen > limit:
        why = f"the HIS allowed only {limit} fen for this refund"
    if why is not None:
        raise ActionError("error.not_now", why=why)
    row = await refund_store.transition(
        conn, refund.id, [RefundState.rejected], state=RefundState.reserved.value, last_error=None,
        due_at=svc.lease(), attempts=0,
    )  # fmt: skip
    if row is None:
        raise ActionError("error.not_now", why="the refund changed meanwhile")
    return int(refund.id)


async def _start_cancel(svc: Services, conn: AsyncConnection, proposal: Any) -> int:
    order = await order_store.lock(svc.db, conn, proposal.order_id)
    refund = await refund_store.get_in(conn, proposal.target_refund_id)
    if order is None or refund is None:
        raise ActionError("error.not_found")
    why = _unpaid_why(refund, order, CANCEL_HIS_REFUND)
    if why is not None:
        raise ActionError("error.not_now", why=why)
    row = await refund_store.transition(
        conn, refund.id, REFUND_FAILED, state=RefundState.his_cancelling.value, due_at=svc.lease(), attempts=0,
    )  # fmt: skip
    if row is None:
        raise ActionError("error.not_now", why="the refund changed meanwhile")
    return int(refund.id)


async def _decide(
    conn: AsyncConnection, proposal: Any, user: User, state: str, note: str, now: Any, *, refund_id: int | None = None
) -> None:
    """Record an approver's decision on a proposal (the second person of the two)."""
    values: dict[str, Any] = {
        "state": state,
        "decided_by": user.username,
        "decided_at": now,
        "decision_note": note.strip()[:2000] or None,
        "updated_at": now,
    }
    if refund_id is not None:
        values["refund_id"] = refund_id
    await conn.execute(sa.update(refund_proposals).where(refund_proposals.c.id == proposal.id).values(**values))


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


@dataclass(frozen=True)
class Redrive:
    """A HIS step finance may try again now."""

    step: str
    order: Order
    refund: Refund | None
    new_request: bool
    """True when the HIS refused the step: it is sent again under a new request id."""


async def redrive_target(conn: AsyncConnection, exc: dict[str, Any]) -> Redrive | None:
    order = await _order_for(conn, exc)
    if order is None:
        return None
    refund = await _refund_for(conn, exc)
    if refund is None:
        if order.status == OrderStatus.paid and order.his_state in HIS_SENDABLE:
            return Redrive("commit", order, None, False)
        return None
    if refund.state == RefundState.his_applying:
        return Redrive("refund.apply", order, refund, False)
    if refund.state == RefundState.his_cancelling:
        return Redrive("refund.cancel", order, refund, False)
    if refund.state == RefundState.succeeded and refund_saga.needs_his(refund, order):
        return Redrive("refund.writeback", order, refund, refund.due_at is None)
    return None


async def redrive(svc: Services, user: User, exception_id: int, note: str = "") -> str:
    """Try the HIS step behind an exception now (one person, audited); the step it re-drove."""
    _require(user, Role.clerk)
    async with svc.db.write() as conn:
        exc = await _locked_exception(conn, svc, exception_id)
        if exc["status"] in ("handled", "closed"):
            raise ActionError("error.state", now=exc["status"])
        target = await redrive_target(conn, exc)
        if target is None:
            raise ActionError("error.not_now", why="no HIS step of this entry is waiting")
        now = utcnow()
        if target.refund is None:
            await order_store.transition(conn, target.order.id, [OrderStatus.paid], due_at=now)
        else:
            values: dict[str, Any] = {"due_at": now}
            if target.new_request:
                values.update(his_round=target.refund.his_round + 1, attempts=0, exception=None)
            await refund_store.transition(conn, target.refund.id, [RefundState(target.refund.state)], **values)
        await audit.record(
            conn,
            user.username,
            "console.redrive",
            recon.subject(exception_id),
            {"step": target.step, "new_request": target.new_request, "note": note.strip()[:500]},
        )
    (svc.wake_orders if target.refund is None else svc.wake_refunds).set()
    return target.step


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


def _outcome(action: str, state: str) -> bool | None:
    """Whether an approved proposal's refund is done (True), failed (False) or still on its way (None)."""
    if action == CANCEL_HIS_REFUND:
        if state == RefundState.cancelled:
            return True
        return False if state in (RefundState.failed, RefundState.succeeded, RefundState.completed) else None
    if state in [s.value for s in REFUND_DONE]:
        return True
    return False if state in [s.value for s in REFUND_FAILED] else None


async def settle(svc: Services) -> int:
    """Follow approved proposals to their refund's end: done closes the exception (the refund number as its
    reference); a refund the channel refused, or a cancel the HIS refused, reopens it with the reason.
    Idempotent and safe on several instances (each change is conditional on the state it saw). Returns how
    many proposals it settled."""
    t = refund_proposals
    stmt = (
        sa.select(
            t.c.id, t.c.exception_id, t.c.amount_fen, t.c.action, refunds.c.state, refunds.c.out_refund_no,
            refunds.c.last_error,
        )
        .join(refunds, refunds.c.id == t.c.refund_id)
        .where(t.c.state == "approved")
    )  # fmt: skip
    async with svc.db.read() as conn:
        approved = list(await conn.execute(stmt))
    settled = 0
    for p in approved:
        done = _outcome(p.action, p.state)
        if done is None:
            continue
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
            if done and p.action == CANCEL_HIS_REFUND:
                resolution = f"the HIS cancelled its refund application {p.out_refund_no}"
            elif done:
                resolution = f"refunded {yuan(p.amount_fen)} yuan to the original route ({p.out_refund_no})"
            else:
                resolution = f"{p.action} {p.out_refund_no} failed: {p.last_error or p.state}"[:2000]
            if done:
                after = await recon.close_exception(
                    svc.db, p.exception_id, "console", resolution, reference=p.out_refund_no, conn=conn
                )
            else:
                after = await recon.update_exception(
                    svc.db, p.exception_id, "console", status="open", note=resolution, conn=conn
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
