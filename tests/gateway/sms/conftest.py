"""Fixtures for the SMS tests: a gateway with the SMS defences on a manual clock, the app's client, and one
throwaway Redis per session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.his import HisLink
from gateway.runtime import RunningGateway
from gateway.sms.clock import ManualClock
from tests.support.databases import DatabaseUnavailable
from tests.support.redis_server import RedisServer
from tests.support.sms_rig import HisRig, SmsApp, SmsRig, service, sms_section, start_his_rig, start_sms_gateway


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer().start()
    except DatabaseUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sms_factory(tmp_path, keys, clock, api_factory) -> Any:
    """Start a gateway with ``[sms]`` = the defaults merged with the given overrides."""
    started: list[RunningGateway] = []

    async def start(db_url: str | None = None, his: HisLink | None = None, **sms: Any) -> SmsRig:
        url = db_url or f"sqlite+aiosqlite:///{tmp_path / 'gateway.sqlite3'}"
        section = sms_section(tmp_path, **sms)
        running, provider = await start_sms_gateway(tmp_path, keys, url, section, clock, his=his)
        started.append(running)
        return SmsRig(running, provider, SmsApp(api_factory(running), service(running).captcha))

    yield start
    for running in reversed(started):
        await running.stop()


@pytest.fixture
async def sms(sms_factory):
    return await sms_factory()


@pytest.fixture
async def his_rig(tmp_path) -> Any:
    """The sandbox HIS behind a real bridge agent, for the known-patient check."""
    rig: HisRig = await start_his_rig(tmp_path / "his")
    yield rig
    await rig.close()
