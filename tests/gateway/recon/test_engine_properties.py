"""Property: for random days of HIS / platform / channel entries with discrepancies of every class injected —
some with a side that turns up one or two days late — the engine finds every injected discrepancy with its
class and flags nothing else, a late counterpart makes one entry (never an over- and an under-collection), a
one-sided entry waits ``suspense_days`` and then takes its real class, and running the days in any order gives
the same verdicts. Pure: the store of evidence is modelled as ``gateway.recon.runs`` keeps it (a key in the
store has the observations of every day run), without a database."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.recon.engine import (
    APPLIED,
    CANCELLED,
    DAY_S,
    NO_HIS,
    SETTLED,
    UNSETTLED,
    Cls,
    Evidence,
    Side,
    classify,
    match,
)
from gateway.recon.evidence import Observation
from gateway.recon.verdicts import HELD, KeyEvidence, Platform, judge

DAY0 = dt.date(2025, 3, 14)
NDAYS = 4

# What each injection puts on (his, platform, channel): None = absent, else (amount delta, flag).
Shape = tuple[tuple[int, int] | None, tuple[int, int] | None, tuple[int, int] | None]
S = (0, SETTLED)
INJECTIONS: dict[str, tuple[str, Cls | None, list[Shape]]] = {
    "matched_pay": ("pay", None, [(S, S, S)]),
    "matched_refund": ("refund", None, [(S, S, S)]),
    "refund_without_his": ("refund", None, [(None, (0, NO_HIS), S)]),
    "cancelled_refund": ("refund", None, [(S, (0, CANCELLED), None)]),
    "over_pay_writeback_failed": ("pay", Cls.over_collection, [(None, S, S)]),
    "over_pay_lost_notification": ("pay", Cls.over_collection, [(None, (0, UNSETTLED), S), (None, None, S)]),
    "over_pay_held_back": ("pay", Cls.over_collection, [(None, (0, NO_HIS), S)]),
    "over_refund_not_paid": ("refund", Cls.over_collection, [(S, None, None), (S, (0, UNSETTLED), None)]),
    "under_pay": ("pay", Cls.under_collection, [(S, None, None), (S, S, None), (S, S, (0, UNSETTLED))]),
    "under_refund_writeback_failed": ("refund", Cls.under_collection, [(None, S, S), (None, None, S)]),
    "amount_mismatch": ("pay", Cls.amount_mismatch, [(S, S, (1, SETTLED)), (S, (-1, SETTLED), S), ((7, 1), S, S)]),
    "amount_mismatch_no_his": ("refund", Cls.amount_mismatch, [(None, (5, NO_HIS), S)]),
    "status_mismatch": ("pay", Cls.status_mismatch, [(S, None, S), (S, (0, UNSETTLED), S), (None, S, None)]),
    "his_booked_held_back": ("pay", Cls.status_mismatch, [(S, (0, NO_HIS), S)]),
    "writeback_refused": ("refund", Cls.status_mismatch, [((0, APPLIED), S, S)]),
    "applied_refund_not_paid": ("refund", Cls.over_collection, [((0, APPLIED), (0, UNSETTLED), None)]),
}
ONE_SIDED_NAMES = {"over_collection", "under_collection", "status_mismatch"}


@dataclass
class Day:
    his: Side = field(default_factory=Side)
    platform: Side = field(default_factory=Side)
    channel: Side = field(default_factory=Side)
    records: dict[tuple[str, str], int] = field(default_factory=dict)

    def sides(self) -> dict[str, Side]:
        return {"his": self.his, "platform": self.platform, "channel": self.channel}


@dataclass
class World:
    days: list[Day]
    platform: dict[str, tuple[int, int]]
    """The platform's current record of each key (amount, flag): live, whatever the day."""
    expect: dict[str, str | None]
    """The final class of each key (None: matched), once every day is run and nothing waits any more."""


def put(world: World, day: int, key: str, shape: Shape, amount: int, seconds: int) -> None:
    d = world.days[day]
    for name, spec in zip(("his", "platform", "channel"), shape, strict=True):
        if spec is None:
            continue
        d.sides()[name].add(key, amount + spec[0], seconds, spec[1])
        if name == "platform":
            world.platform[key] = (amount + spec[0], spec[1])


def observations(d: Day, key: str, date: dt.date) -> list[Observation]:
    out = []
    for name, side in d.sides().items():
        for amount, _, flag in side.copies(key):
            out.append(Observation(name, date, amount, None, flag, None))
    return out


class Store:
    """The evidence store and the verdicts, as ``runs._gather`` / ``runs._judge_and_write`` keep them."""

    def __init__(self, world: World, suspense_days: int) -> None:
        self.world = world
        self.suspense_days = suspense_days
        self.obs: dict[str, dict[dt.date, list[Observation]]] = {}
        self.verdicts: dict[str, str | None] = {}
        self.run: set[dt.date] = set()

    def run_day(self, i: int) -> None:
        date = DAY0 + dt.timedelta(days=i)
        d = self.world.days[i]
        outcome = match(d.his, d.platform, d.channel)
        day_keys = d.his.entries.keys() | d.channel.entries.keys() | d.platform.entries.keys()
        stored = set(self.obs)
        stored_today = {k for k, by_day in self.obs.items() if date in by_day}
        waiting = {k for k, v in self.verdicts.items() if v == HELD}
        keep = outcome.unresolved | (day_keys & stored)
        for key in keep - stored:  # backfill from the days already run
            for other in self.run - {date}:
                found = observations(self.world.days[(other - DAY0).days], key, other)
                if found:
                    self.obs.setdefault(key, {})[other] = found
        for key in stored_today:
            self.obs[key].pop(date, None)
        for key in keep:
            self.obs.setdefault(key, {})[date] = observations(d, key, date)
        self.run.add(date)
        as_of = max(self.run)
        for key in keep | stored_today | waiting:
            items = [o for by_day in self.obs.get(key, {}).values() for o in by_day]
            p = self.world.platform.get(key)
            platform = Platform(p[0], p[1], {}) if p is not None else None
            self.verdicts[key] = judge(
                KeyEvidence(key, items, platform), as_of=as_of, suspense_days=self.suspense_days
            ).cls

    def open(self) -> dict[str, str]:
        return {k: v for k, v in self.verdicts.items() if v is not None}


