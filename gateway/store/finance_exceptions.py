"""The exceptions finance works, as the system raises and settles them: the sagas about one order or refund
(source ``gateway``), and the moves a reconciliation run makes on its own rows (source ``recon``).

Rows live in ``recon_exceptions`` (one per hospital, source and entry key) beside reconciliation's, so the
console lists, filters, exports and audits both alike. What the system may do to a row is narrow: raise it
(open, or reopen one that was closed by the system or finance if the problem is back), reclassify it (audited,
never silent), and settle it when the problem went away — closing an open row, cancelling a proposal that no
longer applies. It never overwrites finance's note, reference or decision, and never touches a row whose
money is on its way (``approved``); the console's settle step follows that one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import local_day, utcnow
from gateway.store import audit
from gateway.store.console_tables import refund_proposals
from gateway.store.orders import Order
from gateway.store.recon_tables import recon_exceptions
from gateway.store.refunds import Refund

GATEWAY = "gateway"
RECON = "recon"
WORKING = ("open", "proposed", "approved")
"""Statuses in which an exception still asks for someone's attention."""


def subject(exception_id: int) -> str:
    return f"recon_exception:{exception_id}"


def entry_key(order: Order, refund: Refund | None = None) -> str:
    return f"refund:{refund.out_refund_no}" if refund is not None else f"pay:{order.out_trade_no}"


def with_note(existing: str | None, line: str) -> str:
    """Add a line to an exception's note: what finance wrote stays, the system's lines follow it."""
    return (f"{existing}\n{line}" if existing else line)[-2000:]


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _platform_record(order: Order, refund: Refund | None) -> dict[str, Any]:
    if refund is not None:
        return {
            "kind": "refund",
            "out_refund_no": refund.out_refund_no,
            "business_refund_no": refund.business_refund_no,
            "out_trade_no": order.out_trade_no,
            "amount_fen": refund.amount_fen,
            "origin": refund.origin,
            "state": refund.state,
            "channel_refund_no": refund.channel_refund_no,
            "his_refund_id": refund.his_refund_id,
            "his_receipt_no": refund.his_receipt_no,
            "refunded_at": _time(refund.refunded_at),
            "last_error": refund.last_error,
            "order_his_state": order.his_state,
        }
    return {
        "kind": "order",
        "out_trade_no": order.out_trade_no,
        "business_order_no": order.business_order_no,
        "business_type": order.business_type,
        "amount_fen": order.amount_fen,
        "paid_fen": order.paid_fen,
        "refunded_fen": order.refunded_fen,
        "status": order.status,
        "his_state": order.his_state,
        "his_receipt_no": order.his_receipt_no,
        "paid_at": _time(order.paid_at),
        "attempts": order.attempts,
        "last_error": order.last_error,
    }


async def cancel_proposals(conn: AsyncConnection, exception_id: int, why: str, actor: str) -> int:
    """Cancel the exception's proposals that nobody has decided yet; how many."""
    t = refund_proposals
    moved = await conn.execute(
        sa.update(t)
        .where(t.c.exception_id == exception_id, t.c.state == "proposed")
        .values(state="cancelled", decided_by=actor, decided_at=utcnow(), decision_note=why[:2000], updated_at=utcnow())
    )
    if moved.rowcount:
        await audit.record(conn, actor, "exception.proposal_cancelled", subject(exception_id), {"why": why[:500]})
    return int(moved.rowcount or 0)


async def raise_exception(
    conn: AsyncConnection,
    *,
    order: Order,
    cls: str,
    detail: str,
    actor: str,
    refund: Refund | None = None,
    channel_fen: int | None = None,
) -> int:
    """Record (or refresh) the gateway's exception about an order or one of its refunds, in the caller's
    transaction; its id. A row that was closed or handled is reopened: the problem is back."""
    t = recon_exceptions.c
    key = entry_key(order, refund)
    now = utcnow()
    values: dict[str, Any] = {
        "class": cls,
        "detail": detail[:2000],
        "channel": order.channel,
        "merchant_id": order.merchant_id,
        "out_trade_no": order.out_trade_no,
        "out_refund_no": refund.out_refund_no if refund is not None else None,
        "channel_trade_no": order.channel_trade_no,
        "his_receipt_no": (refund.his_receipt_no if refund is not None else order.his_receipt_no),
        "platform_fen": refund.amount_fen if refund is not None else (order.paid_fen or order.amount_fen),
        "channel_fen": channel_fen,
        "platform_record": _platform_record(order, refund),
        "updated_at": now,
    }
    existing = (
        await conn.execute(
            sa.select(t.id, t["class"], t.status).where(
                t.hospital_id == order.hospital_id, t.source == GATEWAY, t.entry_key == key
            )
        )
    ).first()
    if existing is None:
        day = local_day(refund.created_at if refund is not None else (order.paid_at or order.created_at))
        exception_id = (
            await conn.execute(
                sa.insert(recon_exceptions)
                .values(
                    hospital_id=order.hospital_id,
                    source=GATEWAY,
                    day=day,
                    first_version=0,
                    last_version=0,
                    last_day=day,
                    entry_key=key,
                    entry_type="refund" if refund is not None else "pay",
                    status="open",
                    created_at=now,
                    **values,
                )
                .returning(t.id)
            )
        ).scalar_one()
        await audit.record(conn, actor, "exception.raised", subject(exception_id), {"class": cls, "detail": detail})
        return int(exception_id)
    exception_id = int(existing.id)
    if existing.status in ("handled", "closed"):
        values.update(status="open", handled_by=None, handled_at=None)
    await conn.execute(sa.update(recon_exceptions).where(t.id == exception_id).values(**values))
    if existing.status in ("handled", "closed") or existing._mapping["class"] != cls:
        await audit.record(
            conn,
            actor,
            "exception.raised",
            subject(exception_id),
            {"class": cls, "was": existing._mapping["class"], "status_was": existing.status, "detail": detail},
        )
    return exception_id


async def resolve(
    conn: AsyncConnection,
    *,
    hospital_id: str,
    entry_key: str,
    classes: Iterable[str] | None,
    note: str,
    actor: str,
    source: str = GATEWAY,
) -> int | None:
    """The problem went away by itself (a stuck step completed, a late success arrived…): close the exception
    if nobody is acting on it, cancelling a proposal that no longer applies. Returns its id when it closed."""
    t = recon_exceptions.c
    stmt = sa.select(t.id, t["class"], t.status, t.note).where(
        t.hospital_id == hospital_id, t.source == source, t.entry_key == entry_key
    )
    row = (await conn.execute(stmt)).first()
    if row is None or row.status not in ("open", "proposed"):
        return None
    if classes is not None and row._mapping["class"] not in set(classes):
        return None
    if row.status == "proposed":
        await cancel_proposals(conn, row.id, f"no longer needed: {note}", actor)
    now = utcnow()
    await conn.execute(
        sa.update(recon_exceptions)
        .where(t.id == row.id, t.status == row.status)
        .values(status="closed", note=with_note(row.note, f"auto: {note}"), handled_by=actor, handled_at=now,
                updated_at=now)
    )  # fmt: skip
    await audit.record(
        conn, actor, "exception.resolved", subject(row.id), {"class": row._mapping["class"], "note": note}
    )
    return int(row.id)
