"""Time for the SMS defences, injectable: windows, code lifetimes and captcha expiry all read one clock, so tests
and the attack simulator move time instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable

from bridge import clock

Clock = Callable[[], float]
"""Seconds since the epoch."""

system_clock: Clock = clock.now


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
