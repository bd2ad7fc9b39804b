"""The matching core: three sides of one day reduced to compact entries, classified key by key.

Pure Python over dicts of small tuples — no database, no I/O, no per-row objects — so that a day of a million
entries per side classifies in seconds and the benchmark times exactly what production runs. The definitions
it implements are in docs/RECONCILIATION.md; the run (``runs.py``) loads the sides and stores the outcome.

An entry key is ``pay:<out_trade_no>`` or ``refund:<out_refund_no>``; an entry value is
``(amount_fen, seconds, flag)`` where ``seconds`` is the entry's time relative to the start of the day being
reconciled (negative for an entry carried over from an earlier day) and ``flag`` says whether the side holds
the entry as settled:

- HIS: always ``SETTLED`` (the HIS lists what it booked);
- platform: ``SETTLED`` (order paid / refund succeeded), ``UNSETTLED`` (a record, not settled: an order still
  paying, a refund in flight), ``NO_HIS`` (a settled refund of a payment the HIS never booked: the HIS is not
  expected to know it);
- channel: ``SETTLED`` for a success row, ``UNSETTLED`` for any other state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

Entry = tuple[int, int, int]

UNSETTLED, SETTLED, NO_HIS = 0, 1, 2
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

    def __len__(self) -> int:
        return len(self.entries) + sum(len(v) - 1 for v in self.dups.values())


@dataclass
class Outcome:
    flagged: dict[str, Cls]
    """Exceptions of the day, by key."""
    held: dict[str, Cls]
    """One-sided entries near midnight, held in the suspense pool; the value is the class they would have."""
    matched: int


def match(his: Side, platform: Side, channel: Side, *, window_s: int = 1800) -> Outcome:
    """Classify every key any side has. ``window_s``: a one-sided entry whose time is within this many
    seconds before the end of the day is held (cross-day) instead of flagged."""
    cutoff = DAY_S - window_s
    h_all, p_all, c_all = his.entries, platform.entries, channel.entries
    dup_keys = his.dups.keys() | platform.dups.keys() | channel.dups.keys()
    flagged: dict[str, Cls] = {}
    held: dict[str, Cls] = {}
    matched = 0
    over, under = Cls.over_collection, Cls.under_collection
    amount, status = Cls.amount_mismatch, Cls.status_mismatch
    c_get, p_get = c_all.get, p_all.get

    for k, h in h_all.items():
        c = c_get(k)
        p = p_get(k)
        if c is not None and c[2]:
            amt = h[0]
            if c[0] != amt or (p is not None and p[0] != amt):
                flagged[k] = amount
            elif p is None or not p[2]:
                flagged[k] = status
            else:
                matched += 1
                continue
        else:
            cls = under if k[0] == "p" else over
            if h[1] >= cutoff:
                held[k] = cls
            else:
                flagged[k] = cls

    for k, c in c_all.items():
        if k in h_all or not c[2]:
            continue
        p = p_get(k)
        if p is not None and p[2] == NO_HIS:
            if p[0] == c[0]:
                matched += 1
                continue
            flagged[k] = amount
            continue
        cls = over if k[0] == "p" else under
        if c[1] >= cutoff:
            held[k] = cls
        else:
            flagged[k] = cls

    for k, p in p_all.items():
        if not p[2] or k in h_all:
            continue
        c = c_get(k)
        if c is not None and c[2]:
            continue
        if p[1] >= cutoff:
            held[k] = status
        else:
            flagged[k] = status

    if dup_keys:
        for k in dup_keys:
            held.pop(k, None)
            if k not in flagged:
                matched -= _was_matched(k, his, platform, channel)
            flagged[k] = Cls.duplicate
    return Outcome(flagged, held, matched)


def _was_matched(k: str, his: Side, platform: Side, channel: Side) -> int:
    """Whether the loop above counted ``k`` as matched (its first copies agreed), so the count can be undone."""
    h, p, c = his.entries.get(k), platform.entries.get(k), channel.entries.get(k)
    if h is not None:
        return int(c is not None and bool(c[2]) and c[0] == h[0] and p is not None and bool(p[2]) and p[0] == h[0])
    return int(c is not None and bool(c[2]) and p is not None and p[2] == NO_HIS and p[0] == c[0])
