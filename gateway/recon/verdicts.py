"""From evidence to the exceptions finance works: one verdict per entry key, and what it does to the key's row.

A verdict is the key's class from all its evidence (``engine.classify``), held as ``cross_day`` while a
one-sided entry is younger than ``suspense_days`` counted from its first observation to the latest day any
run has reconciled — so running days in any order ends with the same verdicts. Writing a verdict:

- matched: an ``open`` row is closed, a ``proposed`` one too after its proposal is cancelled — both with a note
  naming the run that found the counterpart; rows finance acted on further are left as they are;
- a class: a new row is opened (``handled`` at once for an over-collection the gateway has since refunded in
  full); an existing row gets the class, amounts and records; a change of class is audited, never silent — a
  proposal that no longer fits is cancelled, and a row that was closed or handled is reopened with a note.
Finance's note, reference and decisions are never overwritten; system lines are appended to the note.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import utcnow
from gateway.recon.engine import APPLIED, NO_HIS, ONE_SIDED, Cls, Evidence, classify
from gateway.recon.evidence import Observation
from gateway.store import audit, finance_exceptions
from gateway.store.finance_exceptions import RECON, with_note
from gateway.store.recon_tables import recon_exceptions

HELD = "cross_day"
REFUNDABLE = frozenset({"over_collection"})
"""Classes whose proposals (a refund to the payer, paying or cancelling a HIS refund) make sense."""


@dataclass(frozen=True)
class Platform:
    """The platform's current record of a key: (amount, flag) for the engine and the row for display."""

    amount_fen: int
    flag: int
    record: dict[str, Any]


@dataclass(frozen=True)
class KeyEvidence:
    key: str
    observations: Sequence[Observation]
    platform: Platform | None

    @property
    def first_day(self) -> dt.date | None:
        days = [o.day for o in self.observations]
        return min(days) if days else None

    def side(self, name: str, *, settled_only: bool = False) -> list[Observation]:
        return [o for o in self.observations if o.side == name and (o.flag or not settled_only)]

    def engine_evidence(self) -> Evidence:
        p = (self.platform.amount_fen, self.platform.flag) if self.platform is not None else None
        his = self.side("his")
        return Evidence(
            his=[o.amount_fen for o in his],
            channel=[o.amount_fen for o in self.side("channel", settled_only=True)],
            platform=p,
            his_applied=any(o.flag == APPLIED for o in his),
        )


@dataclass(frozen=True)
class Verdict:
    key: str
    cls: str | None
    """A class name, ``cross_day`` (one-sided, still waiting), or None (matched)."""
    real_cls: str | None
    """The class it has or will have once it stops waiting."""
    netted: bool = False


def judge(ev: KeyEvidence, *, as_of: dt.date, suspense_days: int) -> Verdict:
    cls = classify(ev.key, ev.engine_evidence())
    if cls is None:
        return Verdict(ev.key, None, None)
    first = ev.first_day or as_of
    if cls in ONE_SIDED and (as_of - first).days < suspense_days:
        return Verdict(ev.key, HELD, cls.name)
    netted = cls is Cls.over_collection and ev.key.startswith("pay:") and _refunded_in_full(ev.platform)
    return Verdict(ev.key, cls.name, cls.name, netted)


def _refunded_in_full(platform: Platform | None) -> bool:
    if platform is None:
        return False
    r = platform.record
    paid = int(r.get("paid_fen") or 0)
    return paid > 0 and int(r.get("refunded_fen") or 0) >= paid


def _record(items: list[Observation]) -> Any:
    if not items:
        return None
    if len(items) == 1:
        return items[0].record
    return {"copies": [o.record for o in items]}


def _fen(items: list[Observation]) -> int | None:
    return items[0].amount_fen if items else None


def _detail(cls: str, ev: KeyEvidence) -> str:
    def fmt(name: str, items: list[Observation]) -> str:
        if not items:
            return f"{name} none"
        days = ",".join(sorted({o.day.isoformat() for o in items}))
        return f"{name} {items[0].amount_fen / 100:.2f} ({days})"

    parts = [
        fmt("channel", ev.side("channel", settled_only=True)),
        fmt("his", ev.side("his")),
        f"platform {'none' if ev.platform is None else f'{ev.platform.amount_fen / 100:.2f}'}",
    ]
    p = ev.platform.record if ev.platform is not None else None
    if p is not None and p.get("kind") == "order":
        parts.append(f"platform order {p.get('status')}/his {p.get('his_state')}")
        if ev.platform is not None and ev.platform.flag == NO_HIS:
            parts.append("held back from the HIS")
    elif p is not None:
        parts.append(f"platform refund {p.get('state')}")
    if any(o.flag == APPLIED for o in ev.side("his")):
        parts.append("HIS refund applied, its payout not written back")
    unsettled = [o for o in ev.side("channel") if not o.flag]
    if unsettled and not ev.side("channel", settled_only=True):
        parts.append(f"channel status {(unsettled[0].record or {}).get('status')}")
    return f"{cls}: " + ", ".join(parts)


