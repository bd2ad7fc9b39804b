"""The kill test: SIGKILL the agent at random moments under concurrent writes; nothing answered is lost and
nothing is applied twice.

The agent runs as a real subprocess (``his-bridge serve``) so that a kill really loses its memory, its
threads and its sockets; the sandbox HIS lives on in the test process and counts every application.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.client import BridgeError, BridgeUnreachable
from sandbox.his.faults import FaultRule
from tests.support.rig import bridge_config_toml, free_port, make_client, prepay, wait_ready

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROUNDS = 5
WRITERS = 12


def start_agent(config: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def test_sigkill_under_load_loses_nothing_and_applies_nothing_twice(tmp_path, dev_certs, his):
    his.faults.add(FaultRule.from_json({"operation": "*", "mode": "latency", "latency_ms": 15}))
    api_port, ops_port = free_port(), free_port()
    config = tmp_path / "bridge.toml"
    config.write_text(
        bridge_config_toml(
            dev_certs,
            tmp_path / "journal.sqlite3",
            his.base_url,
            listen=f"127.0.0.1:{api_port}",
            ops_listen=f"127.0.0.1:{ops_port}",
            dispatch={"sync_deadline_s": 0.5},
        )
    )
    api_url, ops_url = f"https://127.0.0.1:{api_port}", f"http://127.0.0.1:{ops_port}"
    answered: dict[str, int] = {}  # request_id -> HTTP status of its answer (200 or 202)
    sent: set[str] = set()
    counter = iter(range(1_000_000))
    rng = random.Random(20261125)

    async def writer(stop: asyncio.Event, client) -> None:
        while not stop.is_set():
            n = next(counter)
            trade = f"K{n:05d}" if n % 3 else f"SHARED-{n % 4}"  # some trades get several writes
            params = prepay(trade, request_id=f"req-kill-{n:06d}", amount_fen=100 + n)
            sent.add(params["request_id"])
            try:
                answer = await client.call("prepay.commit", params)
            except (BridgeUnreachable, BridgeError):
                continue
            answered[params["request_id"]] = answer.http_status

    log = tmp_path / "agent.log"
    for _ in range(ROUNDS):
        proc = start_agent(config, log)
        try:
            await wait_ready(ops_url, proc)
            stop = asyncio.Event()
            async with make_client(dev_certs, api_url, retries=0, timeout_s=5) as client:
                writers = [asyncio.create_task(writer(stop, client)) for _ in range(WRITERS)]
                await asyncio.sleep(rng.uniform(0.3, 1.2))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                stop.set()
                await asyncio.gather(*writers)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    proc = start_agent(config, log)
    try:
        await wait_ready(ops_url, proc)
        async with make_client(dev_certs, api_url) as client:
            for request_id in sorted(answered):
                final = await client.wait_for(request_id, timeout_s=60, poll_s=0.1)
                assert final.status == "done", (request_id, final.body)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)

    assert len(answered) > 50, "the load was too light to prove anything"
    with sqlite3.connect(tmp_path / "journal.sqlite3") as conn:
        checked = conn.execute("SELECT COUNT(*) FROM entries WHERE note LIKE '%trade.check%'").fetchone()[0]
    assert checked > 0, "no kill landed mid-call: the in-doubt path was not exercised"
    assert {200, 202} >= set(answered.values())
    counts = {}
    for app in his.state.applications():
        if app["operation"] == "CommitPrepay":
            counts[app["trade_no"]] = counts.get(app["trade_no"], 0) + app["count"]
    per_request = {}
    for request_id in sent:
        n = int(request_id.rsplit("-", 1)[1])
        trade = f"K{n:05d}" if n % 3 else f"SHARED-{n % 4}"
        per_request.setdefault(trade, []).append(request_id)
    for trade, request_ids in per_request.items():
        answered_here = [r for r in request_ids if r in answered]
        applied = counts.get(trade, 0)
        assert applied >= len(answered_here), f"{trade}: answered writes lost"
        assert applied <= len(request_ids), f"{trade}: applied {applied} times for {len(request_ids)} writes"
    for trade, applied in counts.items():
        if trade.startswith("K"):
            assert applied == 1 if trade in per_request else applied == 0, f"{trade} applied {applied} times"
