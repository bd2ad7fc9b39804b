"""SIGHUP reload: a new profile (here, the HIS moving to another host) takes new calls while a call already
sent finishes on the old adapter; a profile that does not load leaves the running one in place."""

from __future__ import annotations

import asyncio

from bridge.reload import Reloader
from sandbox.cli import start_sandbox_his
from sandbox.his.faults import FaultRule
from tests.support.rig import make_client, prepay


async def test_reload_swaps_the_adapter_without_dropping_a_call_in_flight(tmp_path, bridge_factory, dev_certs, his):
    bridge = await bridge_factory(dispatch={"sync_deadline_s": 10, "his_timeout_s": 10})
    agent = bridge.agent
    config = agent.cfg.source
    old_adapter = agent.adapter
    his.faults.add(FaultRule.from_json({"operation": "CommitPrepay", "mode": "latency", "latency_ms": 1500}))
    async with await start_sandbox_his(db_path=tmp_path / "his-b.sqlite3") as his_b:
        async with make_client(dev_certs, bridge.api_url) as client:
            slow = asyncio.create_task(client.call("prepay.commit", prepay("T-SLOW")))
            while not agent.dispatcher._calls_on:  # noqa: ASYNC110 - the dispatcher has no event for "call sent"
                await asyncio.sleep(0.01)

            config.write_text(config.read_text().replace(his.base_url, his_b.base_url))
            assert await Reloader(agent).reload()
            assert agent.adapter is not old_adapter and agent.dispatcher.adapter is agent.adapter

            assert (await slow).status == "done"
            fresh = await client.call("prepay.commit", prepay("T-FRESH"))
            assert fresh.status == "done"

        assert his.state.application_count(trade_no="T-SLOW") == 1
        assert his_b.state.application_count(trade_no="T-SLOW") == 0
        assert his_b.state.application_count(trade_no="T-FRESH") == 1
        assert his.state.application_count(trade_no="T-FRESH") == 0
        assert agent.metrics.reloads.labels("ok")._value.get() == 1
        assert agent.dispatcher.breaker.endpoint == agent.adapter.endpoint != old_adapter.endpoint


async def test_a_broken_profile_keeps_the_running_one(tmp_path, bridge_factory, dev_certs):
    bridge = await bridge_factory()
    agent = bridge.agent
    broken = tmp_path / "broken.toml"
    broken.write_text('[profile]\nname = "broken"\nprotocol = "soap"\n')
    config = agent.cfg.source
    before = agent.adapter
    config.write_text(config.read_text().replace(str(agent.cfg.his.profile), str(broken)))
    assert not await Reloader(agent).reload()
    assert agent.adapter is before
    assert agent.metrics.reloads.labels("failed")._value.get() == 1
    async with make_client(dev_certs, bridge.api_url) as client:
        assert (await client.call("prepay.commit", prepay("T-STILL"))).status == "done"
