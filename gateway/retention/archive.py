"""Archive files: write, verify, remove, restore.

**Write.** The rows a retention kind lets go (``gateway.retention.kinds``) are read in batches by key and
written as gzip-compressed JSON lines: a header line, then per batch a marker and the batch's rows (roots
first, then the rows that go with them). A manifest — per table the rows, the key range and the totals of every
fen column, a SHA-256 over the rows' canonical text, and for the audit log the chain's first and last
positions with their hashes — is written beside the file and kept in ``archives`` with the file's SHA-256 and
size. Nothing is removed yet.

**Verify.** The file must hash to what was recorded, and its rows must add up to the manifest (and, for the
audit log, chain from the previous archive's head to its own). While the rows are still in the database, each
batch is compared row for row with the database: only then is the archive ``verified``.

**Remove.** Only a verified archive, batch by batch: in one transaction per batch the rows are read again (row
locks on PostgreSQL), compared with the file once more, and deleted — the rows that go with a root first. A
batch that changed since the archive was written is refused, and nothing of it is removed.

**Restore.** The rows of a removed archive go back, roots first; rows already present are left alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
import structlog

from gateway.model import utcnow
from gateway.retention import codec
from gateway.retention.kinds import KINDS, TABLES, Context, Root
from gateway.store import audit
from gateway.store.db import Database
from gateway.store.platform_tables import archives
from gateway.store.tables import audit_log

log = structlog.get_logger("gateway.retention")

FORMAT = "hisbridge-archive/1"
BATCH = 2000
MIN_DAYS = 30
"""No policy removes rows younger than this: refunds, exceptions and reruns of a month stay at hand."""


class ArchiveError(Exception):
    """An archive cannot be written, verified, removed or restored; the message says why."""


@dataclass
class TableFigures:
    rows: int = 0
    first: Any = None
    last: Any = None
    totals: dict[str, int] = field(default_factory=dict)

    def add(self, key: Any, values: dict[str, Any], money: list[str]) -> None:
        self.rows += 1
        self.first = key if self.first is None else min(self.first, key)
        self.last = key if self.last is None else max(self.last, key)
        for name in money:
            self.totals[name] = self.totals.get(name, 0) + int(values.get(name) or 0)

    def as_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "first": self.first, "last": self.last, "totals": self.totals}


@dataclass
class Figures:
    """What a stream of archive rows adds up to: the manifest's body."""

    tables: dict[str, TableFigures] = field(default_factory=dict)
    digest: Any = field(default_factory=hashlib.sha256)
    chain: dict[str, Any] = field(default_factory=dict)

    def add(self, table_name: str, values: dict[str, Any]) -> None:
        table = TABLES[table_name]
        figures = self.tables.setdefault(table_name, TableFigures())
        figures.add(values.get("id"), values, codec.money_columns(table))
        self.digest.update(f"{table_name}\t{codec.canonical(values)}\n".encode())
        if table_name == audit_log.name:
            seq = int(values["chain_seq"])
            if not self.chain:
                self.chain = {"first_seq": seq, "first_prev_hash": values["prev_hash"]}
            self.chain.update(head_seq=seq, head_hash=values["row_hash"])

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "tables": {name: f.as_json() for name, f in sorted(self.tables.items())},
            "rows_sha256": self.digest.hexdigest(),
        }
        if self.chain:
            body["audit_chain"] = self.chain
        return body


@dataclass(frozen=True)
class Archive:
    id: int
    kind: str
    cutoff: dt.datetime
    path: Path
    sha256: str
    size: int
    row_count: int
    manifest: dict[str, Any]
    state: str
    error: str | None
    created_at: dt.datetime
    verified_at: dt.datetime | None
    removed_at: dt.datetime | None
    restored_at: dt.datetime | None


def _archive(row: Any) -> Archive:
    return Archive(
        row.id, row.table_name, row.cutoff, Path(row.path), row.sha256, int(row.size), int(row.row_count),
        dict(row.manifest), row.state, row.error, row.created_at, row.verified_at, row.removed_at, row.restored_at,
    )  # fmt: skip


