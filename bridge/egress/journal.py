"""The outbound journal: every terminal payment and refund is committed here before it is forwarded.

A file of its own (SQLite, WAL, ``synchronous=FULL``), apart from the HIS journal, because its entries live by
different rules: keyed on (terminal, the terminal's own request id), settled by asking the *gateway*, and
summed per terminal and day for the terminals' limits. The limit check and the insert are one transaction, so
two concurrent payments cannot both slip under a daily limit.

States::

    forwarding ─► done          the gateway answered (``answer`` is what the terminal is told)
        │   └───► failed        never reached the gateway (payments fail fast), or refused by it for good
        └► in_doubt ─► done | failed | forwarding (resent once the gateway said it has nothing)
    queued ─► forwarding        a refund waiting for the link to the cloud

One thread writes, group-committing what waits for it; reads use a second connection beside it (WAL).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from bridge import clock as shared_clock
from bridge import group_commit
from bridge.group_commit import FileKind, GroupCommitFile

APPLICATION_ID = 0x48424531  # "HBE1": an egress journal, never confused with the HIS journal
SCHEMA_VERSION = 1
T = TypeVar("T")


class EgressState(StrEnum):
    forwarding = "forwarding"
    in_doubt = "in_doubt"
    queued = "queued"
    done = "done"
    failed = "failed"


OPEN_STATES = (EgressState.forwarding, EgressState.in_doubt, EgressState.queued)


class EgressJournalError(Exception):
    pass


class EgressJournalUnavailable(EgressJournalError):
    """The journal cannot commit (disk full, I/O error): nothing new is accepted."""


class NonceReplayed(EgressJournalError):
    pass


class RequestConflict(EgressJournalError):
    def __init__(self, existing: TerminalRequest) -> None:
        super().__init__(f"request_id {existing.request_id} was already used for a different request")
        self.existing = existing


class OverDailyLimit(EgressJournalError):
    def __init__(self, used_fen: int, limit_fen: int) -> None:
        super().__init__(f"{used_fen} fen already today; the daily limit is {limit_fen} fen")
        self.used_fen = used_fen
        self.limit_fen = limit_fen


@dataclass(frozen=True)
class TerminalRequest:
    seq: int
    terminal_id: str
    request_id: str
    operation: str
    kind: str
    """``pay`` or ``refund``."""
    app: str
    """The hospital app it is forwarded as."""
    body_sha256: str
    """SHA-256 of what the terminal sent: the same request id with another body is a conflict."""
    params: dict[str, Any]
    """The body forwarded to the gateway, kept so that a resend is byte for byte the same request."""
    amount_fen: int
    day: str
    state: EgressState
    attempts: int
    answer: dict[str, Any] | None
    error: dict[str, Any] | None
    note: str | None
    sent_at: float | None
    next_attempt_at: float | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TerminalRequest:
        return cls(
            seq=row["seq"],
            terminal_id=row["terminal_id"],
            request_id=row["request_id"],
            operation=row["operation"],
            kind=row["kind"],
            app=row["app"],
            body_sha256=row["body_sha256"],
            params=json.loads(row["params"]),
            amount_fen=row["amount_fen"],
            day=row["day"],
            state=EgressState(row["state"]),
            attempts=row["attempts"],
            answer=json.loads(row["answer"]) if row["answer"] else None,
            error=json.loads(row["error"]) if row["error"] else None,
            note=row["note"],
            sent_at=row["sent_at"],
            next_attempt_at=row["next_attempt_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    @property
    def gateway_request_id(self) -> str:
        """The id the gateway knows this request by: unique per hospital app, readable by finance."""
        return f"{self.terminal_id}:{self.request_id}"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    terminal_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    kind TEXT NOT NULL,
    app TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    params TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    day TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    answer TEXT,
    error TEXT,
    note TEXT,
    sent_at REAL,
    next_attempt_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (terminal_id, request_id)
);
CREATE INDEX IF NOT EXISTS requests_open ON requests(state, next_attempt_at) WHERE state IN ('in_doubt', 'queued');
CREATE INDEX IF NOT EXISTS requests_on_the_wire ON requests(sent_at) WHERE state = 'forwarding';
CREATE INDEX IF NOT EXISTS requests_day ON requests(terminal_id, day, kind);
CREATE INDEX IF NOT EXISTS requests_finished_age ON requests(updated_at) WHERE state IN ('done', 'failed');
CREATE TABLE IF NOT EXISTS nonces (
    terminal_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (terminal_id, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces(expires_at);
"""


KIND = FileKind(
    name="egress journal",
    application_id=APPLICATION_ID,
    schema=_SCHEMA,
    schema_version=SCHEMA_VERSION,
    foreign=EgressJournalError,
    unavailable=EgressJournalUnavailable,
)


def open_file(path: Path) -> sqlite3.Connection:
    """Open (or create) the egress journal; a SQLite file that is not one is refused, never replaced."""
    return group_commit.open_file(path, KIND)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


