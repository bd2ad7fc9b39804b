"""The durable journal: every write is committed here before it touches the HIS.

SQLite in WAL mode with ``synchronous=FULL``. One writer thread owns the write connection and group-commits:
it takes every write waiting in its queue (up to ``max_batch``), runs them in one transaction, fsyncs once and
then answers them all. Under load this turns hundreds of fsyncs into one without weakening the guarantee that
an answered write is on disk. Reads go through a second connection on their own thread, which WAL lets run
beside the writer.

The journal is never loaded whole: recovery and listings walk it by ``seq`` in bounded pages, and pruning
deletes in bounded batches.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from bridge import clock as shared_clock

APPLICATION_ID = 0x48425231  # "HBR1": marks the file as ours, so a foreign SQLite file is never adopted
SCHEMA_VERSION = 1

T = TypeVar("T")


class State(StrEnum):
    accepted = "accepted"
    in_flight = "in_flight"
    done = "done"
    failed = "failed"
    unknown = "unknown"
    quarantined = "quarantined"


TERMINAL = frozenset({State.done, State.failed})
UNFINISHED = (State.accepted, State.in_flight, State.unknown)


class JournalError(Exception):
    pass


class JournalUnavailable(JournalError):
    """The journal cannot commit (disk full, I/O error): nothing new may be accepted."""


class JournalCorrupt(JournalError):
    """The file is not a journal of ours, or is damaged; it is never silently replaced."""


class NonceReplayed(JournalError):
    """The request's nonce was already used."""


class RequestConflict(JournalError):
    """The request id is already journaled with a different operation or body."""

    def __init__(self, entry: Entry) -> None:
        super().__init__(f"request_id {entry.request_id} was already used for a different request")
        self.entry = entry