seconds_of_day = st.integers(min_value=0, max_value=DAY_S - 1)
amounts = st.integers(min_value=1, max_value=5_000_000)


@st.composite
def worlds(draw):
    world = World([Day() for _ in range(NDAYS)], {}, {})
    n = 0

    def key(kind: str) -> str:
        nonlocal n
        n += 1
        return f"{kind}:T{n:08d}"

    for _ in range(draw(st.integers(min_value=0, max_value=30))):
        kind, cls, shapes = INJECTIONS[draw(st.sampled_from(sorted(INJECTIONS)))]
        k = key(kind)
        put(
            world,
            draw(st.integers(0, NDAYS - 1)),
            k,
            draw(st.sampled_from(shapes)),
            draw(amounts),
            draw(seconds_of_day),
        )
        world.expect[k] = cls.name if cls is not None else None

    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        k = key("pay")
        day, amount, seconds = draw(st.integers(0, NDAYS - 1)), draw(amounts), draw(seconds_of_day)
        put(world, day, k, (S, S, S), amount, seconds)
        side = draw(st.sampled_from(["his", "channel"]))
        other = draw(st.integers(0, NDAYS - 1))  # a second copy, the same day or another
        world.days[other].sides()[side].add(k, amount, seconds, SETTLED)
        world.expect[k] = "duplicate"

    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        # One entry whose sides arrive on different days (a payment at 22:00 booked by the HIS at 00:40, a
        # refund paid at 23:00 and written back the next morning): one match, never two exceptions.
        kind = draw(st.sampled_from(["pay", "refund"]))
        k = key(kind)
        amount = draw(amounts)
        first = draw(st.integers(0, NDAYS - 2))
        late = first + draw(st.integers(1, NDAYS - 1 - first))
        late_side = draw(st.sampled_from(["his", "channel"]))
        put(world, first, k, (None, S, S) if late_side == "his" else (S, S, None), amount, draw(seconds_of_day))
        put(world, late, k, (S, None, None) if late_side == "his" else (None, None, S), amount, draw(seconds_of_day))
        world.expect[k] = None
    return world


def final_expectation(world: World) -> dict[str, str]:
    return {k: v for k, v in world.expect.items() if v is not None}


@settings(max_examples=200, deadline=None)
@given(worlds(), st.permutations(range(NDAYS)), st.integers(min_value=0, max_value=3))
def test_days_in_any_order_find_exactly_the_injected_discrepancies(world, order, suspense_days):
    store = Store(world, suspense_days)
    for i in order:
        store.run_day(i)
    # Age what still waits: a later day run with nothing new on it (as tomorrow's run does).
    for extra in range(NDAYS, NDAYS + suspense_days + 1):
        world.days.append(Day())
        store.run_day(extra)
    assert store.open() == final_expectation(world)


@settings(max_examples=100, deadline=None)
@given(worlds(), st.permutations(range(NDAYS)), st.permutations(range(NDAYS)))
def test_the_same_days_in_two_orders_give_the_same_verdicts(world, first, second):
    a, b = Store(world, 2), Store(world, 2)
    for i in first:
        a.run_day(i)
    for i in second:
        b.run_day(i)
    assert a.open() == b.open()
    # Re-running any day changes nothing.
    for i in first:
        a.run_day(i)
    assert a.open() == b.open()


def test_a_one_sided_entry_waits_then_takes_its_real_class():
    world = World([Day() for _ in range(5)], {}, {})
    put(world, 0, "pay:P1", (None, S, S), 1200, 79_200)  # 22:00, the HIS never books it
    store = Store(world, 2)
    store.run_day(0)
    assert store.open() == {"pay:P1": HELD}
    store.run_day(1)
    assert store.open() == {"pay:P1": HELD}
    store.run_day(2)
    assert store.open() == {"pay:P1": "over_collection"}


def test_a_late_counterpart_is_one_entry_whichever_day_runs_first():
    for order in itertools.permutations([0, 1]):
        world = World([Day(), Day()], {}, {})
        put(world, 0, "pay:P1", (None, S, S), 1200, 79_200)  # paid 22:00
        put(world, 1, "pay:P1", (S, None, None), 1200, 2_400)  # booked 00:40
        store = Store(world, 2)
        for i in order:
            store.run_day(i)
        assert store.open() == {}, order
        for i in order:  # re-runs, in the same order again
            store.run_day(i)
        assert store.open() == {}, order


def test_a_duplicate_is_one_exception_not_a_match_too():
    d = Day()
    d.his.add("pay:P1", 500, 100)
    d.platform.add("pay:P1", 500, 100)
    d.channel.add("pay:P1", 500, 100)
    d.his.add("pay:P1", 500, 200)
    out = match(d.his, d.platform, d.channel)
    assert out.matched == 0 and out.unresolved == {"pay:P1"}
    assert classify("pay:P1", Evidence(his=[500, 500], channel=[500], platform=(500, SETTLED))) is Cls.duplicate
