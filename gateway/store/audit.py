"""The audit log: who did what to which order, refund or login. Written in the transaction of the change it
records, and tamper-evident: every row is sealed into a hash chain, each row's hash covering its content and
the hash of the row before it, so an edited, deleted or inserted row breaks the chain where it happened
(``his-gateway audit verify``).

Rows are chained by a sealer, not by the transaction that writes them. A writer that read the chain's head to
link its row would either fork the chain (two concurrent writers on PostgreSQL both see the same head) or, to
avoid that, hold a global lock from its ``record`` to its commit — across whatever else its transaction locks
next, which deadlocks with a writer waiting for that lock while holding those rows. Instead ``record`` only
inserts, and ``seal`` — one short transaction that does nothing else, serialized on PostgreSQL by an advisory
lock and on SQLite by ``BEGIN IMMEDIATE`` — gives every committed, unsealed row the next chain position in id
order. A row that commits late is sealed in a later round; its position, not its id, is its place in the
chain, and a unique index on the position makes a fork impossible even for a sealer that forgot the lock.
Each gateway instance seals every ``SEAL_INTERVAL_S``; the last sealed head is logged, so a copy of the logs
outside the database anchors the chain's end too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import utcnow
from gateway.store.db import Database
from gateway.store.tables import audit_log

log = structlog.get_logger("gateway.audit")

GENESIS = "0" * 64
SEAL_INTERVAL_S = 1.0
SEAL_BATCH = 1000
_SEAL_LOCK = 0x4842_4155_4449_5431  # pg_advisory_xact_lock key: "HBAUDIT1"


async def record(conn: AsyncConnection, actor: str, action: str, subject: str, detail: Any = None) -> None:
    await conn.execute(
        sa.insert(audit_log).values(
            at=utcnow(), actor=actor[:64], action=action[:64], subject=subject[:128], detail=detail
        )
    )


async def entries(db: Database, subject: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    stmt = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if subject is not None:
        stmt = stmt.where(audit_log.c.subject == subject)
    async with db.read() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def row_hash(prev_hash: str, chain_seq: int, row: Any) -> str:
    """The hash that seals one row: its position, id and content, after the previous row's hash."""
    content = json.dumps(
        [chain_seq, row.id, _time(row.at), row.actor, row.action, row.subject, row.detail],
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()


async def _head(conn: AsyncConnection) -> tuple[int, str]:
    stmt = (
        sa.select(audit_log.c.chain_seq, audit_log.c.row_hash)
        .where(audit_log.c.chain_seq.is_not(None))
        .order_by(audit_log.c.chain_seq.desc())
        .limit(1)
    )
    head = (await conn.execute(stmt)).first()
    return (int(head.chain_seq), head.row_hash) if head is not None else (0, GENESIS)


async def seal(db: Database, *, batch: int = SEAL_BATCH) -> tuple[int, int, str]:
    """Chain the committed rows not yet sealed, in id order; returns (rows sealed, head position, head hash).
    Looks first, outside any write transaction: most rounds find nothing and must not take the writer lock."""
    async with db.read() as conn:
        pending = (
            await conn.execute(sa.select(audit_log.c.id).where(audit_log.c.chain_seq.is_(None)).limit(1))
        ).first()
        if pending is None:
            seq, prev = await _head(conn)
            return 0, seq, prev
    async with db.write() as conn:
        if db.is_postgres:
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SEAL_LOCK)))
        seq, prev = await _head(conn)
        stmt = sa.select(audit_log).where(audit_log.c.chain_seq.is_(None)).order_by(audit_log.c.id).limit(batch)
        rows = list(await conn.execute(stmt))
        chained = []
        for row in rows:
            seq += 1
            sealed = row_hash(prev, seq, row)
            chained.append({"row_id": row.id, "seq": seq, "prev": prev, "sealed": sealed})
            prev = sealed
        if chained:
            await conn.execute(
                sa.update(audit_log)
                .where(audit_log.c.id == sa.bindparam("row_id"), audit_log.c.chain_seq.is_(None))
                .values(chain_seq=sa.bindparam("seq"), prev_hash=sa.bindparam("prev"), row_hash=sa.bindparam("sealed")),
                chained,
            )
    return len(rows), seq, prev


