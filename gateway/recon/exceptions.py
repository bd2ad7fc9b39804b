"""What the finance console reads and changes: exceptions, a day's summary, daily totals for the charts.

Every change to an exception is audited in the same transaction (``audit_log`` subject
``recon_exception:<id>``), and a change of status follows the allowed moves only, so a stale page cannot
reopen what someone else closed. Reconciliation runs never write ``status``/``note``/``reference`` of an
exception someone acted on; this module is the only writer of those columns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import utcnow
from gateway.recon.normalize import shanghai_today
from gateway.store import audit
from gateway.store.db import Database
from gateway.store.recon_tables import EXCEPTION_CLASSES, RECON_CLASSES, recon_exceptions, recon_runs

ALLOWED_MOVES: dict[str, frozenset[str]] = {
    "open": frozenset({"proposed", "handled", "closed"}),
    "proposed": frozenset({"open", "approved", "closed"}),
    "approved": frozenset({"handled", "open", "closed"}),
    "handled": frozenset({"closed"}),
    "closed": frozenset(),
}
DONE_STATUSES = ("handled", "closed")


class TransitionError(ValueError):
    """A status move the workflow does not allow."""


class StaleStatus(TransitionError):
    """The exception is no longer in the status the caller saw."""


class NotFound(LookupError):
    pass


def subject(exception_id: int) -> str:
    return f"recon_exception:{exception_id}"


def _row(r: Any) -> dict[str, Any]:
    return dict(r._mapping)


def _filtered(
    stmt: sa.Select[Any],
    *,
    hospital: str | None = None,
    day: dt.date | None = None,
    day_from: dt.date | None = None,
    day_to: dt.date | None = None,
    classes: Iterable[str] | None = None,
    statuses: Iterable[str] | None = None,
    channel: str | None = None,
    search: str | None = None,
    source: str | None = None,
) -> sa.Select[Any]:
    t = recon_exceptions.c
    if source is not None:
        stmt = stmt.where(t.source == source)
    if hospital is not None:
        stmt = stmt.where(t.hospital_id == hospital)
    if day is not None:
        stmt = stmt.where(t.day == day)
    if day_from is not None:
        stmt = stmt.where(t.day >= day_from)
    if day_to is not None:
        stmt = stmt.where(t.day <= day_to)
    if classes:
        stmt = stmt.where(t["class"].in_(list(classes)))
    if statuses:
        stmt = stmt.where(t.status.in_(list(statuses)))
    if channel is not None:
        stmt = stmt.where(t.channel == channel)
    if search:
        like = f"%{search}%"
        stmt = stmt.where(
            sa.or_(
                t.out_trade_no.like(like),
                t.out_refund_no.like(like),
                t.channel_trade_no.like(like),
                t.his_receipt_no.like(like),
                t.reference.like(like),
            )
        )
    return stmt


async def list_exceptions(db: Database, *, limit: int = 100, offset: int = 0, **filters: Any) -> list[dict[str, Any]]:
    """Newest day first, then by id; filters as in :func:`_filtered`."""
    t = recon_exceptions.c
    stmt = _filtered(sa.select(recon_exceptions), **filters).order_by(t.day.desc(), t.id).limit(limit).offset(offset)
    async with db.read() as conn:
        return [_row(r) for r in await conn.execute(stmt)]


async def count_exceptions(db: Database, **filters: Any) -> int:
    stmt = _filtered(sa.select(sa.func.count()).select_from(recon_exceptions), **filters)
    async with db.read() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def get_exception(db: Database, exception_id: int) -> dict[str, Any] | None:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(recon_exceptions).where(recon_exceptions.c.id == exception_id))).first()
    return None if row is None else _row(row)


async def related(db: Database, exc: dict[str, Any]) -> list[dict[str, Any]]:
    """Other exceptions about the same payment (its refunds included), whoever found them."""
    if not exc.get("out_trade_no"):
        return []
    t = recon_exceptions.c
    stmt = (
        sa.select(t.id, t.source, t.entry_key, t["class"], t.status, t.day)
        .where(t.hospital_id == exc["hospital_id"], t.out_trade_no == exc["out_trade_no"], t.id != exc["id"])
        .order_by(t.id)
    )
    async with db.read() as conn:
        return [_row(r) for r in await conn.execute(stmt)]


async def _update(
    conn: AsyncConnection,
    exception_id: int,
    actor: str,
    *,
    status: str | None,
    note: str | None,
    reference: str | None,
    expect_status: str | None,
) -> dict[str, Any]:
    t = recon_exceptions
    row = (await conn.execute(sa.select(t).where(t.c.id == exception_id))).first()
    if row is None:
        raise NotFound(f"no reconciliation exception {exception_id}")
    current = row.status
    if expect_status is not None and current != expect_status:
        raise StaleStatus(f"exception {exception_id} is {current}, not {expect_status}")
    values: dict[str, Any] = {}
    if status is not None and status != current:
        if status not in ALLOWED_MOVES.get(current, frozenset()):
            raise TransitionError(f"exception {exception_id}: {current} → {status} is not allowed")
        values["status"] = status
        if status in DONE_STATUSES:
            values.update(handled_by=actor, handled_at=utcnow())
    if note is not None:
        values["note"] = note
    if reference is not None:
        values["reference"] = reference
    if not values:
        return _row(row)
    values["updated_at"] = utcnow()
    updated = (
        await conn.execute(
            sa.update(t).where(t.c.id == exception_id, t.c.status == current).values(**values).returning(*t.c)
        )
    ).first()
    if updated is None:
        raise StaleStatus(f"exception {exception_id} changed meanwhile")
    action = f"recon.exception.{values['status']}" if "status" in values else "recon.exception.note"
    detail = {"from": current, **{k: v for k, v in values.items() if k in ("status", "note", "reference")}}
    await audit.record(conn, actor, action, subject(exception_id), detail)
    return _row(updated)


async def update_exception(
    db: Database,
    exception_id: int,
    actor: str,
    *,
    status: str | None = None,
    note: str | None = None,
    reference: str | None = None,
    expect_status: str | None = None,
    conn: AsyncConnection | None = None,
) -> dict[str, Any]:
    """Move an exception along its workflow and/or set its note and reference, with an audit entry."""
    kwargs = {"status": status, "note": note, "reference": reference, "expect_status": expect_status}
    if conn is not None:
        return await _update(conn, exception_id, actor, **kwargs)
    async with db.write() as own:
        return await _update(own, exception_id, actor, **kwargs)


async def close_exception(
    db: Database,
    exception_id: int,
    actor: str,
    resolution: str,
    *,
    reference: str | None = None,
    conn: AsyncConnection | None = None,
) -> dict[str, Any]:
    """Close with a resolution (the note), from any status that may close."""
    return await update_exception(
        db, exception_id, actor, status="closed", note=resolution, reference=reference, conn=conn
    )


def _run_dict(run: Any) -> dict[str, Any] | None:
    return None if run is None else _row(run)


async def latest_run(db: Database, hospital: str, day: dt.date) -> dict[str, Any] | None:
    stmt = (
        sa.select(recon_runs)
        .where(recon_runs.c.hospital_id == hospital, recon_runs.c.day == day)
        .order_by(recon_runs.c.version.desc())
        .limit(1)
    )
    async with db.read() as conn:
        return _run_dict((await conn.execute(stmt)).first())


async def summary(db: Database, hospital: str, day: dt.date) -> dict[str, Any]:
    """The day at a glance: the latest run (counts per class, totals per side) and exceptions by class/status."""
    run = await latest_run(db, hospital, day)
    t = recon_exceptions.c
    stmt = (
        sa.select(t["class"], t.status, sa.func.count())
        .where(t.hospital_id == hospital, t.day == day)
        .group_by(t["class"], t.status)
    )
    by_class: dict[str, dict[str, int]] = {c: {} for c in EXCEPTION_CLASSES}
    async with db.read() as conn:
        for cls, status, n in await conn.execute(stmt):
            by_class.setdefault(cls, {})[status] = int(n)
    open_total = sum(n for statuses in by_class.values() for s, n in statuses.items() if s not in DONE_STATUSES)
    return {
        "hospital": hospital,
        "day": day,
        "run": run,
        "exceptions": by_class,
        "open": open_total,
    }


async def daily_totals(
    db: Database, hospital: str, last_n_days: int, *, today: dt.date | None = None
) -> list[dict[str, Any]]:
    """One entry per day (oldest first) for the last ``last_n_days`` days before ``today``, from each day's
    latest run; days without a run have ``run_version`` None and zero counts."""
    end = (today or shanghai_today()) - dt.timedelta(days=1)
    start = end - dt.timedelta(days=last_n_days - 1)
    r = recon_runs.c
    latest = (
        sa.select(r.day, sa.func.max(r.version).label("version"))
        .where(r.hospital_id == hospital, r.day >= start, r.day <= end, r.status == "done")
        .group_by(r.day)
        .subquery()
    )
    stmt = sa.select(recon_runs).join(
        latest, sa.and_(r.day == latest.c.day, r.version == latest.c.version, r.hospital_id == hospital)
    )
    async with db.read() as conn:
        runs = {row.day: _row(row) for row in await conn.execute(stmt)}
    counted = ("matched", *RECON_CLASSES)
    out = []
    for i in range(last_n_days):
        day = start + dt.timedelta(days=i)
        run = runs.get(day)
        entry: dict[str, Any] = {"day": day, "run_version": run["version"] if run else None}
        for name in (*counted, "his_fen", "platform_fen", "channel_fen", "fee_fen"):
            entry[name] = int(run[name]) if run else 0
        out.append(entry)
    return out