@dataclass
class Entry:
    seq: int
    request_id: str
    client_id: str
    operation: str
    business_key: str
    body_sha256: str
    params: dict[str, Any]
    state: State
    attempts: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    note: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Entry:
        return cls(
            seq=row["seq"],
            request_id=row["request_id"],
            client_id=row["client_id"],
            operation=row["operation"],
            business_key=row["business_key"],
            body_sha256=row["body_sha256"],
            params=json.loads(row["params"]),
            state=State(row["state"]),
            attempts=row["attempts"],
            result=json.loads(row["result"]) if row["result"] else None,
            error=json.loads(row["error"]) if row["error"] else None,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            next_attempt_at=row["next_attempt_at"],
            note=row["note"],
        )

    def public(self) -> dict[str, Any]:
        """The entry as the platform and operators see it."""
        return {
            "journal_id": self.seq,
            "request_id": self.request_id,
            "operation": self.operation,
            "trade_no": self.business_key,
            "state": self.state.value,
            "attempts": self.attempts,
            "result": self.result,
            "error": self.error,
            "note": self.note,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    client_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    business_key TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    note TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL
);
CREATE INDEX IF NOT EXISTS entries_state_seq ON entries(state, seq);
CREATE INDEX IF NOT EXISTS entries_key_seq ON entries(business_key, seq);
CREATE INDEX IF NOT EXISTS entries_terminal_age ON entries(updated_at) WHERE state IN ('done', 'failed');
CREATE TABLE IF NOT EXISTS nonces (
    key_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key_id, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces(expires_at);
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def open_file(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open the journal file, creating it if asked, and refuse anything that is not ours."""
    path = Path(path)
    exists = path.exists() and path.stat().st_size > 0
    if not exists and not create:
        raise JournalError(f"{path}: no journal here")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path)
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if exists and app_id != APPLICATION_ID:
            raise JournalCorrupt(
                f"{path} is a SQLite file but not a HIS Bridge journal (application_id={app_id:#x}, "
                f"tables={sorted(tables)}); refusing to use or replace it"
            )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        if not exists:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalCorrupt(f"{path}: journal schema {version} is newer than this agent ({SCHEMA_VERSION})")
        result = conn.execute("PRAGMA quick_check(1)").fetchone()[0] if exists else "ok"
        if result != "ok":
            raise JournalCorrupt(f"{path}: journal is damaged: {result}")
    except sqlite3.DatabaseError as e:
        conn.close()
        raise JournalCorrupt(f"{path}: cannot be read as a journal: {e}") from None
    except BaseException:
        conn.close()
        raise
    return conn


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class _Stop:
    pass


class Journal:
    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = 256,
        on_commit: Callable[[float, int], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        clock: Callable[[], float] = shared_clock.now,
    ) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self._on_commit = on_commit
        self._on_error = on_error
        self._clock = clock
        self._queue: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-read")
        self.commits = 0
        self.failing: str | None = None
        """Why the last commit failed (disk full, I/O error), or None once a commit succeeds again: the writer
        thread survives a failed commit, so the journal recovers by itself when space returns."""

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        self._wconn = await asyncio.to_thread(open_file, self.path)
        self._rconn = _connect(self.path)
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._writer.start()

    @property
    def writer_alive(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(_Stop())
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._reader.shutdown(wait=True)
        for conn in (self._wconn, self._rconn):
            if conn is not None:
                conn.close()

    # --- the writer ----------------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        conn = self._wconn
        assert conn is not None
        while True:
            first = self._queue.get()
            if isinstance(first, _Stop):
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Stop):
                    stop = True
                    break
                batch.append(nxt)
            self._run_batch(conn, batch)
            if stop:
                return

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        """Run a batch in one transaction and one fsync. A job raises only before it has written anything (a
        conflict is detected on a no-op insert), so a failing job needs no savepoint; a SQLite error fails
        the whole batch and nothing of it is kept."""
        outcomes: list[tuple[bool, Any]] = []
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                try:
                    outcomes.append((True, job.fn(conn)))
                except sqlite3.Error:
                    raise
                except Exception as e:
                    outcomes.append((False, e))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = JournalUnavailable(f"journal cannot commit: {e}")
            outcomes = [(False, err)] * len(batch)
            self.failing = str(e)
            if self._on_error is not None:
                self._on_error(str(e))
        else:
            self.commits += 1
            self.failing = None
            if self._on_commit is not None:
                self._on_commit(time.perf_counter() - started, len(batch))
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, settled in by_loop.items():
            loop.call_soon_threadsafe(_settle_all, settled)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            raise JournalUnavailable("journal is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, fut, loop))
        return await fut

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._rconn
        assert conn is not None
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, conn)

    # --- writes --------------------------------------------------------------------------------------------

    async def accept(
        self,
        *,
        request_id: str,
        client_id: str,
        operation: str,
        business_key: str,
        body_sha256: str,
        params: dict[str, Any],
        nonce: tuple[str, str, float] | None = None,
    ) -> tuple[Entry, bool]:
        """Journal a write, or return the entry already journaled under its request id.

        Returns ``(entry, created)``. A request id reused for a different operation or body, or by another
        client, raises :class:`RequestConflict`. ``nonce`` (key id, nonce, expiry) is remembered in the same
        commit; a replayed one raises :class:`NonceReplayed` and journals nothing.
        """
        now = self._clock()
        params_json = json.dumps(params, ensure_ascii=False, separators=(",", ":"), sort_keys=True)

        def run(conn: sqlite3.Connection) -> tuple[Entry, bool]:
            if nonce is not None and not _insert_nonce(conn, *nonce):
                raise NonceReplayed()
            row = conn.execute(
                "INSERT INTO entries(request_id, client_id, operation, business_key, body_sha256, params, state,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(request_id) DO NOTHING RETURNING *",
                (
                    request_id,
                    client_id,
                    operation,
                    business_key,
                    body_sha256,
                    params_json,
                    State.accepted.value,
                    now,
                    now,
                ),
            ).fetchone()
            if row is not None:
                return Entry.from_row(row), True
            entry = Entry.from_row(conn.execute("SELECT * FROM entries WHERE request_id = ?", (request_id,)).fetchone())
            if entry.body_sha256 != body_sha256 or entry.operation != operation or entry.client_id != client_id:
                raise RequestConflict(entry)
            return entry, False

        return await self._write(run)

    async def update(
        self,
        seq: int,
        state: State,
        *,
        expect: Iterable[State] | None = None,
        attempts_delta: int = 0,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        next_attempt_at: float | None = None,
        note: str | None = None,
        reset_attempts: bool = False,
    ) -> Entry | None:
        """Move an entry to ``state`` and return it, or None if its state is no longer one of ``expect``
        (an operator acted on it meanwhile)."""
        now = self._clock()
        expected = [s.value for s in expect] if expect is not None else None

        def run(conn: sqlite3.Connection) -> Entry | None:
            row = conn.execute(
                "UPDATE entries SET state = ?, attempts = CASE WHEN ? THEN 0 ELSE attempts + ? END,"
                " result = COALESCE(?, result), error = ?, next_attempt_at = ?, note = COALESCE(?, note),"
                " updated_at = ? WHERE seq = ?"
                + (f" AND state IN ({','.join('?' * len(expected))})" if expected else "")
                + " RETURNING *",
                (
                    state.value,
                    reset_attempts,
                    attempts_delta,
                    json.dumps(result, ensure_ascii=False) if result is not None else None,
                    json.dumps(error, ensure_ascii=False) if error is not None else None,
                    next_attempt_at,
                    note,
                    now,
                    seq,
                    *(expected or ()),
                ),
            ).fetchone()
            return Entry.from_row(row) if row is not None else None

        return await self._write(run)

    async def remember_nonce(self, key_id: str, nonce: str, expires_at: float) -> bool:
        """Record a nonce durably; False if it was seen before (a replay)."""
        return await self._write(lambda conn: _insert_nonce(conn, key_id, nonce, expires_at))

    async def prune(self, older_than: float, batch: int) -> int:
        """Delete one bounded batch of finished entries last touched before ``older_than``, and expired
        nonces; returns how many entries went."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM entries WHERE seq IN (SELECT seq FROM entries WHERE state IN ('done','failed')"
                " AND updated_at < ? LIMIT ?)",
                (older_than, batch),
            )
            conn.execute(
                "DELETE FROM nonces WHERE (key_id, nonce) IN"
                " (SELECT key_id, nonce FROM nonces WHERE expires_at < ? LIMIT ?)",
                (now, batch),
            )
            return cur.rowcount

        return await self._write(run)

    async def probe(self) -> None:
        """Commit a write that leaves nothing behind, to learn whether the journal can commit again; raises
        :class:`JournalUnavailable` while it cannot."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO nonces(key_id, nonce, expires_at) VALUES ('~probe', '~probe', 0)")
            conn.execute("DELETE FROM nonces WHERE key_id = '~probe'")

        await self._write(run)

    # --- reads ---------------------------------------------------------------------------------------------

    async def get(self, request_id: str) -> Entry | None:
        def run(conn: sqlite3.Connection) -> Entry | None:
            row = conn.execute("SELECT * FROM entries WHERE request_id = ?", (request_id,)).fetchone()
            return Entry.from_row(row) if row else None

        return await self._read(run)

    async def get_seq(self, seq: int) -> Entry | None:
        def run(conn: sqlite3.Connection) -> Entry | None:
            row = conn.execute("SELECT * FROM entries WHERE seq = ?", (seq,)).fetchone()
            return Entry.from_row(row) if row else None

        return await self._read(run)

    async def unfinished(self, page: int = 1000) -> AsyncIterator[tuple[int, str]]:
        """``(seq, business_key)`` of every accepted, in-flight or unknown entry in arrival order, read one
        page at a time and without the bodies, so that a large backlog stays cheap to walk."""
        after = 0
        states = tuple(s.value for s in UNFINISHED)
        while True:

            def run(conn: sqlite3.Connection, after: int = after) -> list[tuple[int, str]]:
                return [
                    (r[0], r[1])
                    for r in conn.execute(
                        "SELECT seq, business_key FROM entries WHERE state IN (?,?,?) AND seq > ? ORDER BY seq LIMIT ?",
                        (*states, after, page),
                    )
                ]

            rows = await self._read(run)
            for row in rows:
                yield row
            if len(rows) < page:
                return
            after = rows[-1][0]

    async def quarantined_keys(self) -> dict[str, int]:
        """Business keys held up by a quarantined entry, with that entry's seq."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT business_key, MIN(seq) AS seq FROM entries WHERE state = 'quarantined' GROUP BY business_key"
            )
            return {r["business_key"]: r["seq"] for r in rows}

        return await self._read(run)

    async def stats(self) -> tuple[dict[str, int], float | None]:
        """Entries per state, and the creation time of the oldest unfinished entry."""
        now_states = tuple(s.value for s in UNFINISHED)

        def run(conn: sqlite3.Connection) -> tuple[dict[str, int], float | None]:
            counts = {s.value: 0 for s in State}
            for row in conn.execute("SELECT state, COUNT(*) AS n FROM entries GROUP BY state"):
                counts[row["state"]] = row["n"]
            oldest = conn.execute("SELECT MIN(created_at) FROM entries WHERE state IN (?,?,?)", now_states).fetchone()[
                0
            ]
            return counts, oldest

        return await self._read(run)

    async def listing(self, state: State | None = None, *, limit: int = 50, before: int | None = None) -> list[Entry]:
        return await self._read(lambda conn: list_entries(conn, state, limit=limit, before=before))


def list_entries(conn: sqlite3.Connection, state: State | None, *, limit: int, before: int | None) -> list[Entry]:
    """Newest first, one page; shared by the agent and the offline CLI."""
    sql = "SELECT * FROM entries WHERE 1=1"
    args: list[Any] = []
    if state is not None:
        sql += " AND state = ?"
        args.append(state.value)
    if before is not None:
        sql += " AND seq < ?"
        args.append(before)
    sql += " ORDER BY seq DESC LIMIT ?"
    args.append(limit)
    return [Entry.from_row(r) for r in conn.execute(sql, args)]


def _insert_nonce(conn: sqlite3.Connection, key_id: str, nonce: str, expires_at: float) -> bool:
    cur = conn.execute(
        "INSERT INTO nonces(key_id, nonce, expires_at) VALUES (?,?,?) ON CONFLICT DO NOTHING",
        (key_id, nonce, expires_at),
    )
    return cur.rowcount == 1


def _settle_all(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Answer a batch in its commit order with one wake-up of the loop: that order is the journal's, which is
    what keeps calls of one trade in arrival order."""
    for fut, ok, value in settled:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