async def get(db: Database, archive_id: int) -> Archive:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(archives).where(archives.c.id == archive_id))).first()
    if row is None:
        raise ArchiveError(f"no archive {archive_id}")
    return _archive(row)


async def listing(db: Database, kind: str | None = None) -> list[Archive]:
    stmt = sa.select(archives).order_by(archives.c.id)
    if kind is not None:
        stmt = stmt.where(archives.c.table_name == kind)
    async with db.read() as conn:
        return [_archive(r) for r in await conn.execute(stmt)]


async def _set(db: Database, archive_id: int, **values: Any) -> None:
    async with db.write() as conn:
        await conn.execute(sa.update(archives).where(archives.c.id == archive_id).values(**values))


# --- writing -------------------------------------------------------------------------------------------------


async def _audit_head(db: Database, cutoff: dt.datetime) -> int:
    """The last chain position such that it and every position before it are older than the cutoff."""
    c = audit_log.c
    async with db.read() as conn:
        first_young = (
            await conn.execute(sa.select(sa.func.min(c.chain_seq)).where(c.chain_seq.is_not(None), c.at >= cutoff))
        ).scalar()
        head = (await conn.execute(sa.select(sa.func.max(c.chain_seq)).where(c.chain_seq.is_not(None)))).scalar()
    if head is None:
        return 0
    return int(first_young) - 1 if first_young is not None else int(head)


async def _batches(db: Database, root: Root, ctx: Context) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    """The root's rows in key order, a batch at a time, each with the rows that go with it (one read
    transaction per batch: a batch is a consistent picture)."""
    last: Any = None
    while True:
        stmt = sa.select(root.table).where(root.where(ctx)).order_by(root.key).limit(BATCH)
        if last is not None:
            stmt = stmt.where(root.key > last)
        async with db.read() as conn:
            rows = list(await conn.execute(stmt))
            if not rows:
                return
            batch = [(root.table.name, codec.encode(root.table, r)) for r in rows]
            ids = [r.id for r in rows]
            for dependant in root.dependants:
                t = dependant.table
                for r in await conn.execute(sa.select(t).where(t.c[dependant.column].in_(ids)).order_by(t.c.id)):
                    batch.append((t.name, codec.encode(t, r)))
        last = rows[-1]._mapping[root.order_by]
        yield batch


