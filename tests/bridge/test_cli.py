"""The operator's commands, run as an operator runs them: as processes, against real files."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from bridge.journal import State
from tests.support.rig import bridge_config_toml, prepay

pytestmark = pytest.mark.system


def his_bridge(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, check=check)


def test_certs_dev_writes_private_keys_0600_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "certs"
    assert his_bridge("certs", "dev", "--out", str(out)).returncode == 0
    assert (out / "server.key").stat().st_mode & 0o777 == 0o600
    assert (out / "bridge-signing.pem").stat().st_mode & 0o777 == 0o600
    again = his_bridge("certs", "dev", "--out", str(out), check=False)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_check_passes_a_good_config_and_names_a_bad_one(tmp_path, dev_certs):
    good = tmp_path / "good.toml"
    good.write_text(bridge_config_toml(dev_certs, tmp_path / "j.sqlite3", "http://127.0.0.1:9"))
    result = his_bridge("check", "--config", str(good))
    assert result.returncode == 0 and "config OK" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("sync_deadline_s = 5", "sync_deadline_s = -1\nsurprise = 1"))
    result = his_bridge("check", "--config", str(bad), check=False)
    assert result.returncode == 2
    assert "dispatch.sync_deadline_s" in result.stderr and "dispatch.surprise" in result.stderr


@pytest.fixture
async def journal_with_entries(bridge_factory, dev_certs, his, tmp_path):
    from sandbox.his.faults import FaultRule
    from tests.support.rig import make_client

    journal = tmp_path / "ops.sqlite3"
    bridge = await bridge_factory(journal=journal, dispatch={"max_attempts": 1, "sync_deadline_s": 2})
    async with make_client(dev_certs, bridge.api_url) as client:
        assert (await client.call("prepay.commit", prepay("T-OK"))).status == "done"
        his.faults.add(FaultRule.from_json({"operation": "CommitPrepay", "mode": "refuse", "count": 1}))
        stuck = await client.call("prepay.commit", prepay("T-STUCK"))
        assert stuck.body["state"] == "quarantined"
    await bridge.stop()
    return journal


def test_journal_list_show_retry_resolve(journal_with_entries):
    j = str(journal_with_entries)
    listing = his_bridge("journal", "--journal", j, "list").stdout.splitlines()
    assert len(listing) == 2 and "quarantined" in listing[0] and "done" in listing[1]
    assert his_bridge("journal", "--journal", j, "list", "--state", "done").stdout.count("\n") == 1
    shown = his_bridge("journal", "--journal", j, "show", "req-T-STUCK").stdout
    detail = json.loads(shown.split("\n", 1)[1])
    assert detail["state"] == "quarantined" and detail["error"]["kind"] == "retryable"

    retried = his_bridge("journal", "--journal", j, "retry", "req-T-STUCK", "--note", "HIS back")
    assert "accepted" in retried.stdout and "attempts=0" in retried.stdout

    no_note = his_bridge("journal", "--journal", j, "resolve", "req-T-STUCK", "--as", "done", "--note", "", check=False)
    assert no_note.returncode == 1 and "--note" in no_note.stderr
    bad = his_bridge(
        "journal",
        "--journal",
        j,
        "resolve",
        "req-T-STUCK",
        "--as",
        "done",
        "--note",
        "seen in HIS",
        "--result",
        '{"receipt_no": 5}',
        check=False,
    )
    assert bad.returncode == 1 and "does not fit" in bad.stderr
    ok = his_bridge(
        "journal",
        "--journal",
        j,
        "resolve",
        "req-T-STUCK",
        "--as",
        "done",
        "--note",
        "seen in HIS",
        "--result",
        '{"receipt_no": "YJ1"}',
    )
    assert "done" in ok.stdout
    finished = his_bridge("journal", "--journal", j, "retry", "req-T-OK", check=False)
    assert finished.returncode == 1 and "is done" in finished.stderr
    detail = json.loads(his_bridge("journal", "--journal", j, "show", "req-T-STUCK").stdout.split("\n", 1)[1])
    assert detail["result"] == {"receipt_no": "YJ1", "balance_fen": None}
    assert "retry" in detail["note"] and "resolved done: seen in HIS" in detail["note"]


async def test_operator_retry_reaches_a_running_agent(bridge_factory, dev_certs, his, tmp_path):
    """`journal retry` writes the file; the running agent's sweep picks it up and delivers it."""
    from sandbox.his.faults import FaultRule
    from tests.support.rig import make_client

    journal = tmp_path / "live.sqlite3"
    bridge = await bridge_factory(journal=journal, dispatch={"max_attempts": 1, "sync_deadline_s": 2})
    bridge.agent.dispatcher.sweep_interval_s = 0.1
    async with make_client(dev_certs, bridge.api_url) as client:
        his.faults.add(FaultRule.from_json({"operation": "CommitPrepay", "mode": "refuse", "count": 1}))
        assert (await client.call("prepay.commit", prepay("T-LIVE"))).body["state"] == State.quarantined
        behind = await client.call("prepay.commit", prepay("T-LIVE", request_id="req-T-LIVE-2", amount_fen=200))
        assert behind.status == "pending"  # held behind the quarantined write of the same trade
        result = await asyncio.to_thread(his_bridge, "journal", "--journal", str(journal), "retry", "req-T-LIVE")
        assert "accepted" in result.stdout
        assert (await client.wait_for("req-T-LIVE", timeout_s=10, poll_s=0.05)).status == "done"
        assert (await client.wait_for("req-T-LIVE-2", timeout_s=10, poll_s=0.05)).status == "done"
    assert his.state.application_count(trade_no="T-LIVE") == 2


def test_journal_commands_refuse_a_missing_or_foreign_file(tmp_path):
    missing = his_bridge("journal", "--journal", str(tmp_path / "nope.sqlite3"), "list", check=False)
    assert missing.returncode == 2 and "no journal" in missing.stderr
    foreign = tmp_path / "foreign.sqlite3"
    import sqlite3

    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t(x)")
    result = his_bridge("journal", "--journal", str(foreign), "list", check=False)
    assert result.returncode == 2 and "not a HIS Bridge journal" in result.stderr