async def seal_all(db: Database) -> tuple[int, int, str]:
    total = 0
    while True:
        sealed, seq, head = await seal(db)
        total += sealed
        if sealed < SEAL_BATCH:
            return total, seq, head


async def seal_forever(db: Database, interval_s: float = SEAL_INTERVAL_S) -> None:
    """Seal new rows every ``interval_s``; each round that sealed something logs the new head."""
    while True:
        try:
            sealed, seq, head = await seal_all(db)
            if sealed:
                log.info("audit_sealed", rows=sealed, head_seq=seq, head_hash=head)
        except Exception:
            log.exception("audit_seal_failed")
        await asyncio.sleep(interval_s)


@dataclass(frozen=True)
class Verdict:
    rows: int
    """Sealed rows checked."""
    head_seq: int
    head_hash: str
    unsealed: int
    """Rows written but not sealed yet (sealed within a second or two while a gateway runs)."""
    broken_at: int | None = None
    """The audit row id where the chain breaks (None when intact)."""
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


async def verify(
    db: Database, *, anchor: tuple[int, str] | None = None, after: tuple[int, str] | None = None, page: int = 2000
) -> Verdict:
    """Walk the chain in position order, a page at a time, and say where it first breaks. ``anchor`` is a head
    recorded earlier (position, hash: from the logs or a previous verify): a chain rewritten from some row on
    is consistent in itself, but no longer has that hash at that position. ``after`` is the head of a prefix
    archived and removed (``gateway.retention``): the chain in the database goes on from it."""
    prev, expected, checked = (after[1], after[0] + 1, 0) if after is not None else (GENESIS, 1, 0)
    async with db.read() as conn:
        unsealed = int(
            (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(audit_log).where(audit_log.c.chain_seq.is_(None))
                )
            ).scalar()
            or 0
        )
        while True:
            stmt = (
                sa.select(audit_log)
                .where(audit_log.c.chain_seq >= expected)
                .order_by(audit_log.c.chain_seq)
                .limit(page)
            )
            rows = list(await conn.execute(stmt))
            for row in rows:
                where = Verdict(rows=checked, head_seq=expected - 1, head_hash=prev, unsealed=unsealed)
                if row.chain_seq != expected:
                    return replace(
                        where,
                        broken_at=int(row.id),
                        problem=f"chain positions {expected}..{row.chain_seq - 1} are missing before row "
                        f"{row.id}: sealed rows were deleted",
                    )
                if row.prev_hash != prev:
                    return replace(
                        where,
                        broken_at=int(row.id),
                        problem=f"row {row.id} (position {row.chain_seq}) does not follow the row before it: "
                        "its previous hash differs (a row before it was replaced)",
                    )
                if row.row_hash != row_hash(prev, expected, row):
                    return replace(
                        where,
                        broken_at=int(row.id),
                        problem=f"row {row.id} (position {row.chain_seq}) was altered after it was sealed: "
                        "its content no longer matches its hash",
                    )
                if anchor is not None and anchor[0] == expected and anchor[1] != row.row_hash:
                    return replace(
                        where,
                        broken_at=int(row.id),
                        problem=f"position {expected} (row {row.id}) has hash {row.row_hash}, not the {anchor[1]} "
                        "recorded for it: the chain was rewritten from there or before",
                    )
                prev, expected, checked = row.row_hash, expected + 1, checked + 1
            if len(rows) < page:
                if anchor is not None and anchor[0] >= expected:
                    return Verdict(
                        rows=checked,
                        head_seq=expected - 1,
                        head_hash=prev,
                        unsealed=unsealed,
                        problem=f"the chain ends at position {expected - 1}, before the recorded position "
                        f"{anchor[0]}: sealed rows were removed from its end",
                    )
                return Verdict(rows=checked, head_seq=expected - 1, head_hash=prev, unsealed=unsealed)
