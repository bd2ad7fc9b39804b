"""Disk full under the journal: new writes are refused with 503, nothing accepted is lost, and the agent
recovers by itself once space returns. The journal lives on a small filesystem of its own, filled on purpose."""

from __future__ import annotations

import aiohttp

from bridge.client import BridgeError
from tests.support.rig import make_client, prepay
from tests.support.smalldisk import fill, small_filesystem


async def readyz(ops_url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(ops_url + "/readyz") as r:
        return r.status, await r.json()


async def wait_for_readyz(ops_url: str, want: int, timeout_s: float = 30) -> dict:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        status, body = await readyz(ops_url)
        if status == want or loop.time() > deadline:
            assert status == want, body
            return body
        await asyncio.sleep(0.05)


async def test_disk_full_refuses_new_writes_loses_nothing_and_recovers(tmp_path, bridge_factory, dev_certs, his):
    with small_filesystem(tmp_path / "disk", 4096) as disk:
        bridge = await bridge_factory(journal=disk / "journal.sqlite3", dispatch={"sync_deadline_s": 2})
        bridge.agent.journal_probe_s = 0.1
        accepted: list[str] = []
        refused: list[BridgeError] = []
        async with make_client(dev_certs, bridge.api_url, retries=0) as client:
            for n in range(3):
                answer = await client.call("prepay.commit", prepay(f"T-BEFORE-{n}"))
                assert answer.status == "done"
                accepted.append(f"T-BEFORE-{n}")

            filler = fill(disk)
            for n in range(400):
                trade = f"T-FULL-{n:03d}"
                try:
                    answer = await client.call("prepay.commit", prepay(trade))
                except BridgeError as e:
                    refused.append(e)
                    if len(refused) >= 3:
                        break
                    continue
                assert answer.http_status in (200, 202)
                accepted.append(trade)
            assert refused, "the journal never ran out of space"
            assert {e.status for e in refused} == {503}
            assert {e.code for e in refused} == {"journal_unavailable"}
            assert "disk" in refused[0].body["error"]["details"]["reason"]
            body = await wait_for_readyz(bridge.ops_url, 503)
            assert body["journal_writable"] is False and body["recovered"] is True
            metrics = bridge.agent.metrics
            assert metrics.journal_writable._value.get() == 0
            assert metrics.journal_errors._value.get() >= len(refused)

            filler.unlink()
            await wait_for_readyz(bridge.ops_url, 200)
            after = await client.call("prepay.commit", prepay("T-AFTER"))
            assert after.status == "done"
            accepted.append("T-AFTER")

            for trade in accepted:
                final = await client.wait_for(f"req-{trade}", timeout_s=60, poll_s=0.1)
                assert final.status == "done", (trade, final.body)
        await bridge.stop()

    for trade in accepted:
        assert his.state.application_count(trade_no=trade) == 1, trade
    refused_trades = {f"T-FULL-{n:03d}" for n in range(400)} - set(accepted)
    assert not [t for t in refused_trades if his.state.application_count(trade_no=t)], "a refused write was applied"
