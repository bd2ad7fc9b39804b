from __future__ import annotations

import pytest

from bridge.certs import DevCerts, make_dev_certs
from bridge.config import load_config
from bridge.server import RunningAgent, start_agent
from sandbox.cli import start_sandbox_his
from tests.support.db_fixtures import (  # noqa: F401 - fixtures for the stored-procedure tests
    mariadb_server,
    postgres_server,
    sandbox_db,
    sandbox_mariadb,
    sandbox_pg,
)
from tests.support.rig import bridge_config_toml, make_client

SERVER_FIXTURES = frozenset(
    {
        # database servers
        "postgres_server",
        "mariadb_server",
        "redis_server",
        # our own servers on sockets, in process: the sandbox HIS, the agent, the gateway, the channel sandboxes
        "his",
        "bridge_factory",
        "gateway_factory",
        "wechat_sandbox",
        "sandbox",
        "rig",
        "console",
        "sms_factory",
        "his_rig",
    }
)
"""Fixtures that start a server: every test using one is a ``system`` test."""
SERVER_PARAMS = frozenset({"postgresql", "mariadb"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start a server (a database, or one of ours on a socket) as ``system``: the fast tier
    (``scripts/test --fast``, ``-m "not system"``) leaves them out. Tests that start processes or a browser
    carry the mark in their module."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_server = callspec is not None and bool(SERVER_PARAMS & {str(v) for v in callspec.params.values()})
        if on_server or SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def his(tmp_path):
    sandbox = await start_sandbox_his(db_path=tmp_path / "his.sqlite3")
    yield sandbox
    await sandbox.close()


@pytest.fixture
async def bridge_factory(tmp_path, dev_certs, his):
    """Start agents against the sandbox HIS; each call may change the config. All are stopped at the end."""
    started: list[RunningAgent] = []

    async def start(**kwargs) -> RunningAgent:
        path = tmp_path / f"bridge-{len(started)}.toml"
        journal = kwargs.pop("journal", tmp_path / "journal.sqlite3")
        path.write_text(bridge_config_toml(dev_certs, journal, his.base_url, **kwargs))
        running = await start_agent(load_config(path))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def bridge(bridge_factory):
    return await bridge_factory()


@pytest.fixture
async def client(bridge, dev_certs):
    async with make_client(dev_certs, bridge.api_url) as c:
        yield c
