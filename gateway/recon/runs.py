"""One run: a new version of one hospital's day, from the three sides to stored exceptions.

Order of work: open the run row (next version); download, store and check every merchant's statement (a
statement that does not add up fails the run before anything is classified); read the HIS side page by page
and the platform side in batches; carry the suspense pool in; classify (``engine.match``); settle the pool;
then write exceptions, pool and counts in one transaction.

Re-running a day is safe: exceptions are upserted on (hospital, entry key) and finance's columns are never
written here (``status`` only moves from ``open`` to ``closed`` when the entry has since matched). Suspense
items another day already resolved are left as they are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.channels.base import Channel
from gateway.config import GatewayConfig
from gateway.model import utcnow
from gateway.recon import platform_side, suspense
from gateway.recon.engine import DAY_S, SETTLED, UNSETTLED, Cls, Outcome, Side, match
from gateway.recon.his_side import BridgeReconSource, ReconSource, entry_key, pages, record_time
from gateway.recon.normalize import StatementRow, day_bounds
from gateway.recon.statements.store import fetch as fetch_statement
from gateway.store.db import Database
from gateway.store.recon_tables import recon_exceptions, recon_runs, recon_suspense

log = structlog.get_logger("gateway.recon")

Progress = Callable[[str, int, int | None], None]
"""``(stage, done, total)``: stages ``statements``, ``his``, ``platform``, ``match``, ``store``."""
CLASS_NAMES = tuple(c.name for c in Cls)


@dataclass
class RunSummary:
    hospital: str
    day: dt.date
    version: int
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    exceptions: dict[str, list[str]] = field(default_factory=dict)
    """Entry keys per class found by this run (``cross_day`` for the held ones)."""
    cleared: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "hospital": self.hospital,
            "day": self.day.isoformat(),
            "version": self.version,
            "status": self.status,
            "counts": self.counts,
            "totals": self.totals,
            "exceptions": self.exceptions,
            "cleared": self.cleared,
            "error": self.error,
        }


class RawRecords:
    """The records behind each side's entries, for display; a key seen twice keeps every copy."""

    def __init__(self) -> None:
        self.by_key: dict[str, Any] = {}

    def add(self, key: str, record: dict[str, Any]) -> None:
        seen = self.by_key.get(key)
        if seen is None:
            self.by_key[key] = record
        elif isinstance(seen, dict) and "copies" in seen:
            seen["copies"].append(record)
        else:
            self.by_key[key] = {"copies": [seen, record]}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.by_key.get(key)


@dataclass
class Loaded:
    sides: dict[str, Side]
    raw: dict[str, RawRecords]
    totals: dict[str, int]
    counts: dict[str, int]


def _seconds(t: dt.datetime | None, start: dt.datetime) -> int:
    if t is None:
        return 0
    s = int((t - start).total_seconds())
    return s if 0 <= s < DAY_S else 0


def _statement_row_json(row: StatementRow, merchant_id: str) -> dict[str, Any]:
    return {**row.as_json(), "merchant_id": merchant_id}


async def _next_version(db: Database, hospital: str, day: dt.date, trigger: str) -> tuple[int, int]:
    r = recon_runs.c
    async with db.write() as conn:
        current = (
            await conn.execute(sa.select(sa.func.max(r.version)).where(r.hospital_id == hospital, r.day == day))
        ).scalar()
        version = int(current or 0) + 1
        run_id = (
            await conn.execute(
                sa.insert(recon_runs)
                .values(
                    hospital_id=hospital,
                    day=day,
                    version=version,
                    trigger=trigger,
                    status="running",
                    started_at=utcnow(),
                )
                .returning(r.id)
            )
        ).scalar_one()
    return version, int(run_id)


async def _fail(db: Database, run_id: int, error: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            sa.update(recon_runs)
            .where(recon_runs.c.id == run_id)
            .values(status="failed", error=error[:4000], finished_at=utcnow())
        )


def _merchants(cfg: GatewayConfig, hospital: str) -> list[tuple[str, str]]:
    return [(m.id, m.channel) for m in cfg.merchants if m.hospital == hospital and m.enabled]


