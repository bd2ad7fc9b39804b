"""Console users: roles, password hashes and the login check.

Passwords are hashed with scrypt (stdlib) and a per-user salt; the parameters are stored with each hash so
they can be raised later without invalidating old ones. A login is refused for a while after repeated
failures for one user name or from one address, counted in the database so every instance agrees.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import IntEnum

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gateway.model import utcnow
from gateway.store import audit
from gateway.store.console_tables import console_login_failures, console_users
from gateway.store.db import Database

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 10
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


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


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


_DUMMY_HASH = hash_password(secrets.token_hex(8))
"""Checked against when the user does not exist, so that a wrong name costs as long as a wrong password."""


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
    hashed = await asyncio.to_thread(hash_password, password)
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
    check_new_password(password)
    hashed = await asyncio.to_thread(hash_password, password)
    async with db.write() as conn:
        done = await conn.execute(
            sa.update(console_users)
            .where(console_users.c.username == username)
            .values(password_hash=hashed, active=True, updated_at=utcnow())
        )
        if not done.rowcount:
            raise UserError(f"no user {username}")
        await audit.record(conn, actor, "console.password_set", f"user:{username}", None)


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
                sa.update(console_users).where(console_users.c.username == username).values(role=role_.name)
            )
    return password


async def _failures(db: Database, column: sa.Column[str], value: str, since: dt.datetime) -> int:
    async with db.read() as conn:
        stmt = sa.select(sa.func.count()).where(column == value, console_login_failures.c.at >= since)
        return int((await conn.execute(stmt)).scalar() or 0)


async def login(
    db: Database, username: str, password: str, ip: str, *, max_failures: int, window_s: int
) -> User | None:
    """The user if the name and password match an active user; None otherwise. Raises ``LoginThrottled``
    before checking anything once the name or the address has failed too often lately."""
    now = utcnow()
    since = now - dt.timedelta(seconds=window_s)
    username = username.strip()[:64]
    if (
        await _failures(db, console_login_failures.c.username, username, since) >= max_failures
        or await _failures(db, console_login_failures.c.ip, ip, since) >= 4 * max_failures
    ):
        raise LoginThrottled(username)
    async with db.read() as conn:
        row = (await conn.execute(sa.select(console_users).where(console_users.c.username == username))).first()
    ok = await asyncio.to_thread(verify_password, password, row.password_hash if row is not None else _DUMMY_HASH)
    if row is not None and ok and row.active:
        async with db.write() as conn:
            await conn.execute(sa.delete(console_login_failures).where(console_login_failures.c.username == username))
            await audit.record(conn, username, "console.login", f"user:{username}", {"ip": ip})
        return User(int(row.id), row.username, Role[row.role])
    async with db.write() as conn:
        await conn.execute(sa.delete(console_login_failures).where(console_login_failures.c.at < since))
        await conn.execute(sa.insert(console_login_failures).values(username=username, ip=ip[:64], at=now))
    return None
