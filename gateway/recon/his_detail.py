"""The HIS's daily detail (HIS 明细), kept like a channel statement: the records ``recon.fetch`` gave for one
hospital-day, as one gzip of JSON lines in page order, with its SHA-256 and counts.

Kept so that any record of the three ledgers can be shown later (not only those behind an exception), and so
that a later run can look an entry up in a day it is not re-fetching. A re-fetch that gives the same records is
the same row; a HIS that changed its mind gives a new row, and the newest is the day's detail.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import sqlalchemy as sa

from gateway.model import utcnow
from gateway.recon.his_side import entry_key
from gateway.store.db import Database
from gateway.store.recon_tables import his_details


class DetailWriter:
    """Compresses records as the pages arrive, so a day is never held twice in memory."""

    def __init__(self) -> None:
        self._gzip = zlib.compressobj(6, zlib.DEFLATED, 31)
        self._chunks: list[bytes] = []
        self._hash = hashlib.sha256()
        self.counts = {"record_count": 0, "pay_count": 0, "refund_count": 0, "pay_fen": 0, "refund_fen": 0}

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True, default=str).encode() + b"\n"
        self._hash.update(line)
        self._chunks.append(self._gzip.compress(line))
        c = self.counts
        c["record_count"] += 1
        if record.get("kind") == "refund":
            c["refund_count"] += 1
            c["refund_fen"] += int(record["amount_fen"])
        else:
            c["pay_count"] += 1
            c["pay_fen"] += int(record["amount_fen"])

    def finish(self) -> tuple[bytes, str]:
        """The gzip bytes and the SHA-256 of the records (of the JSON lines, so the same records give the same
        hash whatever the compressor does)."""
        self._chunks.append(self._gzip.flush())
        return b"".join(self._chunks), self._hash.hexdigest()


async def store(db: Database, hospital: str, day: dt.date, writer: DetailWriter) -> bytes:
    """Keep the day's detail (a re-fetch of the same records is the same row); its gzip bytes."""
    raw, digest = writer.finish()
    t = his_details.c
    async with db.write() as conn:
        existing = (
            await conn.execute(sa.select(t.id).where(t.hospital_id == hospital, t.day == day, t.sha256 == digest))
        ).scalar_one_or_none()
        if existing is not None:
            await conn.execute(sa.update(his_details).where(t.id == existing).values(fetched_at=utcnow()))
            return raw
        await conn.execute(
            sa.insert(his_details).values(
                hospital_id=hospital,
                day=day,
                raw=raw,
                sha256=digest,
                size=len(raw),
                fetched_at=utcnow(),
                **writer.counts,
            )
        )
    return raw


def records(raw: bytes) -> Iterator[dict[str, Any]]:
    """The records of a stored detail, in the order the HIS gave them."""
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


async def latest(db: Database, hospital: str, day: dt.date) -> dict[str, Any] | None:
    """The newest detail kept for a hospital-day, with its bytes."""
    t = his_details.c
    stmt = sa.select(his_details).where(t.hospital_id == hospital, t.day == day).order_by(t.id.desc()).limit(1)
    async with db.read() as conn:
        row = (await conn.execute(stmt)).first()
    return None if row is None else dict(row._mapping)


async def find(
    db: Database, hospital: str, day: dt.date, keys: Iterable[str], aliases: Mapping[str, str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The day's stored records whose entry key is one of ``keys``, with that key; ``aliases`` maps a key the HIS
    lists a record under (a window refund's own number) to ours."""
    aliases = aliases or {}
    wanted = set(keys) | set(aliases)
    detail = await latest(db, hospital, day)
    if detail is None or not wanted:
        return []
    found = []
    for record in records(detail["raw"]):
        key = entry_key(record)
        if key in wanted:
            found.append((aliases.get(key, key), record))
    return found