async def _load(
    db: Database,
    cfg: GatewayConfig,
    hospital: str,
    day: dt.date,
    channels: Mapping[str, Channel],
    source: ReconSource,
    progress: Progress,
) -> Loaded:
    start, end = day_bounds(day)
    sides = {"his": Side(), "platform": Side(), "channel": Side()}
    raw = {name: RawRecords() for name in sides}
    totals = {"his_fen": 0, "platform_fen": 0, "channel_fen": 0, "fee_fen": 0}
    counts = {"his_count": 0, "platform_count": 0, "channel_count": 0}

    merchants = _merchants(cfg, hospital)
    for i, (merchant_id, channel_name) in enumerate(merchants):
        if merchant_id not in channels:
            raise LookupError(f"merchant {merchant_id} has no channel in this instance: cannot fetch its statement")
        fetched = await fetch_statement(db, hospital, merchant_id, channel_name, channels[merchant_id], day)
        side, records = sides["channel"], raw["channel"]
        for row in fetched.parsed.rows:
            key = f"refund:{row.out_refund_no}" if row.type == "refund" else f"pay:{row.out_trade_no}"
            flag = SETTLED if row.status == "success" else UNSETTLED
            side.add(key, row.amount_fen, _seconds(row.time, start), flag)
            records.add(key, _statement_row_json(row, merchant_id))
            if flag:
                totals["channel_fen"] += row.amount_fen if row.type == "pay" else -row.amount_fen
        totals["fee_fen"] += fetched.parsed.fee_fen
        counts["channel_count"] += len(fetched.parsed.rows)
        progress("statements", i + 1, len(merchants))

    side, records = sides["his"], raw["his"]

    def his_progress(done: int, total: int) -> None:
        progress("his", done, total)

    async for page in pages(source, day, page_size=cfg.recon.page_size, progress=his_progress):
        refund_nos = [str(r.get("refund_no")) for r in page if r.get("kind") == "refund" and r.get("refund_no")]
        window_keys = await platform_side.window_refund_keys(db, hospital, refund_nos) if refund_nos else {}
        for record in page:
            key = entry_key(record)
            key = window_keys.get(key, key)
            t = record_time(record)
            amount = int(record["amount_fen"])
            side.add(key, amount, _seconds(t, start), SETTLED)
            records.add(key, {**record, "time": t.isoformat()})
            totals["his_fen"] += -amount if record.get("kind") == "refund" else amount
            counts["his_count"] += 1

    side, records = sides["platform"], raw["platform"]
    async for key, amount, t, flag, record in platform_side.day_entries(db, hospital, start, end):
        side.add(key, amount, _seconds(t, start), flag)
        records.add(key, record)
        if flag:
            totals["platform_fen"] += amount if key.startswith("pay:") else -amount
        counts["platform_count"] += 1
    progress("platform", counts["platform_count"], counts["platform_count"])
    return Loaded(sides, raw, totals, counts)


async def _load_pool(db: Database, hospital: str, day: dt.date) -> dict[str, tuple[suspense.PoolItem, Any]]:
    """Held items of earlier days, and those this same day resolved in an earlier version (to redo them)."""
    s = recon_suspense.c
    stmt = sa.select(recon_suspense).where(
        s.hospital_id == hospital,
        s.first_day < day,
        sa.or_(s.state == "held", s.resolved_day == day),
    )
    async with db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    out = {}
    for row in rows:
        entries = {name: tuple(v["entry"]) for name, v in row.records.items()}
        out[row.entry_key] = (suspense.PoolItem(row.entry_key, row.first_day, entries), row.records)  # type: ignore[arg-type]
    return out


async def _resolved_later(db: Database, hospital: str, day: dt.date, held: Any) -> list[str]:
    """Items this day held that a later day has since cleared or flagged: a re-run of this day leaves them be."""
    s = recon_suspense.c
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(s.entry_key).where(s.hospital_id == hospital, s.first_day == day, s.state != "held")
        )
        return [r.entry_key for r in rows if r.entry_key in held]


def _pool_records(key: str, loaded: Loaded, day_start_epoch: int) -> dict[str, Any]:
    out = {}
    for name, side in loaded.sides.items():
        entry = side.entries.get(key)
        if entry is not None:
            out[name] = {
                "entry": [entry[0], day_start_epoch + entry[1], entry[2]],
                "record": loaded.raw[name].get(key),
            }
    return out