async def write(
    db: Database, kind: str, cutoff: dt.datetime, directory: Path, *, now: dt.datetime | None = None
) -> Archive | None:
    """Archive what ``kind`` lets go from before ``cutoff``; None when nothing is old enough."""
    if kind not in KINDS:
        raise ArchiveError(f"unknown retention kind {kind!r}; one of {', '.join(KINDS)}")
    now = now or utcnow()
    pending = [a.id for a in await listing(db, kind) if a.state in ("written", "verified")]
    if pending:
        raise ArchiveError(
            f"{kind} archive {pending[0]} is not removed yet: remove it first (his-gateway archive remove "
            f"{pending[0]}), so that no row is in two archives"
        )
    ctx = Context(cutoff, now, await _audit_head(db, cutoff) if kind == "audit" else None)
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    path = directory / f"{kind}-before-{cutoff.date().isoformat()}-{stamp}.jsonl.gz"
    partial = path.with_suffix(".partial")
    figures = Figures()
    batch_no = 0
    header = {"format": FORMAT, "kind": kind, "cutoff": cutoff.isoformat(), "written_at": now.isoformat()}
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    out = await asyncio.to_thread(gzip.open, partial, "wt", encoding="utf-8")
    try:
        await asyncio.to_thread(out.write, json.dumps(header, ensure_ascii=False) + "\n")
        for root in KINDS[kind]:
            async for batch in _batches(db, root, ctx):
                batch_no += 1
                lines = [json.dumps({"batch": batch_no, "root": root.table.name})]
                for table_name, values in batch:
                    figures.add(table_name, values)
                    lines.append(json.dumps({"t": table_name, "r": values}, ensure_ascii=False, sort_keys=True))
                await asyncio.to_thread(out.write, "\n".join(lines) + "\n")
    finally:
        await asyncio.to_thread(out.close)
    rows = sum(f.rows for f in figures.tables.values())
    if rows == 0:
        await asyncio.to_thread(partial.unlink)
        return None
    await asyncio.to_thread(_fsync, partial)
    await asyncio.to_thread(partial.rename, path)
    digest, size = await asyncio.to_thread(_file_hash, path)
    manifest = {
        **header,
        **figures.as_json(),
        "file": path.name,
        "file_sha256": digest,
        "size": size,
        "batches": batch_no,
    }
    manifest_path = path.with_name(path.name.removesuffix(".jsonl.gz") + ".manifest.json")
    text = json.dumps(manifest, ensure_ascii=False, indent=2) + "\n"
    await asyncio.to_thread(manifest_path.write_text, text, encoding="utf-8")
    async with db.write() as conn:
        archive_id = (
            await conn.execute(
                sa.insert(archives)
                .values(
                    table_name=kind, cutoff=cutoff, path=str(path), sha256=digest, size=size, row_count=rows,
                    manifest=manifest, state="written", created_at=now,
                )
                .returning(archives.c.id)
            )
        ).scalar_one()  # fmt: skip
        await audit.record(conn, "retention", "archive.written", f"archive:{archive_id}", {"kind": kind, "rows": rows})
    log.info("archive_written", id=archive_id, kind=kind, rows=rows, path=str(path), bytes=size)
    return await get(db, int(archive_id))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_hash(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# --- reading back ----------------------------------------------------------------------------------------------


@dataclass
class FileBatch:
    number: int
    root: str
    rows: list[tuple[str, dict[str, Any]]]


class _Reader:
    """An archive file read a batch at a time (in a worker thread: the event loop goes on meanwhile)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.file = gzip.open(archive.path, "rt", encoding="utf-8")  # noqa: SIM115 - closed by close()
        header = json.loads(self.file.readline())
        if header.get("format") != FORMAT or header.get("kind") != archive.kind:
            self.file.close()
            raise ArchiveError(f"archive {archive.id}: not a {archive.kind} archive of format {FORMAT}")
        self.pending: FileBatch | None = None

    def next_batch(self) -> FileBatch | None:
        for line in self.file:
            item = json.loads(line)
            if "batch" in item:
                done, self.pending = self.pending, FileBatch(int(item["batch"]), str(item["root"]), [])
                if done is not None:
                    return done
                continue
            if self.pending is None or item.get("t") not in TABLES:
                raise ArchiveError(f"archive {self.archive.id}: unexpected line {line[:80]!r}")
            self.pending.rows.append((item["t"], item["r"]))
        done, self.pending = self.pending, None
        return done

    def close(self) -> None:
        self.file.close()


async def _read(archive: Archive) -> AsyncIterator[FileBatch]:
    """The archive's batches, after checking the file is the one recorded."""
    if not await asyncio.to_thread(archive.path.is_file):
        raise ArchiveError(f"archive {archive.id}: file {archive.path} is missing")
    digest, size = await asyncio.to_thread(_file_hash, archive.path)
    if (digest, size) != (archive.sha256, archive.size):
        raise ArchiveError(
            f"archive {archive.id}: {archive.path} is not the file written (SHA-256 {digest[:16]}…, {size} bytes; "
            f"recorded {archive.sha256[:16]}…, {archive.size} bytes)"
        )
    reader = await asyncio.to_thread(_Reader, archive)
    try:
        while (batch := await asyncio.to_thread(reader.next_batch)) is not None:
            yield batch
    finally:
        await asyncio.to_thread(reader.close)


async def _previous_audit_head(db: Database, archive: Archive) -> tuple[int, str]:
    """Where the audit chain stood before this archive's first row: the genesis, or the head of the audit
    archive that ends just before it."""
    first = int(archive.manifest["audit_chain"]["first_seq"])
    if first == 1:
        return 0, audit.GENESIS
    for other in await listing(db, "audit"):
        chain = other.manifest.get("audit_chain", {})
        if other.id != archive.id and int(chain.get("head_seq", -1)) == first - 1:
            return first - 1, str(chain["head_hash"])
    raise ArchiveError(f"archive {archive.id}: no audit archive ends at position {first - 1}, where this one starts")


def _check_chain(archive: Archive, rows: list[dict[str, Any]], start: tuple[int, str]) -> None:
    seq, prev = start
    for values in rows:
        seq += 1
        row = SimpleNamespace(**codec.decode(audit_log, values))
        if row.chain_seq != seq or row.prev_hash != prev or row.row_hash != audit.row_hash(prev, seq, row):
            raise ArchiveError(
                f"archive {archive.id}: the audit chain breaks at position {row.chain_seq} (row {row.id})"
            )
        prev = row.row_hash


async def _database_rows(conn: Any, table_name: str, ids: list[Any], db: Database, *, lock: bool) -> dict[Any, str]:
    table = TABLES[table_name]
    stmt = sa.select(table).where(table.c.id.in_(ids))
    if lock:
        stmt = db.for_update(stmt)
    return {r.id: codec.canonical(codec.encode(table, r)) for r in await conn.execute(stmt)}


def _by_table(batch: FileBatch) -> dict[str, dict[Any, str]]:
    out: dict[str, dict[Any, str]] = {}
    for table_name, values in batch.rows:
        out.setdefault(table_name, {})[values["id"]] = codec.canonical(values)
    return out


async def verify(db: Database, archive_id: int) -> Archive:
    """Check the file against its record and manifest; while its rows are in the database, against them too.
    A written archive that checks out becomes ``verified``."""
    archive = await get(db, archive_id)
    figures = Figures()
    audit_rows: list[dict[str, Any]] = []
    in_database = archive.state in ("written", "verified", "restored")
    try:
        async for batch in _read(archive):
            for table_name, values in batch.rows:
                figures.add(table_name, values)
                if table_name == audit_log.name:
                    audit_rows.append(values)
            if in_database:
                async with db.read() as conn:
                    for table_name, rows in _by_table(batch).items():
                        stored = await _database_rows(conn, table_name, list(rows), db, lock=False)
                        if stored != rows:
                            differing = sorted(k for k in rows if stored.get(k) != rows[k])[:5]
                            raise ArchiveError(
                                f"archive {archive.id}: {table_name} rows {differing} differ from the database "
                                "(changed, or gone, since the archive was written)"
                            )
        body = figures.as_json()
        for key in ("tables", "rows_sha256", "audit_chain"):
            if body.get(key) != archive.manifest.get(key):
                raise ArchiveError(f"archive {archive.id}: the file's rows do not add up to its manifest ({key})")
        if audit_rows:
            _check_chain(archive, audit_rows, await _previous_audit_head(db, archive))
    except ArchiveError as e:
        await _set(db, archive.id, error=str(e)[:4000])
        raise
    if archive.state == "written":
        await _set(db, archive.id, state="verified", verified_at=utcnow(), error=None)
    else:
        await _set(db, archive.id, error=None)
    log.info("archive_verified", id=archive.id, kind=archive.kind, rows=archive.row_count)
    return await get(db, archive.id)


async def remove(db: Database, archive_id: int) -> Archive:
    """Delete the archived rows from the database; only a verified archive, and only rows unchanged since."""
    archive = await get(db, archive_id)
    if archive.state != "verified":
        raise ArchiveError(f"archive {archive.id} is {archive.state}: only a verified archive's rows are removed")
    removed = 0
    async for batch in _read(archive):
        rows = _by_table(batch)
        async with db.write() as conn:
            for table_name in rows:
                stored = await _database_rows(conn, table_name, list(rows[table_name]), db, lock=True)
                changed = sorted(k for k, text in stored.items() if rows[table_name][k] != text)[:5]
                if changed:
                    raise ArchiveError(
                        f"archive {archive.id}: {table_name} rows {changed} changed since the archive was verified; "
                        "nothing of that batch was removed (archive again)"
                    )
            for table_name in reversed(list(rows)):
                table = TABLES[table_name]
                result = await conn.execute(sa.delete(table).where(table.c.id.in_(list(rows[table_name]))))
                removed += int(result.rowcount or 0)
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            sa.update(archives).where(archives.c.id == archive.id).values(state="removed", removed_at=now, error=None)
        )
        await audit.record(conn, "retention", "archive.removed", f"archive:{archive.id}", {"rows": removed})
    log.info("archive_removed", id=archive.id, kind=archive.kind, rows=removed)
    return await get(db, archive.id)


