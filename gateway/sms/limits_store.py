"""Counters shared by every gateway instance: fixed windows over a ``limits`` storage backend.

Redis (``sms.counters = "redis://…"``) is ``limits``' own ``RedisStorage``: an atomic increment-and-expire in
Lua. The default keeps the counters in the gateway's database instead, so that a single-instance deployment
needs nothing more than it already has; ``limits`` ships no SQL backend, hence ``SqlStorage`` below, a
``limits``-compatible storage over SQLAlchemy whose increment is one atomic upsert on SQLite and PostgreSQL
alike. Either way the layers see the same ``Counters``.

Windows are aligned on the injected clock (and, for days, on the configured time zone's midnight), and the
window's index is part of the key: the storage's expiry only cleans up, it never decides a window. That is what
lets tests and the simulator move time forward without waiting for Redis TTLs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from limits.aio.storage import RedisStorage, Storage
from sqlalchemy.dialects import postgresql, sqlite

from gateway.sms.clock import Clock, system_clock
from gateway.store.db import Database
from gateway.store.sms_tables import sms_counters

REDIS_KEY_PREFIX = "hisgateway-sms"


class SqlStorage(Storage):
    """A ``limits`` storage in the gateway's database (table ``sms_counters``). Not registered under a URI
    scheme: it is built from the gateway's ``Database``, whose pool and transactions it shares."""

    STORAGE_SCHEME = None

    def __init__(self, db: Database, clock: Clock = system_clock) -> None:
        super().__init__(uri=None, wrap_exceptions=False)
        self.db = db
        self.clock = clock

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (sa.exc.SQLAlchemyError,)

    def _upsert(self, key: str, expiry: float, amount: int, now: int) -> Any:
        insert = postgresql.insert if self.db.is_postgres else sqlite.insert
        t = sms_counters
        stmt = insert(t).values(key=key, count=amount, expires_at=math.ceil(now + expiry))
        expired = t.c.expires_at <= now
        return stmt.on_conflict_do_update(
            index_elements=[t.c.key],
            set_={
                "count": sa.case((expired, stmt.excluded.count), else_=t.c.count + stmt.excluded.count),
                "expires_at": sa.case((expired, stmt.excluded.expires_at), else_=t.c.expires_at),
            },
        ).returning(t.c.count)

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        return (await self.incr_many([(key, expiry, amount)]))[0]

    async def incr_many(self, items: Sequence[tuple[str, float, int]]) -> list[int]:
        """Several increments in one transaction: one request touches a handful of counters."""
        now = math.floor(self.clock())
        async with self.db.write() as conn:
            return [int((await conn.execute(self._upsert(k, e, a, now))).scalar_one()) for k, e, a in items]

    async def get(self, key: str) -> int:
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: Sequence[str]) -> list[int]:
        now = math.floor(self.clock())
        t = sms_counters
        async with self.db.read() as conn:
            rows = await conn.execute(sa.select(t.c.key, t.c.count).where(t.c.key.in_(keys), t.c.expires_at > now))
            found = {key: int(count) for key, count in rows}
        return [found.get(k, 0) for k in keys]

    async def get_expiry(self, key: str) -> float:
        async with self.db.read() as conn:
            expiry = await conn.scalar(sa.select(sms_counters.c.expires_at).where(sms_counters.c.key == key))
        return float(expiry) if expiry is not None else self.clock()

    async def check(self) -> bool:
        try:
            async with self.db.read() as conn:
                await conn.execute(sa.select(1))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    async def reset(self) -> int | None:
        async with self.db.write() as conn:
            return (await conn.execute(sa.delete(sms_counters))).rowcount

    async def clear(self, key: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(sa.delete(sms_counters).where(sms_counters.c.key == key))

    async def prune(self) -> int:
        """Delete expired counters; Redis does this itself."""
        async with self.db.write() as conn:
            result = await conn.execute(sa.delete(sms_counters).where(sms_counters.c.expires_at <= self.clock()))
            return result.rowcount


@dataclass(frozen=True)
class Window:
    """One counter in one aligned window: ``name`` says what is counted (layer, scope, subject)."""

    name: str
    window_s: int
    back: int = 0
    """0 for the current window, 1 for the previous one, and so on."""
    keep: int = 2
    """How many windows the counter is kept for (a week of daily history needs 8)."""
    at: float | None = None
    """The window holding this moment instead of now (an outcome counted when it happened)."""


class Counters:
    def __init__(self, storage: Storage, clock: Clock = system_clock, timezone: str = "UTC") -> None:
        self.storage = storage
        self.clock = clock
        self.tz = ZoneInfo(timezone)

    def _key(self, w: Window) -> tuple[str, int]:
        now = self.clock() if w.at is None else w.at
        offset = dt.datetime.fromtimestamp(now, self.tz).utcoffset() or dt.timedelta()
        index = math.floor((now + offset.total_seconds()) / w.window_s) - w.back
        return f"{w.name}/{w.window_s}/{index}", w.keep * w.window_s + 60

    def index(self, window_s: int) -> int:
        """The current window's number (for names that must change with the window)."""
        return int(self._key(Window("", window_s))[0].rsplit("/", 1)[1])

    async def hit(self, windows: Sequence[Window], amount: int = 1) -> list[int]:
        """Count one more in each window; returns the counts after it."""
        keys = [self._key(w) for w in windows]
        if isinstance(self.storage, SqlStorage):
            return await self.storage.incr_many([(k, e, amount) for k, e in keys])
        return list(await asyncio.gather(*(self.storage.incr(k, e, amount) for k, e in keys)))

    async def peek(self, windows: Sequence[Window]) -> list[int]:
        keys = [self._key(w)[0] for w in windows]
        if isinstance(self.storage, SqlStorage):
            return await self.storage.get_many(keys)
        return list(await asyncio.gather(*(self.storage.get(k) for k in keys)))

    async def hit_many(self, items: Sequence[tuple[Window, int]]) -> None:
        """Add a (possibly negative) amount to each window, in one transaction where the storage allows."""
        keys = [(*self._key(w), amount) for w, amount in items]
        if not keys:
            return
        if isinstance(self.storage, SqlStorage):
            await self.storage.incr_many(keys)
        else:
            await asyncio.gather(*(self.storage.incr(k, e, a) for k, e, a in keys))

    async def first(self, name: str, ttl_s: int) -> bool:
        """True only for the first caller with this name (single-use tokens)."""
        return await self.storage.incr(f"once/{name}", ttl_s) == 1

    async def close(self) -> None:
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        if client is not None:
            await client.aclose()


def build_counters(url: str, db: Database, clock: Clock, timezone: str) -> Counters:
    if url == "database":
        return Counters(SqlStorage(db, clock), clock, timezone)
    storage = RedisStorage(f"async+{url}", implementation="redispy", key_prefix=REDIS_KEY_PREFIX)
    return Counters(storage, clock, timezone)
