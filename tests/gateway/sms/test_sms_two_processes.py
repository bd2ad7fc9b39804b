"""Two ``his-gateway serve`` processes on one Redis (and one PostgreSQL for the codes): the per-IP and per-phone
counters are shared, a captcha issued by one is honoured by the other and only once, and the counters are in
Redis, not in the database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from gateway.sms.captcha import sandbox_solution
from gateway.sms.keys import SmsKeys
from gateway.sms.limits_store import REDIS_KEY_PREFIX
from gateway.sms.providers import read_records
from gateway.store.db import Database
from gateway.store.sms_tables import sms_counters
from tests.support.gateway_rig import APP_ID, ApiClient
from tests.support.rig import free_port, wait_ready
from tests.support.sms_rig import SmsApp, client, write_secret

pytestmark = pytest.mark.system

LONG = 30 * 86400


def config_toml(directory: Path, keys, db_url: str, redis_url: str, port: int) -> Path:
    path = directory / f"gateway-{port}.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
[database]
url = "{db_url}"
[signing]
key = "{keys.gateway_key_path}"
[workers]
enabled = false
[logging]
level = "warning"
[[hospitals]]
id = "H001"
[[hospitals.apps]]
app_id = "{APP_ID}"
public_key = "{keys.app_pub_path}"
[sms]
enabled = true
secret_file = "{write_secret(directory)}"
counters = "{redis_url}"
[sms.provider]
record_file = "{directory / "sms-sent.jsonl"}"
[sms.defaults.phone]
resend_interval_s = 0
per_day = 2
[sms.defaults.ip]
caps = [{{ window_s = {LONG}, limit = 3 }}]
[sms.defaults.device]
enabled = false
[sms.defaults.segment]
enabled = false
[sms.defaults.known_patients]
binding = "off"
"""
    )
    return path


def spawn(config: Path, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "-c", str(config), "serve"], stdout=out, stderr=out
        )


async def test_two_processes_share_the_counters_on_one_redis(tmp_path, keys, pg_url, redis_server):
    processes: list[subprocess.Popen] = []
    apps: list[SmsApp] = []
    try:
        for _ in range(2):
            port = free_port()
            config = config_toml(tmp_path, keys, pg_url, redis_server.url, port)
            log = tmp_path / f"gateway-{port}.log"
            process = spawn(config, log)
            processes.append(process)
            url = f"http://127.0.0.1:{port}"
            await wait_ready(url, process, 60, path="/healthz", log=log)
            apps.append(SmsApp(ApiClient(url, keys.app, keys.gateway.public())))
        a, b = apps
        wifi = "100.64.7.7"

        statuses = []
        for n, app in enumerate([a, b, a, b]):
            statuses.append((await app.otp(f"1390000000{n}", client_info=client(n, ip=wifi)))[0])
        assert statuses == [200, 200, 200, 403], "the fourth request from one address, on either instance"

        status, body = await b.otp("13900000005", client_info=client(5, ip=wifi))
        assert status == 403
        challenge = body["captcha"]["challenge_id"]
        key = SmsKeys.from_file(write_secret(tmp_path)).captcha_key
        answer = {"challenge_id": challenge, "token": sandbox_solution(key, challenge)}
        assert (await a.otp("13900000005", client_info=client(5, ip=wifi), captcha=answer))[0] == 200
        assert (await b.otp("13900000005", client_info=client(5, ip=wifi), captcha=answer))[0] == 403, "used once"

        for app, n in ((a, 10), (b, 11), (a, 12)):
            assert (await app.otp("13800000000", client_info=client(n)))[0] == 200
        records = [r for r in read_records(tmp_path / "sms-sent.jsonl") if r["phone"] == "13800000000"]
        assert len(records) == 2, "the daily cap of two counts both instances' sends"
        assert len({r["code"] for r in records}) == 1, "the live code is re-sent, whichever instance sends"

        r = aioredis.from_url(redis_server.url)
        try:
            assert await r.keys(f"{REDIS_KEY_PREFIX}*")
        finally:
            await r.aclose()
        db = Database(pg_url)
        try:
            async with db.read() as conn:
                assert await conn.scalar(sa.select(sa.func.count()).select_from(sms_counters)) == 0
        finally:
            await db.close()
    finally:
        for app in apps:
            await app.api.close()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
