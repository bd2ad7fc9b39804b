"""Signing in as an attacker tried it (issue 15, items 5, 9, 12): a burst of parallel guesses gets no more
password checks than the limit, a password reset signs everyone out and never re-enables a login, passwords
are hashed at scrypt N=2**17 with old hashes still accepted and upgraded, and every sign-in, failed or
throttled, is in the audit log."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import threading
import time

import pytest
import sqlalchemy as sa

from gateway.console import auth, sessions
from gateway.store import audit
from gateway.store.console_tables import console_login_failures, console_sessions, console_users
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from gateway.store.tables import audit_log

PASSWORD = "correct horse battery"
LIMIT, WINDOW = 5, 900


@pytest.fixture
async def db(db_url):
    database = Database(db_url)
    await upgrade(database)
    await auth.add_user(database, "clerk1", "clerk", PASSWORD)
    yield database
    await database.close()


class SlowCountingCheck:
    """``verify_password`` made slow enough that every attempt of a burst is in flight at once, and counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.limit_reached = threading.Event()
        """Set once ``LIMIT`` checks have begun: each was counted first, so the allowance is used up."""
        self._lock = threading.Lock()
        real = auth.verify_password

        def check(password: str, stored: str) -> bool:
            with self._lock:
                self.calls += 1
                if self.calls >= LIMIT:
                    self.limit_reached.set()
            time.sleep(0.2)
            return real(password, stored)

        monkeypatch.setattr(auth, "verify_password", check)


async def _attempt(db: Database, password: str, ip: str = "198.51.100.7") -> str:
    try:
        user = await auth.login(db, "clerk1", password, ip, max_failures=LIMIT, window_s=WINDOW)
    except auth.LoginThrottled:
        return "throttled"
    return "signed_in" if user is not None else "refused"


async def _counted(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(console_login_failures))).scalar())


async def test_a_burst_of_60_guesses_gets_at_most_the_limit_checked(db, monkeypatch):
    checks = SlowCountingCheck(monkeypatch)
    outcomes = await asyncio.gather(*(_attempt(db, f"guess number {i}") for i in range(60)))
    assert checks.calls <= LIMIT
    assert outcomes.count("refused") == checks.calls and outcomes.count("throttled") == 60 - checks.calls
    assert await _attempt(db, PASSWORD) == "throttled"


async def test_a_right_password_inside_a_burst_that_reached_the_limit_does_not_sign_in(db, monkeypatch):
    checks = SlowCountingCheck(monkeypatch)
    burst = [asyncio.create_task(_attempt(db, f"guess number {i}")) for i in range(30)]
    assert await asyncio.to_thread(checks.limit_reached.wait, 60)  # the burst's checks are still running
    assert await _counted(db) >= LIMIT
    right = await _attempt(db, PASSWORD)
    outcomes = await asyncio.gather(*burst)
    assert right == "throttled"
    assert "signed_in" not in outcomes


async def test_failed_and_throttled_sign_ins_are_audited(db):
    for _ in range(LIMIT):
        assert await _attempt(db, "wrong password!") == "refused"
    assert await _attempt(db, PASSWORD) == "throttled"
    rows = await audit.entries(db, subject="user:clerk1")
    actions = [r["action"] for r in reversed(rows)]
    assert actions == ["console.user_added", *["console.login_failed"] * LIMIT, "console.login_throttled"]
    assert rows[0]["detail"] == {"ip": "198.51.100.7"}
    assert rows[1]["detail"] == {"ip": "198.51.100.7", "reason": "wrong_password"}


async def test_a_password_reset_ends_the_sessions_and_never_enables_a_disabled_login(db):
    user = await auth.login(db, "clerk1", PASSWORD, "198.51.100.7", max_failures=LIMIT, window_s=WINDOW)
    assert user is not None
    token, _ = await sessions.create(db, user, max_s=3600)
    assert await sessions.load(db, token, idle_s=600) is not None
    await auth.set_password(db, "clerk1", "another good password")
    assert await sessions.load(db, token, idle_s=600) is None
    async with db.read() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(console_sessions))).scalar() == 0

    await auth.set_active(db, "clerk1", False)
    await auth.set_password(db, "clerk1", "a third good password")
    async with db.read() as conn:
        active = (await conn.execute(sa.select(console_users.c.active))).scalar()
    assert active is False
    assert await _attempt(db, "a third good password") == "refused"


def _old_hash(password: str, n: int = 2**14) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=8, p=1, dklen=32)
    return f"scrypt${n}$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


async def test_passwords_are_hashed_at_n_2_17_and_old_hashes_are_upgraded_at_sign_in(db):
    async with db.read() as conn:
        stored = (await conn.execute(sa.select(console_users.c.password_hash))).scalar()
    assert stored.split("$")[1:4] == [str(2**17), "8", "1"]
    async with db.write() as conn:
        await conn.execute(sa.update(console_users).values(password_hash=_old_hash(PASSWORD)))
    assert await _attempt(db, PASSWORD) == "signed_in"
    async with db.read() as conn:
        upgraded = (await conn.execute(sa.select(console_users.c.password_hash))).scalar()
    assert upgraded.split("$")[1] == str(2**17) and auth.verify_password(PASSWORD, upgraded)
    assert await _attempt(db, PASSWORD) == "signed_in"
    async with db.read() as conn:
        last = (await conn.execute(sa.select(audit_log.c.detail).order_by(audit_log.c.id.desc()).limit(2))).all()
    assert [row.detail["rehashed"] for row in last] == [False, True]