def row_values(ev: KeyEvidence, verdict: Verdict) -> dict[str, Any]:
    cls = verdict.cls or "matched"
    his, channel = ev.side("his"), ev.side("channel", settled_only=True) or ev.side("channel")
    h = his[0].record or {} if his else {}
    c = channel[0].record or {} if channel else {}
    p = ev.platform.record if ev.platform is not None else {}
    entry_type = "pay" if ev.key.startswith("pay:") else "refund"
    ref = ev.key.split(":", 1)[1]
    return {
        "entry_type": entry_type,
        "class": cls,
        "detail": _detail(cls, ev),
        "channel": c.get("channel") or p.get("channel") or h.get("channel"),
        "merchant_id": c.get("merchant_id") or p.get("merchant_id"),
        "out_trade_no": ref
        if entry_type == "pay"
        else (c.get("out_trade_no") or p.get("out_trade_no") or h.get("trade_no")),
        "out_refund_no": ref if entry_type == "refund" else None,
        "channel_trade_no": c.get("channel_trade_no") or p.get("channel_trade_no") or h.get("channel_trade_no"),
        "his_trade_no": h.get("trade_no"),
        "his_receipt_no": h.get("receipt_no"),
        "his_fen": _fen(his),
        "platform_fen": ev.platform.amount_fen if ev.platform is not None else None,
        "channel_fen": _fen(ev.side("channel", settled_only=True)),
        "his_record": _record(his),
        "platform_record": p or None,
        "channel_record": _record(channel),
    }


@dataclass
class Written:
    found: dict[str, str]
    """Key → class (``cross_day`` included) of every key this run judged not matched."""
    closed: list[str]
    """Keys whose open exception this run closed because they now match."""


async def write(
    conn: AsyncConnection,
    *,
    hospital: str,
    day: dt.date,
    version: int,
    verdicts: Mapping[str, Verdict],
    evidence: Mapping[str, KeyEvidence],
) -> Written:
    t = recon_exceptions.c
    keys = list(verdicts)
    existing: dict[str, Any] = {}
    for i in range(0, len(keys), 500):
        stmt = sa.select(recon_exceptions).where(
            t.hospital_id == hospital, t.source == RECON, t.entry_key.in_(keys[i : i + 500])
        )
        existing.update({r.entry_key: r for r in await conn.execute(stmt)})
    out = Written({}, [])
    actor = "recon"
    run = f"run v{version} of {day}"
    now = utcnow()
    for key, verdict in verdicts.items():
        row = existing.get(key)
        ev = evidence[key]
        if verdict.cls is None:
            if row is not None and await _close_matched(conn, row, f"auto: matched on {run}", actor):
                out.closed.append(key)
            continue
        out.found[key] = verdict.cls
        values = row_values(ev, verdict)
        values.update(last_version=version, last_day=day, updated_at=now)
        if row is None:
            first = ev.first_day or day
            status, note, handled = "open", None, None
            if verdict.netted:
                status, note, handled = "handled", "auto: refunded in full by the gateway", actor
            await conn.execute(
                sa.insert(recon_exceptions).values(
                    hospital_id=hospital, source=RECON, day=first, first_version=version, entry_key=key,
                    status=status, note=note, handled_by=handled, handled_at=now if handled else None,
                    created_at=now, **values,
                )
            )  # fmt: skip
            continue
        await _update(conn, row, values, verdict, run, actor)
    return out


async def _close_matched(conn: AsyncConnection, row: Any, note: str, actor: str) -> bool:
    if row.status not in ("open", "proposed"):
        return False
    if row.status == "proposed":
        await finance_exceptions.cancel_proposals(conn, row.id, f"the entry matched: {note}", actor)
    now = utcnow()
    await conn.execute(
        sa.update(recon_exceptions)
        .where(recon_exceptions.c.id == row.id, recon_exceptions.c.status == row.status)
        .values(status="closed", note=with_note(row.note, note), handled_by=actor, handled_at=now, updated_at=now)
    )
    await audit.record(conn, actor, "recon.exception.closed", finance_exceptions.subject(row.id), {"note": note})
    return True


async def _update(
    conn: AsyncConnection, row: Any, values: dict[str, Any], verdict: Verdict, run: str, actor: str
) -> None:
    was = row._mapping["class"]
    changed = was != verdict.cls
    subject = finance_exceptions.subject(row.id)
    if changed:
        await audit.record(
            conn, actor, "recon.exception.reclassified", subject, {"from": was, "to": verdict.cls, "run": run}
        )
    if row.status == "proposed" and verdict.cls not in REFUNDABLE:
        await finance_exceptions.cancel_proposals(conn, row.id, f"now {verdict.cls} ({run})", actor)
        values.update(status="open", note=with_note(row.note, f"auto: now {verdict.cls} on {run}; proposal cancelled"))
    elif row.status == "closed" and row.handled_by == actor:
        values.update(
            status="open", note=with_note(row.note, f"auto: seen again on {run}"), handled_by=None, handled_at=None
        )
    elif row.status in ("handled", "closed") and changed and verdict.cls != "cross_day":
        values.update(status="open", note=with_note(row.note, f"auto: reopened, {was} → {verdict.cls} on {run}"))
    await conn.execute(sa.update(recon_exceptions).where(recon_exceptions.c.id == row.id).values(**values))
