"""Console users: roles, password hashes and the login check.

Passwords are hashed with scrypt (stdlib) and a per-user salt; the parameters are stored with each hash, so
old hashes keep verifying and are rehashed with today's parameters at the next successful sign-in. A sign-in is
refused for a while after repeated failures for one user name or from one address, counted in the database so
every instance agrees. Each attempt is counted *before* its password is checked, in one transaction per name
and address (PostgreSQL: advisory locks; SQLite: the writer lock), so a burst of parallel guesses gets no more
checks than the limit, and a right password inside a burst that reached it does not sign in. Sign-ins, failed
ones and throttled ones go to the audit log.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.model import utcnow
from gateway.store import audit
from gateway.store.console_tables import console_login_failures, console_sessions, console_users
from gateway.store.db import Database

T = TypeVar("T")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 10
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
"""OWASP's scrypt parameters: 128 MiB and a few hundred milliseconds per hash."""
MAX_SCRYPT_N = 2**20
_HASHER = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="scrypt")
"""Hashes run here, a few at a time: each takes 128 MiB, and a flood of sign-ins must not take the host."""


class Role(IntEnum):
    """Ordered: each role may do what the ones below it may."""

    viewer = 1
    clerk = 2
    approver = 3
    admin = 4


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: Role

    def can(self, role: Role) -> bool:
        return self.role >= role


class UserError(ValueError):
    pass


class LoginThrottled(Exception):
    pass


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=2 * 128 * n * r * p)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, 32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or not 1 < int(n) <= MAX_SCRYPT_N:
            return False
        expected = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p), len(expected))
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


def needs_rehash(stored: str) -> bool:
    """True for a hash made with weaker parameters than today's."""
    parts = stored.split("$")
    return len(parts) != 6 or parts[0] != "scrypt" or parts[1:4] != [str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P)]


async def _hashing(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_HASHER, fn, *args)


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the user does not exist, so that a wrong name costs as long as a wrong password.
    Made on first use: at 128 MiB a hash is too dear to pay on every import."""
    return hash_password(secrets.token_hex(8))


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")


def _role(value: str) -> Role:
    try:
        return Role[value]
    except KeyError:
        raise UserError(f"role must be one of {', '.join(r.name for r in Role)}") from None


async def add_user(db: Database, username: str, role: str, password: str, *, actor: str = "cli") -> User:
    if not USERNAME_RE.match(username):
        raise UserError("a user name is 2-64 of letters, digits and _ . @ -")
    role_ = _role(role)
    check_new_password(password)
    hashed = await _hashing(hash_password, password)
    now = utcnow()
    try:
        async with db.write() as conn:
            user_id = (
                await conn.execute(
                    sa.insert(console_users)
                    .values(
                        username=username,
                        role=role_.name,
                        password_hash=hashed,
                        active=True,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(console_users.c.id)
                )
            ).scalar_one()
            await audit.record(conn, actor, "console.user_added", f"user:{username}", {"after": {"role": role_.name}})
    except IntegrityError:
        raise UserError(f"user {username} exists") from None
    return User(int(user_id), username, role_)


async def set_password(db: Database, username: str, password: str, *, actor: str = "cli") -> None:
    """A new password, and every session of the user ended (whoever used the old one is signed out). It never
    enables a disabled login: that is ``set_active``'s, audited as such."""
    check_new_password(password)
    hashed = await _hashing(hash_password, password)
    async with db.write() as conn:
        user_id = (
            await conn.execute(
                sa.update(console_users)
                .where(console_users.c.username == username)
                .values(password_hash=hashed, updated_at=utcnow())
                .returning(console_users.c.id)
            )
        ).scalar()
        if user_id is None:
            raise UserError(f"no user {username}")
        ended = await conn.execute(sa.delete(console_sessions).where(console_sessions.c.user_id == user_id))
        await audit.record(conn, actor, "console.password_set", f"user:{username}", {"sessions_ended": ended.rowcount})


