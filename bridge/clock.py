"""The one clock every process reads: the system clock, or a simulated day's.

Every time read in the bridge, the gateway and the sandbox that means "now" (signature timestamps, journal
times, due times, reconciliation days, bill days, callback retry schedules, back-off pauses) goes through this
module, so that a whole deployment can be run through a day in minutes. In production nothing is set and it is
the system clock, read directly.

When the environment variable ``HIS_BRIDGE_CLOCK_FILE`` names a file, that file holds a number of seconds added
to the system clock. An orchestrator (``his-sandbox day``) moves it forward — morning to noon, 23:59:59 to the
next day — and every process sees the jump at its next read: time runs at its normal pace between jumps, so
signature windows and timeouts behave as they do in production. The offset only moves forward, so ``monotonic``
stays monotonic. The file is re-read only when it changes (a ``stat`` per read), and written atomically.

Like ``protocol``, this module is a leaf: the gateway and the sandbox import it, and it imports nothing of ours.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from pathlib import Path

ENV = "HIS_BRIDGE_CLOCK_FILE"
SLICE_S = 0.05
"""Under a simulated clock, how long a sleeper waits in real time before it looks at the clock again: a jump
ends every sleep that it carries past its deadline within this long."""

_path: str | None = os.environ.get(ENV) or None
_seen: tuple[int, int] | None = None
_offset = 0.0


def use_file(path: str | Path | None) -> None:
    """Read the offset from ``path`` from now on (None: the system clock). Processes started afterwards inherit
    it through ``HIS_BRIDGE_CLOCK_FILE``."""
    global _path, _seen, _offset
    _path, _seen, _offset = (str(path) if path is not None else None), None, 0.0
    if path is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = str(path)


def simulated() -> bool:
    return _path is not None


def offset() -> float:
    """Seconds the simulated clock is ahead of the system clock (0 in production)."""
    global _seen, _offset
    if _path is None:
        return 0.0
    try:
        st = os.stat(_path)
    except OSError:
        return _offset  # replaced this instant, or not yet written: keep the last offset seen
    key = (st.st_ino, st.st_mtime_ns)
    if key != _seen:
        try:
            text = Path(_path).read_text(encoding="ascii").strip()
            _offset = float(text) if text else 0.0
            _seen = key
        except (OSError, ValueError):
            pass
    return _offset


def now() -> float:
    """Unix seconds, as ``time.time()``."""
    return time.time() + offset()


def monotonic() -> float:
    """As ``time.monotonic()``: never goes back, and jumps forward with a simulated clock."""
    return time.monotonic() + offset()


def utcnow() -> dt.datetime:
    return dt.datetime.fromtimestamp(now(), dt.UTC)


def wait_slice(remaining: float) -> float:
    """How long to wait in real time before looking at the clock again, when ``remaining`` seconds of this clock
    are left to wait."""
    return min(remaining, SLICE_S) if _path is not None else remaining


async def sleep(seconds: float) -> None:
    """Sleep ``seconds`` of this clock: as ``asyncio.sleep`` in production; under a simulated clock a jump past
    the deadline ends the sleep."""
    if _path is None:
        await asyncio.sleep(seconds)
        return
    deadline = monotonic() + seconds
    # Another process moves the clock, so no event in this one can say that the deadline has passed: poll.
    while (remaining := deadline - monotonic()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(wait_slice(remaining))


class ClockFile:
    """The orchestrator's side: the file every process reads, and the moves of a simulated day."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0.0

    def set_offset(self, seconds: float) -> None:
        if seconds < self.offset:
            raise ValueError(f"the clock only moves forward (offset {self.offset:.3f} s, asked {seconds:.3f} s)")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(f"{seconds:.6f}\n", encoding="ascii")
        os.replace(tmp, self.path)
        self.offset = seconds

    def start_at(self, when: dt.datetime) -> None:
        """Start the day at ``when`` (an aware time), before any process reads the file."""
        self.offset = float("-inf")
        self.set_offset(when.timestamp() - time.time())

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self.set_offset(self.offset + seconds)

    def advance_to(self, when: dt.datetime) -> float:
        """Jump to ``when`` if it is ahead; returns how many seconds the clock moved."""
        ahead = when.timestamp() - self.now()
        self.advance(ahead)
        return max(ahead, 0.0)
