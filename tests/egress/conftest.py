"""Fixtures for the outbound path: channel keys made once per session, and the whole rig per test."""

from __future__ import annotations

import pytest

from tests.support.egress_rig import egress_rig, make_channel_keys


@pytest.fixture(scope="session")
def channel_keys(tmp_path_factory):
    return make_channel_keys(tmp_path_factory.mktemp("channel-keys"))


@pytest.fixture
async def rig(tmp_path, dev_certs, channel_keys, his):
    async with egress_rig(tmp_path, dev_certs, channel_keys, his) as running:
        yield running


@pytest.fixture
async def gateway_pg(postgres_server) -> str:
    """A fresh PostgreSQL database for a gateway that many writers hit at once (what production runs)."""
    import secrets

    import asyncpg

    name = f"egress_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(host="127.0.0.1", port=postgres_server.port, user="postgres", database="postgres")
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:{postgres_server.port}/{name}"
