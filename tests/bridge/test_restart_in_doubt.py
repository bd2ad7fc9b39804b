"""After a crash the agent must not resend a write the HIS is still applying. Found by ``his-sandbox day``: the
agent was SIGKILLed while the HIS held a commit for 3 s; the restarted agent asked ``trade.check`` within half a
second, read "not found" and sent the commit again, so the HIS received it twice (the charge's bills refused the
second; a registration or a deposit, which the HIS books naively, would have been booked twice)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bridge.config import DispatchConfig
from bridge.dispatcher import Dispatcher
from bridge.journal import Journal, State
from bridge.metrics import Metrics
from tests.bridge.test_dispatcher import PAID, ScriptedHis, until


class SlowHis(ScriptedHis):
    """A HIS that takes ``delay_s`` to apply a commit and finishes it whatever became of the caller, as a remote
    HIS does when the connection to it is cut."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.working: set[asyncio.Task[dict[str, Any]]] = set()

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if operation == "trade.check":
            return await super().call(operation, params)
        self.calls.append(operation)

        async def apply() -> dict[str, Any]:
            await asyncio.sleep(self.delay_s)
            self.applied.append((operation, params["trade_no"]))
            return {"receipt_no": f"R-{params['trade_no']}"}

        task = asyncio.create_task(apply())
        self.working.add(task)
        return await asyncio.shield(task)


async def test_a_write_cut_off_by_a_crash_is_checked_after_the_his_timeout_not_resent(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    his = SlowHis(delay_s=0.4)
    cfg = DispatchConfig(backoff_base_s=0.01, backoff_max_s=0.02, his_timeout_s=1.0)
    before = Dispatcher(journal, his, cfg, Metrics())
    await before.start()
    params = {"request_id": "req-c0001", "trade_no": "TC1", **PAID}
    entry, _ = await journal.accept(
        request_id="req-c0001", client_id="c", operation="charge.commit", business_key="TC1", body_sha256="c",
        params=params,
    )  # fmt: skip
    before.submit(entry)
    await until(lambda: his.calls == ["charge.commit"])
    await before.stop(grace_s=0)  # the agent dies with the call at the HIS
    assert (await journal.get_seq(entry.seq)).state is State.in_flight

    after = Dispatcher(journal, his, cfg, Metrics())
    assert await after.start() == 1
    done = await after.wait(entry.seq, 10)
    assert done is not None and done.state is State.done, done
    assert "not resent" in (done.note or "")
    assert his.applied == [("charge.commit", "TC1")]
    assert his.calls == ["charge.commit", "trade.check"]
    await after.stop()
    await asyncio.gather(*his.working)
    assert his.applied == [("charge.commit", "TC1")]
    await journal.close()
