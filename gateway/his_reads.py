"""An app's reads of its hospital's HIS through the gateway — patient lookup and unpaid bills — answered from a
short per-instance cache where the hospital allows it.

A read goes to the hospital's agent as a catalog read (``patient.query``, ``bills.unpaid``: answered at once,
never journaled). Only a successful answer is kept, for the hospital's ``read_cache`` seconds for that
operation (``DEFAULT_CACHE_S`` when it says nothing): a patient's identity changes rarely; unpaid bills change
the moment one is paid, so they are not cached unless a hospital decides a few seconds are harmless. The cache
is per instance and bounded; an instance never serves an answer older than the hospital's limit.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import HospitalConfig
from gateway.his import HisAnswer, HisLink

DEFAULT_CACHE_S: dict[str, int] = {"patient.query": 30, "bills.unpaid": 0}
MAX_ENTRIES = 20_000


@dataclass(frozen=True)
class ReadOutcome:
    answer: HisAnswer
    cached: bool
    age_s: float


class ReadCache:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_ENTRIES) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, float, HisAnswer]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(hospital_id: str, operation: str, params: dict[str, Any]) -> str:
        return json.dumps([hospital_id, operation, params], sort_keys=True, ensure_ascii=False, default=str)

    def get(self, key: str) -> tuple[HisAnswer, float] | None:
        found = self._entries.get(key)
        if found is None:
            return None
        stored, expires, answer = found
        now = self.clock()
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer, now - stored

    def put(self, key: str, answer: HisAnswer, ttl_s: float) -> None:
        now = self.clock()
        self._entries[key] = (now, now + ttl_s, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def cache_seconds(hospital: HospitalConfig, operation: str) -> int:
    return int(hospital.read_cache.get(operation, DEFAULT_CACHE_S.get(operation, 0)))  # type: ignore[call-overload]


async def read(
    cache: ReadCache, link: HisLink, hospital: HospitalConfig, operation: str, params: dict[str, Any]
) -> ReadOutcome:
    """The HIS's answer, from the cache when allowed and fresh. Raises ``HisUnavailable`` when the agent cannot
    be reached (nothing is cached then)."""
    ttl = cache_seconds(hospital, operation)
    key = cache.key(hospital.id, operation, params)
    if ttl > 0:
        found = cache.get(key)
        if found is not None:
            cache.hits += 1
            return ReadOutcome(found[0], True, found[1])
    cache.misses += 1
    answer = await link.read(operation, params)
    if ttl > 0 and answer.done:
        cache.put(key, answer, ttl)
    return ReadOutcome(answer, False, 0.0)