def _detail(cls: str, amounts: dict[str, int | None], records: dict[str, Any]) -> str:
    def fmt(name: str) -> str:
        fen = amounts[name]
        return f"{name} {'none' if fen is None else f'{fen / 100:.2f}'}"

    parts = [fmt("channel"), fmt("his"), fmt("platform")]
    p = records.get("platform")
    if isinstance(p, dict) and "status" in p:
        parts.append(f"platform order {p['status']}/his {p.get('his_state')}")
    elif isinstance(p, dict) and "state" in p:
        parts.append(f"platform refund {p['state']}")
    ch = records.get("channel")
    if isinstance(ch, dict) and ch.get("status") not in (None, "success"):
        parts.append(f"channel status {ch['status']}")
    return f"{cls}: " + ", ".join(parts)


def _first(record: Any) -> dict[str, Any] | None:
    if isinstance(record, dict) and "copies" in record:
        return record["copies"][0]
    return record


def _exception_values(key: str, cls: str, loaded: Loaded) -> dict[str, Any]:
    records = {name: loaded.raw[name].get(key) for name in loaded.sides}
    amounts = {
        name: (e[0] if (e := side.entries.get(key)) is not None else None) for name, side in loaded.sides.items()
    }
    h, p, c = (_first(records[n]) or {} for n in ("his", "platform", "channel"))
    entry_type = "pay" if key.startswith("pay:") else "refund"
    ref = key.split(":", 1)[1]
    return {
        "entry_type": entry_type,
        "class": cls,
        "detail": _detail(cls, amounts, {"platform": _first(records["platform"]), "channel": c or None}),
        "channel": c.get("channel") or p.get("channel") or h.get("channel"),
        "merchant_id": c.get("merchant_id") or p.get("merchant_id"),
        "out_trade_no": ref
        if entry_type == "pay"
        else (c.get("out_trade_no") or p.get("out_trade_no") or h.get("trade_no")),
        "out_refund_no": ref if entry_type == "refund" else None,
        "channel_trade_no": c.get("channel_trade_no") or p.get("channel_trade_no") or h.get("channel_trade_no"),
        "his_trade_no": h.get("trade_no"),
        "his_receipt_no": h.get("receipt_no"),
        "his_fen": amounts["his"],
        "platform_fen": amounts["platform"],
        "channel_fen": amounts["channel"],
        "his_record": records["his"],
        "platform_record": records["platform"],
        "channel_record": records["channel"],
    }


async def _upsert_exceptions(
    conn: AsyncConnection,
    hospital: str,
    day: dt.date,
    version: int,
    found: dict[str, str],
    loaded: Loaded,
    netted: set[str],
) -> None:
    t = recon_exceptions.c
    keys = list(found)
    existing: dict[str, Any] = {}
    for i in range(0, len(keys), 500):
        stmt = sa.select(t.id, t.entry_key, t.status, t.handled_by).where(
            t.hospital_id == hospital, t.entry_key.in_(keys[i : i + 500])
        )
        existing.update({r.entry_key: r for r in await conn.execute(stmt)})
    now = utcnow()
    for key, cls in found.items():
        values = _exception_values(key, cls, loaded)
        values.update(last_version=version, last_day=day, updated_at=now)
        row = existing.get(key)
        if row is None:
            status, note = "open", None
            if key in netted:
                status, note = "handled", "auto: refunded in full by the gateway"
            await conn.execute(
                sa.insert(recon_exceptions).values(
                    hospital_id=hospital,
                    day=day,
                    first_version=version,
                    entry_key=key,
                    status=status,
                    note=note,
                    handled_by="recon" if note else None,
                    handled_at=now if note else None,
                    created_at=now,
                    **values,
                )
            )
        else:
            if row.status == "closed" and row.handled_by == "recon":
                values.update(status="open", note=None, handled_by=None, handled_at=None)
            await conn.execute(sa.update(recon_exceptions).where(t.id == row.id).values(**values))


