"""The cross-day pool (挂账): one-sided entries near midnight wait for the next days' records.

A payment at 23:59:58 is on today's channel statement but may reach the HIS at 00:00:03 tomorrow. Instead of
flagging it, today's run holds it; the next days' runs carry its records into their own sides and match again.
It clears itself when the missing side turns up, and becomes its real class once ``suspense_days`` days have
passed since it was held. Pure functions over the engine's types; ``runs.py`` persists the pool.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.recon.engine import Cls, Outcome, Side

SIDES = ("his", "platform", "channel")
HOLDABLE = frozenset({Cls.over_collection, Cls.under_collection, Cls.status_mismatch})


@dataclass
class PoolItem:
    key: str
    first_day: dt.date
    entries: dict[str, tuple[int, int, int]]
    """Side name → (amount_fen, epoch seconds, flag): the sides present when it was held."""


@dataclass
class Resolution:
    cleared: list[str] = field(default_factory=list)
    flagged: dict[str, Cls] = field(default_factory=dict)
    kept: dict[str, Cls] = field(default_factory=dict)


def carry(pool: Mapping[str, PoolItem], sides: Mapping[str, Side], day_start_epoch: int) -> None:
    """Add the held entries to today's sides, timed relative to today (so they are never 'near midnight')."""
    for key, item in pool.items():
        for name, (amount, epoch, flag) in item.entries.items():
            sides[name].add(key, amount, epoch - day_start_epoch, flag)


def resolve(pool: Mapping[str, PoolItem], outcome: Outcome, day: dt.date, suspense_days: int) -> Resolution:
    """Decide each carried item's fate from today's outcome, and move it in ``outcome`` accordingly: matched →
    cleared; still one-sided and young → kept held; old, or now a different discrepancy → flagged."""
    res = Resolution()
    for key, item in pool.items():
        cls = outcome.held.pop(key, None) or outcome.flagged.pop(key, None)
        if cls is None:
            res.cleared.append(key)
        elif cls in HOLDABLE and (day - item.first_day).days < suspense_days:
            res.kept[key] = cls
            outcome.held[key] = cls
        else:
            res.flagged[key] = cls
            outcome.flagged[key] = cls
    return res
