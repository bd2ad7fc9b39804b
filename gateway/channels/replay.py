"""Remembers the signatures of callbacks already accepted, for as long as their timestamp stays fresh.

WeChat signs every delivery of a callback anew (its retries span a day, far outside any timestamp window), so a
second arrival with the very same timestamp, nonce and signature is a replay, not a retry. The memory is bounded
and per process: the gateway's idempotent processing, not this, is what keeps a notification from counting twice.
"""

from __future__ import annotations

from collections import OrderedDict

from bridge import clock


class ReplayGuard:
    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check_and_remember(self, key: str, *, now: float | None = None) -> bool:
        """True the first time ``key`` is seen within the TTL, False for a replay."""
        current = clock.now() if now is None else now
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > current and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        self._seen[key] = current + self.ttl_s
        return True