async def _close_vanished(
    conn: AsyncConnection, hospital: str, day: dt.date, version: int, found: dict[str, str], cleared: list[str]
) -> None:
    """Open exceptions this day's earlier versions found and this one does not, and pool items that matched."""
    t = recon_exceptions.c
    now = utcnow()
    stale = (
        await conn.execute(
            sa.select(t.id, t.entry_key).where(
                t.hospital_id == hospital, t.last_day == day, t.status == "open", t.last_version < version
            )
        )
    ).all()
    gone = [r.id for r in stale if r.entry_key not in found]
    if gone:
        await conn.execute(
            sa.update(recon_exceptions)
            .where(t.id.in_(gone), t.status == "open")
            .values(status="closed", note=f"auto: matched on run v{version} of {day}", handled_by="recon",
                    handled_at=now, updated_at=now)
        )  # fmt: skip
    for i in range(0, len(cleared), 500):
        await conn.execute(
            sa.update(recon_exceptions)
            .where(t.hospital_id == hospital, t.entry_key.in_(cleared[i : i + 500]), t.status == "open")
            .values(status="closed", note=f"auto: cleared from suspense on {day}", handled_by="recon",
                    handled_at=now, updated_at=now, last_day=day, last_version=version)
        )  # fmt: skip


async def _store_pool(
    conn: AsyncConnection,
    hospital: str,
    day: dt.date,
    outcome: Outcome,
    res: suspense.Resolution,
    pool_keys: set[str],
    loaded: Loaded,
    day_start_epoch: int,
) -> None:
    s = recon_suspense.c
    now = utcnow()
    for key in res.cleared:
        await conn.execute(
            sa.update(recon_suspense)
            .where(s.hospital_id == hospital, s.entry_key == key)
            .values(state="cleared", resolved_day=day, updated_at=now)
        )
    for key in res.flagged:
        await conn.execute(
            sa.update(recon_suspense)
            .where(s.hospital_id == hospital, s.entry_key == key)
            .values(state="flagged", resolved_day=day, updated_at=now)
        )
    for key in res.kept:
        await conn.execute(
            sa.update(recon_suspense)
            .where(s.hospital_id == hospital, s.entry_key == key)
            .values(state="held", resolved_day=None, updated_at=now)
        )
    new = [k for k in outcome.held if k not in pool_keys]
    mine = (
        await conn.execute(sa.select(s.entry_key, s.state).where(s.hospital_id == hospital, s.first_day == day))
    ).all()
    resolved_later = {r.entry_key for r in mine if r.state != "held"}
    dropped = [r.entry_key for r in mine if r.state == "held" and r.entry_key not in outcome.held]
    if dropped:
        await conn.execute(
            sa.delete(recon_suspense).where(s.hospital_id == hospital, s.first_day == day, s.entry_key.in_(dropped))
        )
    held_now = {r.entry_key for r in mine if r.state == "held"}
    for key in new:
        if key in resolved_later:
            continue
        records = _pool_records(key, loaded, day_start_epoch)
        if key in held_now:
            await conn.execute(
                sa.update(recon_suspense)
                .where(s.hospital_id == hospital, s.entry_key == key)
                .values(records=records, updated_at=now)
            )
            continue
        other = (
            await conn.execute(sa.select(s.id).where(s.hospital_id == hospital, s.entry_key == key))
        ).scalar_one_or_none()
        if other is not None:
            continue
        await conn.execute(
            sa.insert(recon_suspense).values(
                hospital_id=hospital, entry_key=key, first_day=day, state="held", records=records, updated_at=now
            )
        )


async def run_day(
    db: Database,
    cfg: GatewayConfig,
    hospital: str,
    day: dt.date,
    *,
    channels: Mapping[str, Channel] | None = None,
    his: Any = None,
    source: ReconSource | None = None,
    trigger: str = "cli",
    progress: Progress | None = None,
) -> RunSummary:
    """Reconcile ``hospital``'s ``day`` as a new run version. ``channels`` by merchant id and ``his`` (a
    ``BridgeHis``) or ``source`` default to ones built from ``cfg``. Raises on a failed run after recording it."""
    owned: list[Any] = []
    try:
        if channels is None:
            from gateway.runtime import build_channel

            channels = {m.id: build_channel(m) for m in cfg.merchants if m.hospital == hospital and m.enabled}
            owned.extend(channels.values())
        if source is None:
            if his is None:
                from gateway.his import BridgeHis

                link = cfg.hospital(hospital).bridge
                if link is None:
                    raise LookupError(f"hospital {hospital} has no bridge: cannot fetch the HIS side")
                his = BridgeHis.from_config(link)
                owned.append(his)
            source = BridgeReconSource(his)
        return await _run(db, cfg, hospital, day, channels, source, trigger, progress or (lambda *_: None))
    finally:
        for resource in owned:
            closer = getattr(resource, "aclose", None) or getattr(resource, "close", None)
            if closer is not None:
                await closer()


