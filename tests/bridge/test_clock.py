"""The shared clock: the system clock in production, a file's offset under a simulated day, read the same way by
every process (the bridge, the gateway, the sandbox), jumping forward only."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import clock, protocol
from sandbox.channels.ledger import beijing_now
from sandbox.his.state import shanghai_now

DAY = dt.datetime(2025, 3, 14, 7, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[clock.ClockFile]:
    before = os.environ.get(clock.ENV)
    file = clock.ClockFile(tmp_path / "clock")
    file.start_at(DAY)
    clock.use_file(file.path)
    yield file
    clock.use_file(before)


def test_without_a_file_it_is_the_system_clock() -> None:
    assert not clock.simulated()
    assert abs(clock.now() - time.time()) < 1
    assert clock.offset() == 0.0


def test_every_reader_follows_the_file_and_sees_a_jump_at_its_next_read(shared: clock.ClockFile) -> None:
    assert abs(clock.now() - DAY.timestamp()) < 5
    assert shanghai_now().strftime("%Y-%m-%d %H") == "2025-03-14 07"
    assert beijing_now().strftime("%Y-%m-%d %H") == "2025-03-14 07"
    shared.advance_to(DAY.replace(hour=23, minute=59, second=59))
    assert shanghai_now().strftime("%Y-%m-%d %H:%M") == "2025-03-14 23:59"
    signed = protocol.sign_request(protocol.generate_ed25519("k"), "POST", "/x", b"")
    assert abs(int(signed[protocol.HEADER_TIMESTAMP]) - DAY.replace(hour=23, minute=59, second=59).timestamp()) < 5


def test_it_only_moves_forward(shared: clock.ClockFile) -> None:
    before = clock.monotonic()
    shared.advance(3600)
    assert clock.monotonic() >= before + 3600
    with pytest.raises(ValueError, match="only moves forward"):
        shared.set_offset(shared.offset - 1)
    assert shared.advance_to(DAY) == 0.0


async def test_a_jump_past_the_deadline_ends_a_sleep(shared: clock.ClockFile) -> None:
    sleeper = asyncio.create_task(clock.sleep(3 * 3600))
    await asyncio.sleep(0.1)
    assert not sleeper.done()
    shared.advance(3 * 3600)
    await asyncio.wait_for(sleeper, 2)


def test_another_process_reads_the_same_clock(shared: clock.ClockFile) -> None:
    shared.advance(86400)
    code = "from bridge import clock; print(clock.now())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}
    ).stdout
    assert abs(float(out) - (DAY.timestamp() + 86400)) < 10
