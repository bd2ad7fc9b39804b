"""What a demo (or a first install) prints at its end: the console's address and a login that works."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.console import auth
from gateway.console.app import console_url
from gateway.store.db import Database


@dataclass(frozen=True)
class ConsoleLogin:
    url: str
    username: str
    password: str
    role: str

    def __str__(self) -> str:
        return f"finance console: {self.url}  login: {self.username} / {self.password}  ({self.role})"


async def demo_login(
    db: Database, public_url: str, *, username: str = "finance", role: str = "admin", password: str | None = None
) -> ConsoleLogin:
    """Create ``username`` (or reset its password and role) on the gateway's database; a fresh random password
    unless one is given. ``public_url`` is the gateway's ``server.public_url`` (or the URL it listens on)."""
    password = await auth.ensure_user(db, username, role, password)
    return ConsoleLogin(console_url(public_url), username, password, role)
