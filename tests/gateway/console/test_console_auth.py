"""Signing in to the console: hashed passwords, a session cookie that scripts cannot read and other sites
cannot send, a server-side session stored only as a digest, CSRF on every POST, a pause after repeated
failures, logout, and the language switch."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from gateway.console import auth, sessions
from gateway.store.console_tables import console_sessions, console_users
from tests.support.console_rig import PASSWORD, ConsoleClient

pytestmark = pytest.mark.system


def test_passwords_are_salted_scrypt_hashes():
    first, second = auth.hash_password(PASSWORD), auth.hash_password(PASSWORD)
    assert first != second and first.startswith("scrypt$") and PASSWORD not in first
    assert auth.verify_password(PASSWORD, first) and auth.verify_password(PASSWORD, second)
    assert not auth.verify_password(PASSWORD + "x", first)
    assert not auth.verify_password(PASSWORD, "garbage")


async def test_pages_need_a_login(console, client_factory):
    client = await client_factory()
    async with client.session.get(client.base + "/exceptions?status=all", allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/console/login?next=%2Fconsole%2Fexceptions")
    status, text = await client.get("/")
    assert status == 200 and 'action="/console/login"' in text


async def test_login_sets_a_strict_httponly_cookie_and_stores_only_its_digest(console, client_factory):
    client = await client_factory()
    await client.get("/login")
    async with client.session.post(
        client.base + "/login",
        data={"csrf": client.csrf, "username": "clerk1", "password": PASSWORD, "next": "/console/exceptions"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console/exceptions"
        cookie = resp.cookies[sessions.COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
    async with console.db.read() as conn:
        stored = (await conn.execute(sa.select(console_sessions.c.id))).scalars().all()
        hashes = (await conn.execute(sa.select(console_users.c.password_hash))).scalars().all()
    assert stored == [hashlib.sha256(cookie.value.encode()).hexdigest()]
    assert all(h.startswith("scrypt$") for h in hashes)
    status, text = await client.get("/exceptions")
    assert status == 200 and "clerk1" in text


async def test_an_open_redirect_after_login_is_refused(console, client_factory):
    client = await client_factory()
    await client.get("/login")
    async with client.session.post(
        client.base + "/login",
        data={"csrf": client.csrf, "username": "clerk1", "password": PASSWORD, "next": "https://evil.example/"},
        allow_redirects=False,
    ) as resp:
        assert resp.headers["Location"] == "/console/"


async def test_every_post_needs_the_csrf_token(console, client_factory):
    anonymous = await client_factory()
    await anonymous.get("/login")
    status, _text, _ = await anonymous.post("/login", {"username": "clerk1", "password": PASSWORD}, csrf="forged")
    assert status == 403
    client = await client_factory("clerk1")
    status, _, _ = await client.post("/logout", {}, csrf="")
    assert status == 403
    status, _ = await client.get("/")
    assert status == 200 and "clerk1" in _


async def test_wrong_passwords_are_refused_then_the_user_is_paused(console, client_factory):
    client = await client_factory()
    limit = console.svc.cfg.console.login_max_failures
    for _ in range(limit):
        assert await client.login("clerk1", "wrong password!") == 401
    assert await client.login("clerk1") == 429
    other = await client_factory()
    assert await other.login("approver1") == 200


async def test_unknown_and_disabled_users_cannot_sign_in(console, client_factory):
    client = await client_factory()
    assert await client.login("nobody") == 401
    signed_in = await client_factory("viewer1")
    await auth.set_active(console.db, "viewer1", False)
    _status, text = await signed_in.get("/")
    assert 'action="/console/login"' in text
    assert await client.login("viewer1") == 401


async def test_logout_ends_the_session_on_the_server(console, client_factory):
    client = await client_factory("clerk1")
    token = next(c.value for c in client.session.cookie_jar if c.key == sessions.COOKIE)
    _status, _text, url = await client.post("/logout", {})
    assert url.endswith("/console/login")
    replay = ConsoleClient(console.running.url)
    try:
        replay.session.cookie_jar.update_cookies({sessions.COOKIE: token})
        async with replay.session.get(replay.base + "/", allow_redirects=False) as resp:
            assert resp.status == 303
    finally:
        await replay.close()
    async with console.db.read() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(console_sessions))).scalar() == 0


async def test_chinese_by_default_english_by_switch(console, client_factory):
    client = await client_factory("viewer1")
    status, text = await client.get("/")
    assert status == 200 and "当日概览" in text and 'lang="zh-CN"' in text
    _, text = await client.get("/", lang="en")
    assert "The day at a glance" in text and 'lang="en"' in text
    _, text = await client.get("/exceptions")
    assert "Exceptions" in text and "异常账" not in text
