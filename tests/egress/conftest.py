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