async def _run(
    db: Database,
    cfg: GatewayConfig,
    hospital: str,
    day: dt.date,
    channels: Mapping[str, Channel],
    source: ReconSource,
    trigger: str,
    progress: Progress,
) -> RunSummary:
    version, run_id = await _next_version(db, hospital, day, trigger)
    log.info("recon_started", hospital=hospital, day=day.isoformat(), version=version)
    try:
        loaded = await _load(db, cfg, hospital, day, channels, source, progress)
        start, _ = day_bounds(day)
        day_start_epoch = int(start.timestamp())
        pool = await _load_pool(db, hospital, day)
        items = {k: item for k, (item, _) in pool.items()}
        for key, (_, stored_records) in pool.items():
            for name, v in stored_records.items():
                if key not in loaded.sides[name].entries:
                    loaded.raw[name].add(key, v.get("record") or {})
        suspense.carry(items, loaded.sides, day_start_epoch)

        his_keys = loaded.sides["his"].entries.keys() | loaded.sides["channel"].entries.keys()
        missing = [k for k in his_keys if k not in loaded.sides["platform"].entries]
        for key, amount, t, flag, record in await platform_side.lookup(db, hospital, missing):
            loaded.sides["platform"].add(key, amount, _seconds(t, start), flag)
            loaded.raw["platform"].add(key, record)

        progress("match", 0, 1)
        outcome = match(
            loaded.sides["his"],
            loaded.sides["platform"],
            loaded.sides["channel"],
            window_s=cfg.recon.cross_day_window_min * 60,
        )
        res = suspense.resolve(items, outcome, day, cfg.recon.suspense_days)
        for key in await _resolved_later(db, hospital, day, outcome.held.keys()):
            del outcome.held[key]
        progress("match", 1, 1)

        found = {k: c.name for k, c in outcome.flagged.items()}
        found.update({k: "cross_day" for k in outcome.held})
        over_pays = [k[4:] for k, c in outcome.flagged.items() if c is Cls.over_collection and k.startswith("pay:")]
        netted = {f"pay:{n}" for n in await platform_side.fully_refunded(db, hospital, over_pays)}

        counts = {name: 0 for name in CLASS_NAMES}
        for c in outcome.flagged.values():
            counts[c.name] += 1
        summary_counts = {
            **loaded.counts,
            "matched": outcome.matched,
            **counts,
            "cross_day": len(outcome.held),
            "cleared": len(res.cleared),
        }
        async with db.write() as conn:
            await _upsert_exceptions(conn, hospital, day, version, found, loaded, netted)
            await _close_vanished(conn, hospital, day, version, found, res.cleared)
            await _store_pool(conn, hospital, day, outcome, res, set(items), loaded, day_start_epoch)
            await conn.execute(
                sa.update(recon_runs)
                .where(recon_runs.c.id == run_id)
                .values(status="done", finished_at=utcnow(), **summary_counts, **loaded.totals)
            )
        progress("store", 1, 1)
    except BaseException as exc:
        await _fail(db, run_id, f"{type(exc).__name__}: {exc}")
        log.error("recon_failed", hospital=hospital, day=day.isoformat(), version=version, error=str(exc))
        raise
    by_class: dict[str, list[str]] = {}
    for key, cls in sorted(found.items()):
        by_class.setdefault(cls, []).append(key)
    log.info("recon_done", hospital=hospital, day=day.isoformat(), version=version, **summary_counts)
    return RunSummary(hospital, day, version, "done", summary_counts, loaded.totals, by_class, sorted(res.cleared))
