"""One run: a new version of one hospital's day, from the three sides to stored exceptions.

The stages, in order (:func:`_run`):

1. open the run row (next version);
2. load: download, store and check every merchant's statement (a statement that does not add up fails the run
   before anything is classified); read the HIS side page by page, keeping it as the day's HIS detail; read
   the platform side in batches;
3. match the day (``engine.match``): entries whose three sides agree are done;
4. gather evidence for the rest (``evidence``): this day's observations of every unresolved key and of every
   key already waiting, what earlier runs kept of them, and — for keys new to the store — what the days
   already run say of them;
5. judge and write, in one transaction with the hospital locked so two runs of one hospital never judge on
   half of each other's evidence: the day's observations replace an earlier run's, each key gets its verdict
   (``verdicts``), and the run row its counts.

Re-running a day, or running days in any order, ends with the same verdicts: a key is judged on all its
evidence and waits ``suspense_days`` from its first observation to the latest day reconciled.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.channels.base import Channel
from gateway.config import GatewayConfig
from gateway.his import BridgeHis
from gateway.model import utcnow
from gateway.recon import evidence, his_detail, platform_side, verdicts
from gateway.recon.engine import DAY_S, SETTLED, UNSETTLED, DayOutcome, Side, match
from gateway.recon.evidence import Observation, Observations
from gateway.recon.his_side import BridgeReconSource, ReconSource, entry_key, pages, record_time
from gateway.recon.normalize import StatementRow, day_bounds
from gateway.recon.statements import CheckedStatement
from gateway.recon.statements.store import fetch as fetch_statement
from gateway.recon.verdicts import HELD, KeyEvidence, Platform, Verdict
from gateway.store.db import Database
from gateway.store.recon_tables import RECON_CLASSES, recon_exceptions, recon_runs
from gateway.store.tables import hospitals
from gateway.tenants.snapshot import Tenants

log = structlog.get_logger("gateway.recon")

Progress = Callable[[str, int, int | None], None]
"""``(stage, done, total)``: stages ``statements``, ``his``, ``platform``, ``match``, ``store``."""
ChannelBuilder = Callable[[str], Channel]
RunStarted = Callable[[int], Awaitable[None]]
"""Told the ``recon_runs`` id of a run as soon as it has one."""
WithinCommit = Callable[[AsyncConnection], Awaitable[None]]
"""Called inside the transaction that writes a run's verdicts: a scheduled run checks there that its instance
still holds the day's lease and marks the day done, in the same commit (``gateway.store.leases.complete``)."""
CLASS_NAMES = tuple(c for c in RECON_CLASSES if c != HELD)
CHANNEL_FIGURES = ("statements", "pay_count", "pay_fen", "refund_count", "refund_fen", "fee_fen")
BACKFILL_DAYS = 7
"""How far (days before and after) a key new to the evidence store is looked up in the days already run: a copy
matched there (a duplicate booking a few days apart) is found; one further away is not looked for."""


@dataclass
class RunSummary:
    hospital: str
    day: dt.date
    version: int
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    exceptions: dict[str, list[str]] = field(default_factory=dict)
    """Entry keys per class judged by this run (``cross_day`` for those still waiting for a counterpart)."""
    cleared: list[str] = field(default_factory=list)
    """Keys whose open exception this run closed because their counterpart turned up."""
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


