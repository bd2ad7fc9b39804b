"""Fixtures for the finance console: a gateway with its console on SQLite, the in-memory channel, the staff
logins, and console clients that are closed at the end."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.runtime import RunningGateway
from tests.support.console_rig import ConsoleClient, add_staff
from tests.support.memory_channel import MemoryChannel


@dataclass
class Console:
    running: RunningGateway
    channel: MemoryChannel

    @property
    def db(self):
        return self.running.svc.db

    @property
    def svc(self):
        return self.running.svc


@pytest.fixture
async def console(gateway_factory, sqlite_url) -> Console:
    channel = MemoryChannel()
    running = await gateway_factory(sqlite_url, channel=channel)
    await add_staff(running.svc.db)
    return Console(running, channel)


@pytest.fixture
async def client_factory(console):
    clients: list[ConsoleClient] = []

    async def make(username: str | None = None) -> ConsoleClient:
        client = ConsoleClient(console.running.url)
        clients.append(client)
        if username is not None:
            assert await client.login(username) == 200
        return client

    yield make
    for client in clients:
        await client.close()
