"""The evidence of entries that did not match within their day (``recon_observations``): what each side said of
an entry key on each day. This replaces a suspense pool keyed on the clock: an entry waits for its counterpart
by key, for days, whatever time of day it happened, and is judged on everything any day has said of it.

One invariant keeps the judgement independent of the order in which days are run: **a key in the store has the
observations of every day that has been run**. A run adds its day's observations of every key it leaves
unresolved and of every key already in the store; a key entering the store for the first time is looked up in
the days already run (their HIS detail and statements are kept), so that a copy matched earlier on another day
is not forgotten. A re-run of a day replaces that day's observations and nothing else.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.recon import his_detail, platform_side
from gateway.recon.engine import APPLIED, SETTLED, UNSETTLED
from gateway.recon.his_side import entry_key, record_time
from gateway.recon.normalize import StatementRow
from gateway.recon.statements import parse
from gateway.store.db import Database
from gateway.store.recon_tables import recon_observations, recon_runs, statements

CHUNK = 500


@dataclass(frozen=True)
class Observation:
    side: str
    day: dt.date
    amount_fen: int
    at: dt.datetime | None
    flag: int
    record: dict[str, Any] | None


Observations = dict[str, list[Observation]]


def his_flag(record: dict[str, Any]) -> int:
    """A refund the HIS applied but has not recorded as paid out is held as ``APPLIED``, anything else it lists
    as ``SETTLED``."""
    return APPLIED if record.get("kind") == "refund" and record.get("refund_state") == "applied" else SETTLED


def of_his(record: dict[str, Any], day: dt.date) -> tuple[str, Observation]:
    t = record_time(record)
    ob = Observation("his", day, int(record["amount_fen"]), t, his_flag(record), {**record, "time": t.isoformat()})
    return entry_key(record), ob


def statement_key(row: StatementRow) -> str:
    return f"refund:{row.out_refund_no}" if row.type == "refund" else f"pay:{row.out_trade_no}"


def of_statement_row(row: StatementRow, merchant_id: str, day: dt.date) -> tuple[str, Observation]:
    flag = SETTLED if row.status == "success" else UNSETTLED
    record = {**row.as_json(), "merchant_id": merchant_id}
    return statement_key(row), Observation("channel", day, row.amount_fen, row.time, flag, record)


async def keys_in_store(conn: AsyncConnection, hospital: str) -> set[str]:
    o = recon_observations.c
    rows = await conn.execute(sa.select(o.entry_key).where(o.hospital_id == hospital).distinct())
    return {r[0] for r in rows}


async def keys_of_day(conn: AsyncConnection, hospital: str, day: dt.date) -> set[str]:
    o = recon_observations.c
    rows = await conn.execute(sa.select(o.entry_key).where(o.hospital_id == hospital, o.day == day).distinct())
    return {r[0] for r in rows}


async def load(conn: AsyncConnection, hospital: str, keys: Iterable[str], *, except_day: dt.date) -> Observations:
    """Every stored observation of these keys from days other than ``except_day``."""
    o = recon_observations.c
    out: Observations = defaultdict(list)
    wanted = list(keys)
    for i in range(0, len(wanted), CHUNK):
        stmt = (
            sa.select(recon_observations)
            .where(o.hospital_id == hospital, o.entry_key.in_(wanted[i : i + CHUNK]), o.day != except_day)
            .order_by(o.day, o.id)
        )
        for r in await conn.execute(stmt):
            out[r.entry_key].append(Observation(r.side, r.day, int(r.amount_fen), r.at, int(r.flag), r.record))
    return out


async def replace_day(conn: AsyncConnection, hospital: str, day: dt.date, observed: Observations) -> None:
    """Put ``day``'s observations in place of whatever an earlier run of that day stored."""
    o = recon_observations.c
    await conn.execute(sa.delete(recon_observations).where(o.hospital_id == hospital, o.day == day))
    await _insert(conn, hospital, observed)


async def add_days(conn: AsyncConnection, hospital: str, observed: Observations) -> None:
    """Store observations of other days (a backfill), replacing any stored meanwhile for the same key and day."""
    o = recon_observations.c
    for key, items in observed.items():
        for day in {ob.day for ob in items}:
            await conn.execute(
                sa.delete(recon_observations).where(o.hospital_id == hospital, o.entry_key == key, o.day == day)
            )
    await _insert(conn, hospital, observed)


async def _insert(conn: AsyncConnection, hospital: str, observed: Observations) -> None:
    rows = [
        {
            "hospital_id": hospital,
            "entry_key": key,
            "side": ob.side,
            "day": ob.day,
            "amount_fen": ob.amount_fen,
            "at": ob.at,
            "flag": ob.flag,
            "record": ob.record,
        }
        for key, items in observed.items()
        for ob in items
    ]
    for i in range(0, len(rows), CHUNK):
        await conn.execute(sa.insert(recon_observations), rows[i : i + CHUNK])


async def run_days(db: Database, hospital: str) -> set[dt.date]:
    """Days of this hospital that some run has reconciled."""
    r = recon_runs.c
    async with db.read() as conn:
        rows = await conn.execute(sa.select(r.day).where(r.hospital_id == hospital, r.status == "done").distinct())
        return {row[0] for row in rows}


async def backfill(db: Database, hospital: str, keys: set[str], days: Iterable[dt.date]) -> Observations:
    """What the kept HIS detail and statements of ``days`` say of ``keys``: for keys entering the store, whose
    copies on those days matched there and were not kept."""
    out: Observations = defaultdict(list)
    if not keys:
        return out
    aliases = await platform_side.his_keys_of(db, hospital, keys)
    for day in sorted(days):
        for key, record in await his_detail.find(db, hospital, day, keys, aliases):
            _, ob = of_his(record, day)
            out[key].append(ob)
        for merchant_id, channel, raw in await _statements(db, hospital, day):
            for row in parse(channel, raw).rows:
                if statement_key(row) in keys:
                    key, ob = of_statement_row(row, merchant_id, day)
                    out[key].append(ob)
    return out


async def _statements(db: Database, hospital: str, day: dt.date) -> list[tuple[str, str, bytes]]:
    """The latest parsed statement of each merchant for the day: (merchant, channel, raw)."""
    s = statements.c
    latest = (
        sa.select(sa.func.max(s.id))
        .where(s.hospital_id == hospital, s.day == day, s.status == "parsed")
        .group_by(s.merchant_id)
    )
    async with db.read() as conn:
        rows = await conn.execute(sa.select(s.merchant_id, s.channel, s.raw).where(s.id.in_(latest)))
        return [(r.merchant_id, r.channel, bytes(r.raw)) for r in rows]
