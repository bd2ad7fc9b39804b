"""Fixtures for the gateway: a database per test (SQLite file or a fresh PostgreSQL database on the session's
throwaway server), the in-memory channel, the real bridge agent over the sandbox HIS, and started gateways."""

from __future__ import annotations

import secrets

import asyncpg
import pytest

from bridge import protocol
from gateway.his import BridgeHis
from gateway.runtime import RunningGateway, start_gateway
from tests.support.gateway_rig import MERCHANT, ApiClient, gateway_config, make_keys
from tests.support.memory_channel import MemoryChannel
from tests.support.rig import make_client


async def _fresh_pg_database(port: int) -> str:
    name = f"gw_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{name}"


@pytest.fixture
async def pg_url(postgres_server) -> str:
    return await _fresh_pg_database(postgres_server.port)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'gateway.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return await _fresh_pg_database(request.getfixturevalue("postgres_server").port)


@pytest.fixture
def keys(tmp_path):
    return make_keys(tmp_path / "keys")


@pytest.fixture
def channel() -> MemoryChannel:
    return MemoryChannel()


@pytest.fixture
async def his_link(bridge, dev_certs):
    link = BridgeHis(make_client(dev_certs, bridge.api_url, retries=1, backoff_s=0.05))
    yield link
    await link.close()


@pytest.fixture
async def gateway_factory(tmp_path, keys):
    """Start gateway instances; each call may choose the database, channel, HIS link and config (with
    ``merchant_settings`` the instance builds its real channel from the config)."""
    started: list[RunningGateway] = []

    async def start(db_url: str, *, channel=None, his=None, run_workers: bool = False, **cfg_kwargs) -> RunningGateway:
        cfg = gateway_config(tmp_path, keys, db_url, **cfg_kwargs)
        built = "merchant_settings" in cfg_kwargs
        running = await start_gateway(
            cfg,
            channels=None if built else {MERCHANT: channel or MemoryChannel()},
            his={"H001": his} if his is not None else {},
            run_workers=run_workers,
        )
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        await running.stop()


@pytest.fixture
async def api_factory(keys):
    clients: list[ApiClient] = []

    def make(running: RunningGateway, key: protocol.SigningKey | None = None) -> ApiClient:
        client = ApiClient(running.url, key or keys.app, keys.gateway.public())
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
