"""``his-gateway users``: logins for the console, with the password from a file, the environment or a prompt
(never the command line); the login then works in the console."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.console import auth
from gateway.store.db import Database
from tests.support.gateway_rig import make_keys

pytestmark = pytest.mark.system


def _his_gateway(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "-c", str(config), "users", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


async def test_users_add_list_passwd_disable(tmp_path):
    keys = make_keys(tmp_path / "keys")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[signing]\nkey = "{keys.gateway_key_path}"\n[[hospitals]]\nid = "H001"\n')
    secret = tmp_path / "pw"
    secret.write_text("a long enough secret\n")

    done = _his_gateway(config, "add", "--username", "li.kuaiji", "--role", "approver", "--password-file", str(secret))
    assert done.returncode == 0, done.stderr
    assert "a long enough secret" not in done.stdout + done.stderr
    done = _his_gateway(
        config, "add", "--username", "wang", "--role", "clerk", env={"HIS_CONSOLE_PASSWORD": "from the env!"}
    )
    assert done.returncode == 0, done.stderr
    refused = _his_gateway(config, "add", "--username", "zhao", "--role", "viewer")
    assert refused.returncode == 1 and "--password-file" in refused.stderr
    short = _his_gateway(config, "add", "--username", "qian", "--role", "viewer", env={"HIS_CONSOLE_PASSWORD": "short"})
    assert short.returncode == 1 and "at least" in short.stderr
    again = _his_gateway(config, "add", "--username", "wang", "--role", "clerk", "--password-file", str(secret))
    assert again.returncode == 1 and "exists" in again.stderr

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'var' / 'gateway.sqlite3'}")
    try:
        user = await auth.login(db, "li.kuaiji", "a long enough secret", "127.0.0.1", max_failures=5, window_s=60)
        assert user is not None and user.role == auth.Role.approver
        assert await auth.login(db, "wang", "from the env!", "127.0.0.1", max_failures=5, window_s=60) is not None
        assert _his_gateway(config, "disable", "--username", "wang").returncode == 0
        assert await auth.login(db, "wang", "from the env!", "127.0.0.1", max_failures=5, window_s=60) is None
        listed = _his_gateway(config, "list").stdout.splitlines()
        assert listed == ["li.kuaiji\tapprover\tactive", "wang\tclerk\tdisabled"]
        assert (
            _his_gateway(
                config, "passwd", "--username", "wang", env={"HIS_CONSOLE_PASSWORD": "a new one, long"}
            ).returncode
            == 0
        )
        # a new password never re-enables a disabled login (issue 15): that takes `enable`, audited as such
        assert await auth.login(db, "wang", "a new one, long", "127.0.0.1", max_failures=5, window_s=60) is None
        assert _his_gateway(config, "enable", "--username", "wang").returncode == 0
        assert await auth.login(db, "wang", "a new one, long", "127.0.0.1", max_failures=5, window_s=60) is not None
    finally:
        await db.close()


async def test_the_demo_login_works_whatever_the_database_held(console, client_factory):
    password = await auth.ensure_user(console.db, "demo", "admin")
    again = await auth.ensure_user(console.db, "demo", "admin")
    assert password != again
    client = await client_factory()
    assert await client.login("demo", password) == 401
    assert await client.login("demo", again) == 200


async def test_the_demo_prints_an_address_and_a_login_that_work(console, client_factory):
    from gateway.console.demo import demo_login

    login = await demo_login(console.db, console.running.url)
    assert login.url == console.running.url + "/console/" and login.password in str(login)
    client = await client_factory()
    assert await client.login(login.username, login.password) == 200
    status, text = await client.get("/")
    assert status == 200 and "管理员" in text
