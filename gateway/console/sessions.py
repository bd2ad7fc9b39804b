"""Console sessions: a random token in an HttpOnly, SameSite=Strict cookie; the server keeps only its SHA-256,
with the session's CSRF token, an idle timeout and an absolute expiry. Stored in the database, so a session
works on every gateway instance and survives a restart."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from gateway.console.auth import Role, User
from gateway.model import utcnow
from gateway.store.console_tables import console_sessions, console_users
from gateway.store.db import Database

COOKIE = "hb_console"
TOUCH_EVERY_S = 60
"""``last_seen_at`` is written at most this often, so that reading pages does not mean a write per request."""


@dataclass(frozen=True)
class Session:
    id: str
    user: User
    csrf_token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create(db: Database, user: User, *, max_s: int) -> tuple[str, Session]:
    """A new session for ``user``; returns the cookie's token (shown once, never stored) and the session."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session = Session(_digest(token), user, secrets.token_urlsafe(32))
    async with db.write() as conn:
        await conn.execute(sa.delete(console_sessions).where(console_sessions.c.expires_at < now))
        await conn.execute(
            sa.insert(console_sessions).values(
                id=session.id,
                user_id=user.id,
                csrf_token=session.csrf_token,
                created_at=now,
                last_seen_at=now,
                expires_at=now + dt.timedelta(seconds=max_s),
            )
        )
    return token, session


async def load(db: Database, token: str, *, idle_s: int) -> Session | None:
    """The live session behind a cookie token: not expired, not idle too long, its user still active."""
    if not token or len(token) > 100:
        return None
    now = utcnow()
    stmt = (
        sa.select(console_sessions, console_users.c.username, console_users.c.role)
        .join(console_users, console_users.c.id == console_sessions.c.user_id)
        .where(console_sessions.c.id == _digest(token), console_users.c.active.is_(True))
    )
    async with db.read() as conn:
        row = (await conn.execute(stmt)).first()
    if row is None or row.expires_at <= now or row.last_seen_at + dt.timedelta(seconds=idle_s) <= now:
        return None
    if (now - row.last_seen_at).total_seconds() >= TOUCH_EVERY_S:
        async with db.write() as conn:
            await conn.execute(
                sa.update(console_sessions).where(console_sessions.c.id == row.id).values(last_seen_at=now)
            )
    return Session(row.id, User(int(row.user_id), row.username, Role[row.role]), row.csrf_token)


async def end(db: Database, session_id: str) -> None:
    async with db.write() as conn:
        await conn.execute(sa.delete(console_sessions).where(console_sessions.c.id == session_id))
