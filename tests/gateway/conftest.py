"""Fixtures for the gateway: a database per test (SQLite file or a fresh PostgreSQL database on the session's
throwaway server), the sandbox WeChat Pay server and gateways whose real WeChat channel talks to it, the in-memory
channel (for tests that isolate the gateway), the real bridge agent over the sandbox HIS, and started gateways."""

from __future__ import annotations

import secrets

import asyncpg
import pytest

from bridge import protocol
from gateway.his import BridgeHis
from gateway.runtime import RunningGateway, start_gateway
from sandbox.channels import SandboxChannels, start_sandbox_channels
from sandbox.channels.wechat import WechatPlatform
from tests.support.channelrig import WECHAT_MCHID, SandboxAdmin, wechat_config, wechat_settings, write_wechat_trust
from tests.support.gateway_rig import MERCHANT, ApiClient, gateway_config, make_keys
from tests.support.memory_channel import MemoryChannel
from tests.support.rig import free_port, make_client


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


@pytest.fixture(scope="session")
def wechat_platform() -> WechatPlatform:
    """Generating RSA keys is slow: one WeChat Pay platform identity for the whole run."""
    return WechatPlatform.generate(WECHAT_MCHID)


@pytest.fixture
async def wechat_sandbox(tmp_path, wechat_platform):
    """The sandbox WeChat Pay server, its refunds paid out after 10 ms and its retry schedule compressed."""
    channels = await start_sandbox_channels(
        wechat=wechat_settings(platform=wechat_platform), db_path=tmp_path / "channels.sqlite3", refund_delay_s=0.01
    )
    yield channels
    await channels.close()


@pytest.fixture
async def sandbox_admin(wechat_sandbox: SandboxChannels):
    admin = SandboxAdmin(wechat_sandbox)
    yield admin
    await admin.close()


@pytest.fixture
def sandbox_gateway(gateway_factory, wechat_sandbox: SandboxChannels, tmp_path):
    """Start a gateway whose merchant is the sandbox's: the real WeChat Pay channel built from the config, and a
    real port the sandbox calls back on."""
    trust = write_wechat_trust(wechat_sandbox, tmp_path / "trust")
    settings = wechat_config(wechat_sandbox, trust).model_dump(mode="json", exclude={"channel"})

    async def start(db_url: str, *, his=None, **cfg_kwargs) -> RunningGateway:
        return await gateway_factory(db_url, his=his, port=free_port(), merchant_settings=settings, **cfg_kwargs)

    return start


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