@dataclass
class Loaded:
    """A day's three sides as compact entries (no records: those are read back only for the keys a run keeps)."""

    sides: dict[str, Side]
    totals: dict[str, int]
    counts: dict[str, int]
    start: dt.datetime
    by_channel: dict[str, dict[str, int]]
    """Per channel, what its statements of the day hold (for the console's per-channel figures)."""
    his_detail: bytes
    """The day's HIS detail as stored (gzip of JSON lines), to read records back from."""
    statements: list[tuple[str, CheckedStatement]]
    """(merchant id, statement) of the day, whose rows stream again from the stored bytes."""
    window_keys: dict[str, str]
    """The HIS's keys of window refunds (its own refund numbers) → ours."""

    async def records(self, db: Database, hospital: str, keys: set[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """The records behind ``keys`` on each side, in the order the side gave them (one per copy)."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {name: defaultdict(list) for name in self.sides}
        if not keys:
            return out
        for record in his_detail.records(self.his_detail):
            key = entry_key(record)
            key = self.window_keys.get(key, key)
            if key in keys:
                out["his"][key].append({**record, "time": record_time(record).isoformat()})
        for merchant_id, statement in self.statements:
            for row in statement.rows:
                key = evidence.statement_key(row)
                if key in keys:
                    out["channel"][key].append(_statement_row_json(row, merchant_id))
        for key, _amount, _t, _flag, record in await platform_side.lookup(db, hospital, keys):
            out["platform"][key].append(record)
        return out

    def observations(
        self, key: str, day: dt.date, records: dict[str, dict[str, list[dict[str, Any]]]]
    ) -> list[Observation]:
        """What this day's three sides say of ``key``."""
        out = []
        for name, side in self.sides.items():
            kept = records[name].get(key, [])
            for i, (amount, seconds, flag) in enumerate(side.copies(key)):
                record = kept[min(i, len(kept) - 1)] if kept else None
                out.append(Observation(name, day, amount, self.start + dt.timedelta(seconds=seconds), flag, record))
        return out


def _seconds(t: dt.datetime | None, start: dt.datetime) -> int:
    if t is None:
        return 0
    s = int((t - start).total_seconds())
    return s if 0 <= s < DAY_S else 0


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


def _merchants(tenants: Tenants, hospital: str) -> list[tuple[str, str]]:
    return [(m.id, m.channel) for m in tenants.merchants_of(hospital)]


async def _load(
    db: Database,
    cfg: GatewayConfig,
    tenants: Tenants,
    hospital: str,
    day: dt.date,
    channels: Mapping[str, Channel],
    source: ReconSource,
    progress: Progress,
) -> Loaded:
    start, end = day_bounds(day)
    sides = {"his": Side(), "platform": Side(), "channel": Side()}
    statements: list[tuple[str, CheckedStatement]] = []
    totals = {"his_fen": 0, "platform_fen": 0, "channel_fen": 0, "fee_fen": 0}
    counts = {"his_count": 0, "platform_count": 0, "channel_count": 0}
    by_channel: dict[str, dict[str, int]] = {}

    merchants = _merchants(tenants, hospital)
    for i, (merchant_id, channel_name) in enumerate(merchants):
        if merchant_id not in channels:
            raise LookupError(f"merchant {merchant_id} has no channel in this instance: cannot fetch its statement")
        fetched = await fetch_statement(db, hospital, merchant_id, channel_name, channels[merchant_id], day)
        statements.append((merchant_id, fetched.parsed))
        side = sides["channel"]
        for row in fetched.parsed.rows:
            key = evidence.statement_key(row)
            flag = SETTLED if row.status == "success" else UNSETTLED
            side.add(key, row.amount_fen, _seconds(row.time, start), flag)
            if flag:
                totals["channel_fen"] += row.amount_fen if row.type == "pay" else -row.amount_fen
        totals["fee_fen"] += fetched.parsed.fee_fen
        counts["channel_count"] += len(fetched.parsed.rows)
        figures = by_channel.setdefault(channel_name, dict.fromkeys(CHANNEL_FIGURES, 0))
        figures["statements"] += fetched.statement_id is not None
        for row in fetched.parsed.rows:
            figures[f"{row.type}_count"] += 1
            figures[f"{row.type}_fen"] += row.amount_fen
        figures["fee_fen"] += fetched.parsed.fee_fen
        progress("statements", i + 1, len(merchants))

    side = sides["his"]
    detail = his_detail.DetailWriter()
    window_keys: dict[str, str] = {}

    def his_progress(done: int, total: int) -> None:
        progress("his", done, total)

    async for page in pages(source, day, page_size=cfg.recon.page_size, progress=his_progress):
        refund_nos = [str(r.get("refund_no")) for r in page if r.get("kind") == "refund" and r.get("refund_no")]
        page_keys = await platform_side.window_refund_keys(db, hospital, refund_nos) if refund_nos else {}
        window_keys.update(page_keys)
        for record in page:
            detail.add(record)
            key = entry_key(record)
            key = page_keys.get(key, key)
            t = record_time(record)
            amount = int(record["amount_fen"])
            side.add(key, amount, _seconds(t, start), evidence.his_flag(record))
            totals["his_fen"] += -amount if record.get("kind") == "refund" else amount
            counts["his_count"] += 1
    detail_raw = await his_detail.store(db, hospital, day, detail)

    side = sides["platform"]
    async for key, amount, paid_at, flag, _record in platform_side.day_entries(db, hospital, start, end):
        side.add(key, amount, _seconds(paid_at, start), flag)
        if flag:
            totals["platform_fen"] += amount if key.startswith("pay:") else -amount
        counts["platform_count"] += 1
    progress("platform", counts["platform_count"], counts["platform_count"])
    return Loaded(sides, totals, counts, start, by_channel, detail_raw, statements, window_keys)


def _statement_row_json(row: StatementRow, merchant_id: str) -> dict[str, Any]:
    return {**row.as_json(), "merchant_id": merchant_id}


@dataclass
class Gathered:
    """The evidence a run weighs, before it is written."""

    today: Observations
    """This day's observations of every key the store must hold for it."""
    backfill: Observations
    """Other days' observations of keys entering the store now."""
    to_judge: set[str]


async def _gather(
    db: Database, cfg: GatewayConfig, hospital: str, day: dt.date, loaded: Loaded, unresolved: set[str]
) -> Gathered:
    async with db.read() as conn:
        stored = await evidence.keys_in_store(conn, hospital)
        stored_today = await evidence.keys_of_day(conn, hospital, day)
        waiting = set(
            (
                await conn.execute(
                    sa.select(recon_exceptions.c.entry_key).where(
                        recon_exceptions.c.hospital_id == hospital,
                        recon_exceptions.c.source == "recon",
                        recon_exceptions.c["class"] == HELD,
                        recon_exceptions.c.status == "open",
                    )
                )
            ).scalars()
        )
    day_keys = loaded.sides["his"].entries.keys() | loaded.sides["channel"].entries.keys()
    day_keys |= loaded.sides["platform"].entries.keys()
    keep = unresolved | (day_keys & stored)
    records = await loaded.records(db, hospital, keep)
    today = {key: loaded.observations(key, day, records) for key in keep}
    new = keep - stored
    reach = max(cfg.recon.suspense_days, BACKFILL_DAYS)
    nearby = {d for d in await evidence.run_days(db, hospital) if d != day and abs((d - day).days) <= reach}
    backfill = await evidence.backfill(db, hospital, new, nearby)
    return Gathered(today, backfill, keep | stored_today | waiting)


async def _platform_now(db: Database, hospital: str, keys: set[str]) -> dict[str, Platform]:
    out = {}
    for key, amount, _t, flag, record in await platform_side.lookup(db, hospital, keys):
        out[key] = Platform(amount, flag, record)
    return out


async def _judge_and_write(
    db: Database,
    cfg: GatewayConfig,
    hospital: str,
    day: dt.date,
    version: int,
    run_id: int,
    gathered: Gathered,
    loaded: Loaded,
    outcome: DayOutcome,
    within_commit: WithinCommit | None,
) -> tuple[verdicts.Written, dict[str, int]]:
    platform = await _platform_now(db, hospital, gathered.to_judge)
    as_of = max({day} | await evidence.run_days(db, hospital))
    async with db.write() as conn:
        await conn.execute(db.for_update(sa.select(hospitals.c.id).where(hospitals.c.id == hospital)))
        if within_commit is not None:
            await within_commit(conn)
        others = await evidence.load(conn, hospital, gathered.to_judge, except_day=day)
        merged: Observations = defaultdict(list)
        for source in (others, gathered.backfill, gathered.today):
            for key, items in source.items():
                merged[key].extend(items)
        evidence_by_key = {
            key: KeyEvidence(key, sorted(merged.get(key, []), key=lambda o: o.day), platform.get(key))
            for key in gathered.to_judge
        }
        judged: dict[str, Verdict] = {
            key: verdicts.judge(ev, as_of=as_of, suspense_days=cfg.recon.suspense_days)
            for key, ev in evidence_by_key.items()
        }
        await evidence.replace_day(conn, hospital, day, gathered.today)
        await evidence.add_days(conn, hospital, gathered.backfill)
        written = await verdicts.write(
            conn, hospital=hospital, day=day, version=version, verdicts=judged, evidence=evidence_by_key
        )
        counts = _counts(judged, gathered, loaded, outcome, written)
        await conn.execute(
            sa.update(recon_runs)
            .where(recon_runs.c.id == run_id)
            .values(status="done", finished_at=utcnow(), by_channel=loaded.by_channel, **counts, **loaded.totals)
        )
    return written, counts


def _counts(
    judged: Mapping[str, Verdict], gathered: Gathered, loaded: Loaded, outcome: DayOutcome, written: verdicts.Written
) -> dict[str, int]:
    """The run's figures for its own day's entries: matched, per class, waiting (``cross_day``), cleared. An
    entry that matched within the day but is judged otherwise on all its evidence (a copy on another day)
    counts as judged."""
    per_class = dict.fromkeys(CLASS_NAMES, 0)
    waiting = 0
    matched = outcome.matched
    for key in gathered.today:
        verdict = judged[key]
        if verdict.cls is None:
            matched += key in outcome.unresolved
            continue
        matched -= key not in outcome.unresolved
        if verdict.cls == HELD:
            waiting += 1
        else:
            per_class[verdict.cls] += 1
    return {
        **loaded.counts,
        "matched": matched,
        **per_class,
        "cross_day": waiting,
        "cleared": len(written.closed),
    }


async def run_day(
    db: Database,
    cfg: GatewayConfig,
    hospital: str,
    day: dt.date,
    *,
    channels: Mapping[str, Channel] | None = None,
    build_channel: ChannelBuilder | None = None,
    his: Any = None,
    source: ReconSource | None = None,
    trigger: str = "cli",
    progress: Progress | None = None,
    tenants: Tenants | None = None,
    on_start: RunStarted | None = None,
    within_commit: WithinCommit | None = None,
) -> RunSummary:
    """Reconcile ``hospital``'s ``day`` as a new run version. The hospital and its merchants come from
    ``tenants`` (the config's when not given). The channels come by merchant id (``channels``), or are built
    for the run by ``build_channel`` (merchant id → channel); the HIS side comes from ``source``, or ``his`` (a
    ``BridgeHis``), or the hospital's agent link. Raises on a failed run after recording it."""
    tenants = tenants if tenants is not None else Tenants.from_config(cfg)
    owned: list[Any] = []
    try:
        if channels is None:
            if build_channel is None:
                raise LookupError("reconciliation needs the merchants' channels (channels= or build_channel=)")
            channels = {m: build_channel(m) for m, _ in _merchants(tenants, hospital)}
            owned.extend(channels.values())
        if source is None:
            if his is None:
                link = tenants.hospital(hospital).bridge
                if link is None:
                    raise LookupError(f"hospital {hospital} has no bridge: cannot fetch the HIS side")
                his = BridgeHis.from_config(link)
                owned.append(his)
            source = BridgeReconSource(his)
        hooks = _Hooks(on_start, within_commit)
        return await _run(
            db, cfg, tenants, hospital, day, channels, source, trigger, progress or (lambda *_: None), hooks
        )
    finally:
        for resource in owned:
            closer = getattr(resource, "aclose", None) or getattr(resource, "close", None)
            if closer is not None:
                await closer()


@dataclass(frozen=True)
class _Hooks:
    on_start: RunStarted | None
    within_commit: WithinCommit | None


async def _run(
    db: Database,
    cfg: GatewayConfig,
    tenants: Tenants,
    hospital: str,
    day: dt.date,
    channels: Mapping[str, Channel],
    source: ReconSource,
    trigger: str,
    progress: Progress,
    hooks: _Hooks,
) -> RunSummary:
    version, run_id = await _next_version(db, hospital, day, trigger)
    log.info("recon_started", hospital=hospital, day=day.isoformat(), version=version)
    try:
        if hooks.on_start is not None:
            await hooks.on_start(run_id)
        loaded = await _load(db, cfg, tenants, hospital, day, channels, source, progress)
        progress("match", 0, 1)
        outcome = match(loaded.sides["his"], loaded.sides["platform"], loaded.sides["channel"])
        gathered = await _gather(db, cfg, hospital, day, loaded, outcome.unresolved)
        progress("match", 1, 1)
        written, counts = await _judge_and_write(
            db, cfg, hospital, day, version, run_id, gathered, loaded, outcome, hooks.within_commit
        )
        progress("store", 1, 1)
    except BaseException as exc:
        await _fail(db, run_id, f"{type(exc).__name__}: {exc}")
        log.error("recon_failed", hospital=hospital, day=day.isoformat(), version=version, error=str(exc))
        raise
    by_class: dict[str, list[str]] = {}
    for key, cls in sorted(written.found.items()):
        by_class.setdefault(cls, []).append(key)
    log.info("recon_done", hospital=hospital, day=day.isoformat(), version=version, **counts)
    return RunSummary(hospital, day, version, "done", counts, loaded.totals, by_class, sorted(written.closed))
