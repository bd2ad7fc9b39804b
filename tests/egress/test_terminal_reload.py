"""SIGHUP reloads the intranet's terminals (issue 12's gap): a limit lowered, a terminal added, a key rotated take
effect without a restart; a terminal file that does not load leaves the running terminals as they were."""

from __future__ import annotations

import os

import pytest

from bridge.config import load_config
from bridge.reload import Reloader
from tests.support.egress_rig import KIOSK, agent_config, egress_rig, pay_body

pytestmark = pytest.mark.system
CODE = "134567890123456789"


def rewrite(rig, **overrides) -> None:
    """The operator edits the config file the agent was started from."""
    path = rig.work / "agent.toml"
    assert load_config(path).source == path
    agent_config(rig.certs, rig.keys, rig.ports, rig.work, rig.his.base_url, **overrides)


async def test_a_lowered_limit_applies_on_reload_and_a_bad_key_file_keeps_what_runs(
    tmp_path, dev_certs, channel_keys, his
):
    async with egress_rig(tmp_path, dev_certs, channel_keys, his) as rig:
        agent = rig.agent.agent
        kiosk = rig.terminal(KIOSK)
        reloader = Reloader(agent)
        before = agent.intranet.terminals

        rewrite(rig, limits="max_payment_fen = 800\nmax_daily_fen = 2000000")
        assert await reloader.reload() is True
        assert agent.intranet.terminals is not before
        status, answer = await kiosk.call("pay.codepay", pay_body("RELOAD-0001", amount_fen=1000, auth_code=CODE))
        assert (status, answer["error"]["code"]) == (422, "over_payment_limit"), answer
        assert rig.egress_rows() == [], "refused before anything was journaled"

        # A kiosk key file left readable by others: the reload fails and the terminals stay as they are.
        key_file = rig.keys.files / "kiosk.key"
        os.chmod(key_file, 0o644)
        try:
            rewrite(rig, limits="max_payment_fen = 500000\nmax_daily_fen = 2000000")
            running = agent.intranet.terminals
            assert await reloader.reload() is False
            assert agent.intranet.terminals is running
            status, answer = await kiosk.call("pay.codepay", pay_body("RELOAD-0002", amount_fen=1000, auth_code=CODE))
            assert answer["error"]["code"] == "over_payment_limit", "the lowered limit still holds"
        finally:
            os.chmod(key_file, 0o600)
        assert await reloader.reload() is True
        assert agent.intranet.terminals.by_id[KIOSK].cfg.max_payment_fen == 500000