class EgressJournal:
    def __init__(self, path: Path, *, clock: Callable[[], float] = shared_clock.now, max_batch: int = 128) -> None:
        self.path = Path(path)
        self._clock = clock
        # Each write in its own savepoint: a job that refuses (a replayed nonce, a daily limit) undoes only
        # itself. Under load a payment's two fsyncs become a fraction of one.
        self._file = GroupCommitFile(self.path, KIND, max_batch=max_batch, savepoints=True)
        self._write = self._file.write
        self._read = self._file.read

    @property
    def failing(self) -> str | None:
        return self._file.failing

    async def open(self) -> None:
        await self._file.open()

    async def close(self) -> None:
        await self._file.close()

    # --- writes --------------------------------------------------------------------------------------------

    async def accept(
        self,
        *,
        terminal_id: str,
        request_id: str,
        operation: str,
        kind: str,
        app: str,
        body_sha256: str,
        params: dict[str, Any],
        amount_fen: int,
        day: str,
        state: EgressState,
        daily_limit_fen: int | None,
        nonce: tuple[str, str, float] | None,
        answer: dict[str, Any] | None = None,
    ) -> tuple[TerminalRequest, bool]:
        """Journal a terminal request, or return the one already journaled under its request id.

        The nonce is remembered in the same commit (a replay raises :class:`NonceReplayed`). A new request that
        would take the terminal's total of its kind today past ``daily_limit_fen`` raises
        :class:`OverDailyLimit` and journals nothing; requests that failed do not count."""
        now = self._clock()
        sent_at = now if state is EgressState.forwarding else None

        def run(conn: sqlite3.Connection) -> tuple[TerminalRequest, bool]:
            if nonce is not None and not _insert_nonce(conn, *nonce):
                raise NonceReplayed()
            row = conn.execute(
                "SELECT * FROM requests WHERE terminal_id = ? AND request_id = ?", (terminal_id, request_id)
            ).fetchone()
            if row is not None:
                existing = TerminalRequest.from_row(row)
                if existing.operation != operation or existing.body_sha256 != body_sha256:
                    raise RequestConflict(existing)
                return existing, False
            if daily_limit_fen is not None:
                used = conn.execute(
                    "SELECT COALESCE(SUM(amount_fen), 0) FROM requests"
                    " WHERE terminal_id = ? AND day = ? AND kind = ? AND state != 'failed'",
                    (terminal_id, day, kind),
                ).fetchone()[0]
                if used + amount_fen > daily_limit_fen:
                    raise OverDailyLimit(int(used), daily_limit_fen)
            row = conn.execute(
                "INSERT INTO requests(terminal_id, request_id, operation, kind, app, body_sha256, params, amount_fen,"
                " day, state, answer, attempts, sent_at, next_attempt_at, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING *",
                (
                    terminal_id,
                    request_id,
                    operation,
                    kind,
                    app,
                    body_sha256,
                    _dumps(params),
                    amount_fen,
                    day,
                    state.value,
                    _dumps(answer),
                    1 if sent_at else 0,
                    sent_at,
                    None if sent_at else now,
                    now,
                    now,
                ),
            ).fetchone()
            return TerminalRequest.from_row(row), True

        return await self._write(run)

    async def remember_nonce(self, terminal_id: str, nonce: str, expires_at: float) -> bool:
        return await self._write(lambda conn: _insert_nonce(conn, terminal_id, nonce, expires_at))

    async def move(
        self,
        seq: int,
        state: EgressState,
        *,
        expect: Iterable[EgressState],
        answer: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        note: str | None = None,
        next_attempt_at: float | None = None,
        sent: bool = False,
    ) -> TerminalRequest | None:
        """Move a request to ``state`` if it is still in one of ``expect``; ``sent`` marks a new attempt on the
        wire (attempts + 1, ``sent_at`` now). None when another task moved it first."""
        now = self._clock()
        expected = [s.value for s in expect]

        def run(conn: sqlite3.Connection) -> TerminalRequest | None:
            row = conn.execute(
                "UPDATE requests SET state = ?, answer = COALESCE(?, answer), error = ?, note = COALESCE(?, note),"
                " next_attempt_at = ?, attempts = attempts + ?, sent_at = CASE WHEN ? THEN ? ELSE sent_at END,"
                f" updated_at = ? WHERE seq = ? AND state IN ({','.join('?' * len(expected))}) RETURNING *",
                (
                    state.value,
                    _dumps(answer),
                    _dumps(error),
                    note,
                    next_attempt_at,
                    1 if sent else 0,
                    sent,
                    now,
                    now,
                    seq,
                    *expected,
                ),
            ).fetchone()
            return TerminalRequest.from_row(row) if row is not None else None

        return await self._write(run)

    async def refresh_answer(self, seq: int, answer: dict[str, Any]) -> None:
        """Keep a finished request's answer current (a QR payment later paid, a refund later succeeded)."""
        now = self._clock()
        await self._write(
            lambda conn: conn.execute(
                "UPDATE requests SET answer = ?, updated_at = ? WHERE seq = ? AND state = 'done'",
                (_dumps(answer), now, seq),
            )
        )

    async def recover(self) -> int:
        """After a restart, a forward that was on the wire when the agent stopped is in doubt."""

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE requests SET state = 'in_doubt', next_attempt_at = ?, note = 'agent restarted mid-forward'"
                " WHERE state = 'forwarding'",
                (self._clock(),),
            ).rowcount

        return await self._write(run)

    async def hurry(self) -> int:
        """Make every queued or in-doubt request due now (the link to the gateway is back)."""
        now = self._clock()
        return await self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE requests SET next_attempt_at = ?"
                    " WHERE state IN ('in_doubt', 'queued') AND next_attempt_at > ?",
                    (now, now),
                ).rowcount
            )
        )

    async def prune(self, older_than: float, batch: int) -> int:
        now = self._clock()

        def run(conn: sqlite3.Connection) -> int:
            n = conn.execute(
                "DELETE FROM requests WHERE seq IN (SELECT seq FROM requests WHERE state IN ('done', 'failed')"
                " AND updated_at < ? LIMIT ?)",
                (older_than, batch),
            ).rowcount
            conn.execute(
                "DELETE FROM nonces WHERE (terminal_id, nonce) IN"
                " (SELECT terminal_id, nonce FROM nonces WHERE expires_at < ? LIMIT ?)",
                (now, batch),
            )
            return n

        return await self._write(run)

    # --- reads ---------------------------------------------------------------------------------------------

    async def get(self, terminal_id: str, request_id: str) -> TerminalRequest | None:
        def run(conn: sqlite3.Connection) -> TerminalRequest | None:
            row = conn.execute(
                "SELECT * FROM requests WHERE terminal_id = ? AND request_id = ?", (terminal_id, request_id)
            ).fetchone()
            return TerminalRequest.from_row(row) if row else None

        return await self._read(run)

    async def get_seq(self, seq: int) -> TerminalRequest | None:
        def run(conn: sqlite3.Connection) -> TerminalRequest | None:
            row = conn.execute("SELECT * FROM requests WHERE seq = ?", (seq,)).fetchone()
            return TerminalRequest.from_row(row) if row else None

        return await self._read(run)

    async def due(self, now: float, stale_before: float, limit: int = 100) -> list[int]:
        """Requests to settle now: in doubt, queued refunds whose next attempt has come, and forwards on the wire
        since before ``stale_before`` (their task died with an error; they are in doubt too)."""

        def run(conn: sqlite3.Connection) -> list[int]:
            rows = conn.execute(
                "SELECT seq FROM requests WHERE state IN ('in_doubt', 'queued') AND next_attempt_at <= ?"
                " UNION SELECT seq FROM requests WHERE state = 'forwarding' AND sent_at < ?"
                " ORDER BY seq LIMIT ?",
                (now, stale_before, limit),
            )
            return [r[0] for r in rows]

        return await self._read(run)

    async def next_due_at(self) -> float | None:
        def run(conn: sqlite3.Connection) -> float | None:
            return conn.execute(
                "SELECT MIN(next_attempt_at) FROM requests WHERE state IN ('in_doubt', 'queued')"
            ).fetchone()[0]

        return await self._read(run)

    async def stats(self) -> tuple[dict[str, int], float | None]:
        """Requests per state, and when the oldest queued refund was accepted."""

        def run(conn: sqlite3.Connection) -> tuple[dict[str, int], float | None]:
            counts = {s.value: 0 for s in EgressState}
            for row in conn.execute("SELECT state, COUNT(*) FROM requests GROUP BY state"):
                counts[row[0]] = row[1]
            oldest = conn.execute(
                "SELECT MIN(created_at) FROM requests WHERE kind = 'refund' AND state IN ('queued', 'in_doubt')"
            ).fetchone()[0]
            return counts, oldest

        return await self._read(run)

    async def of_day(self, terminal_id: str, day: str) -> list[TerminalRequest]:
        def run(conn: sqlite3.Connection) -> list[TerminalRequest]:
            rows = conn.execute(
                "SELECT * FROM requests WHERE terminal_id = ? AND day = ? ORDER BY seq", (terminal_id, day)
            )
            return [TerminalRequest.from_row(r) for r in rows]

        return await self._read(run)


def _insert_nonce(conn: sqlite3.Connection, terminal_id: str, nonce: str, expires_at: float) -> bool:
    cur = conn.execute(
        "INSERT INTO nonces(terminal_id, nonce, expires_at) VALUES (?,?,?) ON CONFLICT DO NOTHING",
        (terminal_id, nonce, expires_at),
    )
    return cur.rowcount == 1
