"""The shared counters on each backend — SQLite, PostgreSQL (the gateway's database) and Redis (``limits``'
own storage): increments are atomic under concurrency, windows follow the injected clock, single-use names
are single use. The SQL storage also works under ``limits``' own rate limiter, as a ``limits`` storage should."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest
from limits import RateLimitItemPerMinute
from limits.aio.strategies import FixedWindowRateLimiter

from gateway.sms.limits_store import SqlStorage, Window, build_counters
from gateway.store.db import Database
from gateway.store.migrate import upgrade


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def counters(request, tmp_path, clock):
    db = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    else:
        db = Database(await _db_url(request, tmp_path))
        await upgrade(db)
        url = "database"
    built = build_counters(url, db, clock, "Asia/Shanghai")  # type: ignore[arg-type]
    yield built
    await built.close()
    if db is not None:
        await db.close()


async def _db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}"
    port = request.getfixturevalue("postgres_server").port
    name = f"sms_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{name}"


def name() -> str:
    return f"t/{secrets.token_hex(6)}"


async def test_concurrent_hits_are_atomic(counters):
    key = name()
    results = await asyncio.gather(*(counters.hit([Window(key, 3600)]) for _ in range(40)))
    assert sorted(r[0] for r in results) == list(range(1, 41))
    assert await counters.peek([Window(key, 3600)]) == [40]


async def test_windows_follow_the_clock(counters, clock):
    key = name()
    assert await counters.hit([Window(key, 60), Window(key, 3600)]) == [1, 1]
    assert await counters.hit([Window(key, 60), Window(key, 3600)]) == [2, 2]
    clock.advance(60)
    assert await counters.hit([Window(key, 60), Window(key, 3600)]) == [1, 3]
    assert await counters.peek([Window(key, 60, back=1), Window(key, 60, back=2)]) == [2, 0]


async def test_single_use_names(counters):
    key = name()
    assert await counters.first(key, 60) is True
    assert await counters.first(key, 60) is False


async def test_sql_storage_serves_the_limits_rate_limiter(tmp_path, clock):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'l.sqlite3'}")
    try:
        await upgrade(db)
        storage = SqlStorage(db, clock)
        limiter = FixedWindowRateLimiter(storage)
        per_minute = RateLimitItemPerMinute(3)
        assert [await limiter.hit(per_minute, "ip", "1.2.3.4") for _ in range(4)] == [True, True, True, False]
        assert await limiter.test(per_minute, "ip", "5.6.7.8")
        stats = await limiter.get_window_stats(per_minute, "ip", "1.2.3.4")
        assert stats.remaining == 0 and stats.reset_time == pytest.approx(clock() + 60, abs=1)
        clock.advance(61)
        assert await limiter.hit(per_minute, "ip", "1.2.3.4"), "the expired window starts again"
        clock.advance(3600)
        assert await storage.prune() == 1
        assert await storage.check()
    finally:
        await db.close()
