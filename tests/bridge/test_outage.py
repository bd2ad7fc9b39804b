"""A HIS outage longer than ``max_attempts`` retries is not a pile of poison writes: every write in flight waits
(the breaker open, retries capped) and goes through once the HIS is back, none of them left quarantined for an
operator. Found by ``his-sandbox day``: with the shipped defaults a 20-minute outage quarantined the commits of
the payments made during it, and the paid orders then waited for someone to run ``his-bridge journal retry``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.config import DispatchConfig
from bridge.dispatcher import Dispatcher
from bridge.journal import Journal, State
from bridge.metrics import Metrics
from tests.bridge.test_dispatcher import ScriptedHis, submit


@pytest.fixture
async def outage(tmp_path: Path) -> AsyncIterator[tuple[Journal, ScriptedHis, Dispatcher]]:
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    his = ScriptedHis()
    cfg = DispatchConfig(
        backoff_base_s=0.005, backoff_max_s=0.01, max_attempts=3, breaker_failures=2, breaker_reset_s=0.02
    )
    dispatcher = Dispatcher(journal, his, cfg, Metrics(), sweep_interval_s=0.05)
    await dispatcher.start()
    yield journal, his, dispatcher
    await dispatcher.stop()
    await journal.close()


async def test_writes_in_flight_during_an_outage_go_through_when_it_ends(
    outage: tuple[Journal, ScriptedHis, Dispatcher],
) -> None:
    journal, his, dispatcher = outage
    his.script = ["down"] * 25
    entries = [await submit(journal, dispatcher, f"req-o{i:04d}", f"TO{i}") for i in range(3)]
    for entry in entries:
        done = await dispatcher.wait(entry.seq, 10)
        assert done is not None and done.state is State.done, done
    attempts = [(await journal.get_seq(e.seq)).attempts for e in entries]
    assert max(attempts) > 3, attempts  # more tries than max_attempts, and still not quarantined
    assert sorted(t for _, t in his.applied) == ["TO0", "TO1", "TO2"]
    assert his.calls.count("charge.commit") >= 25


async def test_a_write_failing_while_the_his_answers_others_is_still_quarantined(
    outage: tuple[Journal, ScriptedHis, Dispatcher],
) -> None:
    journal, his, dispatcher = outage
    dispatcher.breaker.failures = 10
    his.script = ["down"] * 3
    poison = await submit(journal, dispatcher, "req-p0001", "TP1")
    assert (await dispatcher.wait(poison.seq, 10)).state is State.quarantined
