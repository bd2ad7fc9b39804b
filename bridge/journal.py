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

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from bridge import clock as shared_clock
from bridge import group_commit
from bridge.group_commit import FileKind, GroupCommitFile

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


KIND = FileKind(
    name="journal",
    application_id=APPLICATION_ID,
    schema=_SCHEMA,
    schema_version=SCHEMA_VERSION,
    foreign=JournalCorrupt,
    unavailable=JournalUnavailable,
)


def open_file(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open the journal file, creating it if asked, and refuse anything that is not ours (or is damaged)."""
    if not create and not (Path(path).exists() and Path(path).stat().st_size > 0):
        raise JournalError(f"{path}: no journal here")
    return group_commit.open_file(path, KIND, create=create, check=True)


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
        self._clock = clock
        # A job raises only before it has written anything (a conflict is detected on a no-op insert), so the
        # journal's writes need no savepoints.
        self._file = GroupCommitFile(
            self.path, KIND, max_batch=max_batch, savepoints=False, on_commit=on_commit, on_error=on_error
        )
        self._write = self._file.write
        self._read = self._file.read

    @property
    def failing(self) -> str | None:
        """Why the last commit failed (disk full, I/O error), or None once a commit succeeds again: the writer
        thread survives a failed commit, so the journal recovers by itself when space returns."""
        return self._file.failing

    @property
    def commits(self) -> int:
        return self._file.commits

    @property
    def writer_alive(self) -> bool:
        return self._file.writer_alive

    async def open(self) -> None:
        await self._file.open(check=True)

    async def close(self) -> None:
        await self._file.close()

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