async def restore(db: Database, archive_id: int) -> Archive:
    """Put a removed archive's rows back (roots first; rows already present are left as they are)."""
    archive = await get(db, archive_id)
    if archive.state != "removed":
        raise ArchiveError(f"archive {archive.id} is {archive.state}: only removed rows are restored")
    restored = 0
    async for batch in _read(archive):
        rows = _by_table(batch)
        async with db.write() as conn:
            for table_name, by_id in rows.items():
                table = TABLES[table_name]
                present = set(await _database_rows(conn, table_name, list(by_id), db, lock=False))
                missing = [codec.decode(table, json.loads(text)) for key, text in by_id.items() if key not in present]
                if missing:
                    await conn.execute(sa.insert(table), missing)
                    restored += len(missing)
    await _after_restore(db)
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            sa.update(archives).where(archives.c.id == archive.id).values(state="restored", restored_at=now)
        )
        await audit.record(conn, "retention", "archive.restored", f"archive:{archive.id}", {"rows": restored})
    log.info("archive_restored", id=archive.id, kind=archive.kind, rows=restored)
    return await get(db, archive.id)


async def _after_restore(db: Database) -> None:
    """On PostgreSQL, rows inserted with their own ids leave the id sequences behind: move them past the
    largest id, so new rows never collide with restored ones."""
    if not db.is_postgres:
        return
    async with db.write() as conn:
        for table in TABLES.values():
            if "id" in table.c and table.c.id.autoincrement is not False and table.c.id.primary_key:
                await conn.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table.name}), 1))"
                    )
                )


