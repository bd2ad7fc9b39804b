"""A circuit breaker per HIS endpoint.

When a HIS is down, hammering it with every queued retry makes its recovery slower and fills our logs. After
``failures`` consecutive transport failures the breaker opens: reads are refused at once and writes wait in
the journal. After ``reset_s`` one trial call is let through (half-open); its success closes the breaker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import IntEnum

from bridge import clock as shared_clock


class BreakerState(IntEnum):
    closed = 0
    half_open = 1
    open = 2


class CircuitBreaker:
    def __init__(
        self,
        endpoint: str,
        *,
        failures: int,
        reset_s: float,
        on_change: Callable[[str, BreakerState], None] | None = None,
        clock: Callable[[], float] = shared_clock.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.failures = failures
        self.reset_s = reset_s
        self._on_change = on_change
        self._clock = clock
        self._state = BreakerState.closed
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_running = False
        self._changed = asyncio.Event()

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.open and self._clock() - self._opened_at >= self.reset_s:
            self._set(BreakerState.half_open)
        return self._state

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(self.endpoint, state)
            self._changed.set()
            self._changed = asyncio.Event()

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one trial call at a time is allowed."""
        state = self.state
        if state is BreakerState.closed:
            return True
        if state is BreakerState.half_open and not self._trial_running:
            self._trial_running = True
            return True
        return False

    async def wait_allowed(self) -> None:
        while not self.allow():
            remaining = max(0.05, self.reset_s - (self._clock() - self._opened_at))
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=shared_clock.wait_slice(remaining))
            except TimeoutError:
                pass

    def success(self) -> None:
        self._consecutive = 0
        self._trial_running = False
        self._set(BreakerState.closed)

    def failure(self) -> None:
        self._consecutive += 1
        was_trial = self._trial_running
        self._trial_running = False
        if was_trial or self._consecutive >= self.failures:
            self._opened_at = self._clock()
            self._set(BreakerState.open)

    def release(self) -> None:
        """A call that was allowed did not go out after all (an operator acted on its entry meanwhile)."""
        self._trial_running = False

    def neutral(self) -> None:
        """The call ended without telling us anything about the endpoint's health (a business refusal)."""
        self._trial_running = False
        self._consecutive = 0
        if self._state is BreakerState.half_open:
            self._set(BreakerState.closed)
