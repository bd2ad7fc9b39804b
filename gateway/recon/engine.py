"""The matching core: three sides of one day reduced to compact entries, and one entry key classified from all
the evidence any day has given of it.

Pure Python over dicts of small tuples — no database, no I/O, no per-row objects — so that a day of a million
entries per side is sorted out in seconds and the benchmark times exactly what production runs. The definitions
it implements are in docs/RECONCILIATION.md; the run (``runs.py``) loads the sides, keeps the evidence of the
entries that did not match within their day, and stores the outcome.

Two steps. :func:`match` goes through one day: an entry whose three sides agree on that day is matched and
forgotten; everything else is *unresolved*. :func:`classify` then decides an unresolved entry from every
observation of its key, whichever days they came from, plus the platform's current record — so a payment at
22:00 that the HIS books at 00:40 is one entry that arrived late, never an over-collection on one day and an
under-collection on the next, and the answer does not depend on the order in which days are run.

An entry key is ``pay:<out_trade_no>`` or ``refund:<out_refund_no>``; an entry value is
``(amount_fen, seconds, flag)`` where ``seconds`` is the entry's time from the start of its day and ``flag``
says how the side holds the entry:

- HIS: ``SETTLED`` (the HIS lists what it booked), or ``APPLIED`` for a refund the HIS applied whose payout it
  has not recorded yet (``refund_state = applied``: no write-back);
- platform: ``SETTLED`` (order paid and the HIS expected to book it / refund succeeded), ``UNSETTLED`` (a
  record, not settled: an order still paying, a refund in flight or refused), ``NO_HIS`` (settled, but the HIS
  is not expected to know it: a payment the gateway holds back from the HIS — refused, held — or a refund of
  one), ``CANCELLED`` (a refund whose HIS application was undone: nothing is owed either way);
- channel: ``SETTLED`` for a success row, ``UNSETTLED`` for any other state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

Entry = tuple[int, int, int]

UNSETTLED, SETTLED, NO_HIS, CANCELLED, APPLIED = 0, 1, 2, 3, 4
DAY_S = 86_400


class Cls(IntEnum):
    over_collection = 1
    under_collection = 2
    amount_mismatch = 3
    status_mismatch = 4
    duplicate = 5

    @property
    def label(self) -> str:
        return self.name


ONE_SIDED = frozenset({Cls.over_collection, Cls.under_collection, Cls.status_mismatch})
"""Classes that mean "a side is missing": the entry waits for its counterpart before it is flagged."""


@dataclass
class Side:
    """One side's entries of the day; a key seen twice goes to ``dups`` (every copy kept)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    dups: dict[str, list[Entry]] = field(default_factory=dict)

    def add(self, key: str, amount_fen: int, seconds: int, flag: int = SETTLED) -> None:
        entry = (amount_fen, seconds, flag)
        entries = self.entries
        if key in entries:
            self.dups.setdefault(key, [entries[key]]).append(entry)
        else:
            entries[key] = entry

    def copies(self, key: str) -> list[Entry]:
        dup = self.dups.get(key)
        if dup is not None:
            return dup
        entry = self.entries.get(key)
        return [] if entry is None else [entry]

    def __len__(self) -> int:
        return len(self.entries) + sum(len(v) - 1 for v in self.dups.values())


@dataclass
class DayOutcome:
    matched: int
    """Entries whose three sides agreed within the day."""
    unresolved: set[str]
    """Every other key with something settled on some side: decided by :func:`classify` from all evidence."""


def match(his: Side, platform: Side, channel: Side) -> DayOutcome:
    """Sort one day's keys into matched-within-the-day and unresolved."""
    h_all, p_all, c_all = his.entries, platform.entries, channel.entries
    dup_keys = his.dups.keys() | platform.dups.keys() | channel.dups.keys()
    unresolved: set[str] = set(dup_keys)
    matched = 0
    c_get, p_get = c_all.get, p_all.get
    add = unresolved.add

    for k, h in h_all.items():
        c = c_get(k)
        p = p_get(k)
        if c is not None and c[2] and p is not None and p[2] == SETTLED and h[2] == SETTLED and c[0] == h[0] == p[0]:
            if k not in dup_keys:
                matched += 1
            continue
        add(k)

    for k, c in c_all.items():
        if k in h_all or not c[2]:
            continue
        p = p_get(k)
        if p is not None and p[2] == NO_HIS and k[0] == "r" and p[0] == c[0]:
            if k not in dup_keys:
                matched += 1
            continue
        add(k)

    for k, p in p_all.items():
        if p[2] != UNSETTLED and k not in h_all and k not in c_all:
            add(k)
    return DayOutcome(matched, unresolved)


@dataclass(frozen=True)
class Evidence:
    """Everything known of one entry key: each side's settled amounts over all days, and the platform now."""

    his: Sequence[int]
    channel: Sequence[int]
    """Amounts of the channel's success rows (rows in any other state are kept for display only)."""
    platform: tuple[int, int] | None
    """(amount, flag) of the platform's current record, None when it has none."""
    his_applied: bool = False
    """The HIS holds the refund as applied, its payout not written back."""


def classify(key: str, ev: Evidence) -> Cls | None:
    """The class of an entry from all its evidence, or None when it is matched. A one-sided class
    (``ONE_SIDED``) is the class the entry would have if its counterpart never arrived."""
    if len(ev.his) > 1 or len(ev.channel) > 1:
        return Cls.duplicate
    is_pay = key[0] == "p"
    h = ev.his[0] if ev.his else None
    c = ev.channel[0] if ev.channel else None
    p_amount, p_flag = ev.platform if ev.platform is not None else (None, UNSETTLED)
    if h is not None and c is not None:
        if c != h or (p_amount is not None and p_amount != h):
            return Cls.amount_mismatch
        if p_flag == SETTLED and not ev.his_applied:
            return None
        return Cls.status_mismatch
    if c is not None:
        if p_flag == NO_HIS and not is_pay:
            return None if p_amount == c else Cls.amount_mismatch
        if p_flag == CANCELLED:
            return Cls.under_collection
        return Cls.over_collection if is_pay else Cls.under_collection
    if h is not None:
        if p_flag == CANCELLED:
            return None
        return Cls.under_collection if is_pay else Cls.over_collection
    if p_flag in (SETTLED, NO_HIS):
        return Cls.status_mismatch
    return None