async def audit_anchor(db: Database) -> tuple[int, str] | None:
    """The head of the audit chain's removed prefix: where ``audit verify`` starts in the database."""
    heads = [
        (int(a.manifest["audit_chain"]["head_seq"]), str(a.manifest["audit_chain"]["head_hash"]))
        for a in await listing(db, "audit")
        if a.state == "removed"
    ]
    return max(heads) if heads else None


@dataclass(frozen=True)
class PolicyOutcome:
    kind: str
    archive: Archive | None
    note: str


async def run_policy(
    db: Database, kind: str, days: int, directory: Path, *, remove_rows: bool, now: dt.datetime | None = None
) -> PolicyOutcome:
    """One kind's retention: finish an archive left unverified or unremoved, then archive what is older than
    ``days``, verify it, and (with ``remove_rows``) remove it."""
    now = now or utcnow()
    if days < MIN_DAYS:
        raise ArchiveError(f"{kind}: rows are kept at least {MIN_DAYS} days (asked: {days})")
    for pending in [a for a in await listing(db, kind) if a.state in ("written", "verified")]:
        if pending.state == "written":
            try:
                await verify(db, pending.id)
            except ArchiveError as e:
                raise ArchiveError(
                    f"{e} — archive {pending.id} blocks new {kind} archives until it is dealt with"
                ) from None
        if not remove_rows:
            return PolicyOutcome(kind, await get(db, pending.id), "verified; its rows are kept (remove = false)")
        await remove(db, pending.id)
    written = await write(db, kind, now - dt.timedelta(days=days), directory, now=now)
    if written is None:
        return PolicyOutcome(kind, None, f"nothing older than {days} days to archive")
    verified = await verify(db, written.id)
    if not remove_rows:
        return PolicyOutcome(kind, verified, "written and verified; rows kept (remove = false)")
    return PolicyOutcome(kind, await remove(db, written.id), "written, verified and removed")
