"""A durable SQLite file with one writer thread that group-commits, and a reader beside it.

Both of the agent's journals (the HIS journal and the outbound journal) are this: SQLite in WAL mode with
``synchronous=FULL``; one thread owns the write connection, takes every write waiting in its queue (up to
``max_batch``), runs them in one transaction, fsyncs once and then answers them all — under load hundreds of
fsyncs become one without weakening the guarantee that an answered write is on disk. Reads go through a second
connection on their own thread, which WAL lets run beside the writer. A failed commit (disk full, I/O error)
fails its batch and leaves the writer running, so the file recovers by itself when space returns.

The file is marked with an ``application_id`` so that a foreign SQLite file is never adopted or replaced.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class FileKind:
    """What a file of ours is: its mark, its schema, and the errors its users expect."""

    name: str
    """As the errors say it (``journal``, ``egress journal``)."""
    application_id: int
    schema: str
    schema_version: int
    foreign: type[Exception]
    """Raised for a file that is not ours, is damaged or is newer than this agent."""
    unavailable: type[Exception]
    """Raised to writers when a commit fails or the file is not open."""


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def open_file(path: Path, kind: FileKind, *, create: bool = True, check: bool = False) -> sqlite3.Connection:
    """Open the file (creating it if asked), and refuse anything that is not ours. ``check``: run SQLite's
    quick check on an existing file."""
    path = Path(path)
    exists = path.exists() and path.stat().st_size > 0
    if not exists and not create:
        raise kind.foreign(f"{path}: no {kind.name} here")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if exists and app_id != kind.application_id:
            tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"))
            raise kind.foreign(
                f"{path} is a SQLite file but not a HIS Bridge {kind.name} (application_id={app_id:#x}, "
                f"tables={tables}); refusing to use or replace it"
            )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        if not exists:
            conn.execute(f"PRAGMA application_id = {kind.application_id}")
            conn.executescript(kind.schema)
            conn.execute(f"PRAGMA user_version = {kind.schema_version}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > kind.schema_version:
            raise kind.foreign(f"{path}: {kind.name} schema {version} is newer than this agent ({kind.schema_version})")
        result = conn.execute("PRAGMA quick_check(1)").fetchone()[0] if exists and check else "ok"
        if result != "ok":
            raise kind.foreign(f"{path}: {kind.name} is damaged: {result}")
    except sqlite3.DatabaseError as e:
        conn.close()
        raise kind.foreign(f"{path}: cannot be read as a {kind.name}: {e}") from None
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


class GroupCommitFile:
    """The writer thread, the reader and their connections. ``savepoints``: each job in its own savepoint, so a
    job that refuses after writing (a daily limit) undoes only itself; without, a job must raise only before it
    has written anything."""

    def __init__(
        self,
        path: Path,
        kind: FileKind,
        *,
        max_batch: int,
        savepoints: bool,
        on_commit: Callable[[float, int], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.kind = kind
        self.max_batch = max_batch
        self.savepoints = savepoints
        self._on_commit = on_commit
        self._on_error = on_error
        self._queue: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{kind.name.replace(' ', '-')}-read")
        self.commits = 0
        self.failing: str | None = None
        """Why the last commit failed, or None once a commit succeeds again."""

    async def open(self, *, check: bool = False) -> None:
        self._wconn = await asyncio.to_thread(open_file, self.path, self.kind, check=check)
        self._rconn = connect(self.path)
        name = f"{self.kind.name.replace(' ', '-')}-writer"
        self._writer = threading.Thread(target=self._write_loop, name=name, daemon=True)
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
        self._wconn = self._rconn = None

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the next group commit; answered once it is on disk."""
        if self._writer is None:
            raise self.kind.unavailable(f"the {self.kind.name} is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, future, loop))
        return await future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._rconn
        if conn is None:
            raise self.kind.unavailable(f"the {self.kind.name} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, conn)

    def _write_loop(self) -> None:
        conn = self._wconn
        assert conn is not None
        while True:
            first = self._queue.get()
            if isinstance(first, _Stop):
                return
            batch, stop = [first], False
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
        """One transaction and one fsync for the batch. A job's own exception answers that job only; a SQLite
        error fails the whole batch and nothing of it is kept."""
        outcomes: list[tuple[bool, Any]] = []
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                outcomes.append(self._run_job(conn, job))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            outcomes = [(False, self.kind.unavailable(f"{self.kind.name} cannot commit: {e}"))] * len(batch)
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

    def _run_job(self, conn: sqlite3.Connection, job: _Job) -> tuple[bool, Any]:
        if self.savepoints:
            conn.execute("SAVEPOINT job")
        try:
            value = job.fn(conn)
        except sqlite3.Error:
            raise
        except Exception as e:
            if self.savepoints:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            return False, e
        if self.savepoints:
            conn.execute("RELEASE job")
        return True, value


def _settle_all(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Answer a batch in its commit order with one wake-up of the loop: that order is the file's, which is what
    keeps the HIS journal's calls of one trade in arrival order."""
    for future, ok, value in settled:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