async def set_active(db: Database, username: str, active: bool, *, actor: str = "cli") -> None:
    """Disabling a user also ends their sessions: the session lookup requires an active user."""
    async with db.write() as conn:
        before = (
            await conn.execute(sa.select(console_users.c.active).where(console_users.c.username == username))
        ).scalar()
        if before is None:
            raise UserError(f"no user {username}")
        await conn.execute(
            sa.update(console_users)
            .where(console_users.c.username == username)
            .values(active=active, updated_at=utcnow())
        )
        await audit.record(conn, actor, "console.user_active", f"user:{username}", {"before": before, "after": active})


async def list_users(db: Database) -> list[sa.Row[object]]:
    async with db.read() as conn:
        stmt = sa.select(console_users).order_by(console_users.c.username)
        return list(await conn.execute(stmt))


async def ensure_user(db: Database, username: str, role: str, password: str | None = None) -> str:
    """Create ``username`` with ``role`` or reset its password and role; returns the password (a new random one
    unless given). For the demo and for tests: a login that works, whatever the database held before."""
    password = password or secrets.token_urlsafe(12)
    role_ = _role(role)
    try:
        await add_user(db, username, role_.name, password, actor="setup")
    except UserError:
        await set_password(db, username, password, actor="setup")
        async with db.write() as conn:
            await conn.execute(
                sa.update(console_users)
                .where(console_users.c.username == username)
                .values(role=role_.name, active=True)
            )
    return password


def _lock_key(kind: str, value: str) -> int:
    return int.from_bytes(hashlib.sha256(f"console-login:{kind}:{value}".encode()).digest()[:8], "big", signed=True)


async def _failures(conn: AsyncConnection, column: sa.Column[str], value: str, since: dt.datetime) -> int:
    stmt = sa.select(sa.func.count()).where(column == value, console_login_failures.c.at >= since)
    return int((await conn.execute(stmt)).scalar() or 0)


async def _count_attempt(db: Database, username: str, ip: str, *, max_failures: int, window_s: int) -> bool:
    """Count one attempt as a failure before its password is checked; False (and audited) once the name or the
    address has reached its limit. One transaction per name and address at a time: no burst slips through."""
    now = utcnow()
    since = now - dt.timedelta(seconds=window_s)
    async with db.write() as conn:
        if db.is_postgres:
            for key in sorted((_lock_key("user", username), _lock_key("ip", ip))):
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
        await conn.execute(sa.delete(console_login_failures).where(console_login_failures.c.at < since))
        if (
            await _failures(conn, console_login_failures.c.username, username, since) >= max_failures
            or await _failures(conn, console_login_failures.c.ip, ip, since) >= 4 * max_failures
        ):
            await audit.record(conn, username, "console.login_throttled", f"user:{username}", {"ip": ip})
            return False
        await conn.execute(sa.insert(console_login_failures).values(username=username, ip=ip, at=now))
    return True


async def login(
    db: Database, username: str, password: str, ip: str, *, max_failures: int, window_s: int
) -> User | None:
    """The user if the name and password match an active user; None otherwise. Raises ``LoginThrottled``
    without checking the password once the name or the address has failed too often lately."""
    username, ip = username.strip()[:64], ip[:64]
    if not await _count_attempt(db, username, ip, max_failures=max_failures, window_s=window_s):
        raise LoginThrottled(username)
    async with db.read() as conn:
        row = (await conn.execute(sa.select(console_users).where(console_users.c.username == username))).first()
    stored = row.password_hash if row is not None else await _hashing(_dummy_hash)
    ok = await _hashing(verify_password, password, stored)
    if row is not None and ok and row.active:
        rehashed = await _hashing(hash_password, password) if needs_rehash(row.password_hash) else None
        async with db.write() as conn:
            await conn.execute(sa.delete(console_login_failures).where(console_login_failures.c.username == username))
            if rehashed is not None:
                await conn.execute(
                    sa.update(console_users)
                    .where(console_users.c.id == row.id, console_users.c.password_hash == row.password_hash)
                    .values(password_hash=rehashed)
                )
            await audit.record(
                conn, username, "console.login", f"user:{username}", {"ip": ip, "rehashed": rehashed is not None}
            )
        return User(int(row.id), row.username, Role[row.role])
    reason = "unknown_user" if row is None else ("disabled" if ok else "wrong_password")
    async with db.write() as conn:
        await audit.record(conn, username, "console.login_failed", f"user:{username}", {"ip": ip, "reason": reason})
    return None
