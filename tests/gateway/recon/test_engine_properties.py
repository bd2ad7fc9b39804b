"""Property: for random days of HIS / platform / channel entries with discrepancies of every class injected,
the engine finds every injected discrepancy with its class and flags nothing else; cross-midnight entries are
held, clear themselves when the missing side turns up the next day, and are flagged with their real class once
they are ``suspense_days`` old."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.recon import suspense
from gateway.recon.engine import DAY_S, NO_HIS, SETTLED, UNSETTLED, Cls, Side, match

DAY0 = dt.date(2025, 3, 14)
WINDOW = 1800
EPOCH0 = 1_741_881_600  # 2025-03-14 00:00 Asia/Shanghai, as epoch seconds (only differences matter)

# What each injection puts on (his, platform, channel): None = absent, else (amount delta, flag).
Shape = tuple[tuple[int, int] | None, tuple[int, int] | None, tuple[int, int] | None]
S = (0, SETTLED)
INJECTIONS: dict[str, tuple[str, Cls | None, list[Shape]]] = {
    "matched_pay": ("pay", None, [(S, S, S)]),
    "matched_refund": ("refund", None, [(S, S, S)]),
    "refund_without_his": ("refund", None, [(None, (0, NO_HIS), S)]),
    "over_pay_writeback_failed": ("pay", Cls.over_collection, [(None, S, S)]),
    "over_pay_lost_notification": ("pay", Cls.over_collection, [(None, (0, UNSETTLED), S), (None, None, S)]),
    "over_refund_not_paid": ("refund", Cls.over_collection, [(S, None, None), (S, (0, UNSETTLED), None)]),
    "under_pay": ("pay", Cls.under_collection, [(S, None, None), (S, S, None), (S, S, (0, UNSETTLED))]),
    "under_refund_writeback_failed": ("refund", Cls.under_collection, [(None, S, S), (None, None, S)]),
    "amount_mismatch": ("pay", Cls.amount_mismatch, [(S, S, (1, SETTLED)), (S, (-1, SETTLED), S), ((7, 1), S, S)]),
    "amount_mismatch_no_his": ("refund", Cls.amount_mismatch, [(None, (5, NO_HIS), S)]),
    "status_mismatch": ("pay", Cls.status_mismatch, [(S, None, S), (S, (0, UNSETTLED), S), (None, S, None)]),
}


@dataclass
class Day:
    his: Side = field(default_factory=Side)
    platform: Side = field(default_factory=Side)
    channel: Side = field(default_factory=Side)

    def sides(self) -> dict[str, Side]:
        return {"his": self.his, "platform": self.platform, "channel": self.channel}


def put(day: Day, key: str, shape: Shape, amount: int, seconds: int) -> None:
    for side, spec in zip((day.his, day.platform, day.channel), shape, strict=True):
        if spec is not None:
            side.add(key, amount + spec[0], seconds, spec[1])


def run_day(day: Day, pool: dict[str, suspense.PoolItem], date: dt.date, suspense_days: int):
    start = EPOCH0 + (date - DAY0).days * DAY_S
    suspense.carry(pool, day.sides(), start)
    outcome = match(day.his, day.platform, day.channel, window_s=WINDOW)
    res = suspense.resolve(pool, outcome, date, suspense_days)
    for key in res.cleared + list(res.flagged):
        pool.pop(key)
    for key in outcome.held:
        if key not in pool:
            entries = {name: (e[0], start + e[1], e[2]) for name, s in day.sides().items() if (e := s.entries.get(key))}
            pool[key] = suspense.PoolItem(key, date, entries)
    return outcome, res


inner_seconds = st.integers(min_value=0, max_value=DAY_S - WINDOW - 1)
late_seconds = st.integers(min_value=DAY_S - WINDOW, max_value=DAY_S - 1)
amounts = st.integers(min_value=1, max_value=5_000_000)


@st.composite
def days(draw):
    d0, d1, d2 = Day(), Day(), Day()
    expect0: dict[str, Cls] = {}
    expect_held0: dict[str, Cls] = {}
    expect1: dict[str, Cls] = {}
    expect2: dict[str, Cls] = {}
    must_clear1: set[str] = set()
    n = 0

    def key(kind: str) -> str:
        nonlocal n
        n += 1
        return f"{kind}:T{n:08d}"

    for _ in range(draw(st.integers(min_value=0, max_value=40))):
        kind, cls, shapes = INJECTIONS[draw(st.sampled_from(sorted(INJECTIONS)))]
        k = key(kind)
        put(d0, k, draw(st.sampled_from(shapes)), draw(amounts), draw(inner_seconds))
        if cls is not None:
            expect0[k] = cls

    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        k = key("pay")
        amount, seconds = draw(amounts), draw(inner_seconds)
        put(d0, k, (S, S, S), amount, seconds)
        side = draw(st.sampled_from(["his", "platform", "channel"]))
        d0.sides()[side].add(k, amount, seconds + 1, SETTLED)
        expect0[k] = Cls.duplicate

    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        # Paid at the channel just before midnight; the HIS books it just after: clears itself on day 1.
        k = key("pay")
        amount = draw(amounts)
        put(d0, k, (None, S, S), amount, draw(late_seconds))
        put(d1, k, (S, None, None), amount, draw(st.integers(min_value=0, max_value=600)))
        expect_held0[k] = Cls.over_collection
        must_clear1.add(k)

    suspense_days = draw(st.integers(min_value=1, max_value=3))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        # Near midnight and never completed: held until it is suspense_days old, then its real class.
        kind = draw(st.sampled_from(["pay", "refund"]))
        k = key(kind)
        shape = draw(st.sampled_from([(S, None, None), (None, S, S), (None, None, S)]))
        put(d0, k, shape, draw(amounts), draw(late_seconds))
        his_only = shape[0] is not None
        real = Cls.under_collection if (kind == "pay") == his_only else Cls.over_collection
        expect_held0[k] = real
        (expect1 if suspense_days == 1 else expect2 if suspense_days == 2 else {})[k] = real

    for _ in range(draw(st.integers(min_value=0, max_value=10))):
        put(d1, key("pay"), (S, S, S), draw(amounts), draw(inner_seconds))
    return d0, d1, d2, expect0, expect_held0, expect1, expect2, must_clear1, suspense_days


@settings(max_examples=300, deadline=None)
@given(days())
def test_every_injected_discrepancy_is_found_with_its_class_and_nothing_else(case):
    d0, d1, d2, expect0, expect_held0, expect1, expect2, must_clear1, suspense_days = case
    pool: dict[str, suspense.PoolItem] = {}

    out0, _ = run_day(d0, pool, DAY0, suspense_days)
    assert out0.flagged == expect0
    assert out0.held == expect_held0

    out1, res1 = run_day(d1, pool, DAY0 + dt.timedelta(days=1), suspense_days)
    assert out1.flagged == expect1
    assert must_clear1 <= set(res1.cleared)
    assert set(out1.held) == set(expect_held0) - must_clear1 - set(expect1)

    out2, _ = run_day(d2, pool, DAY0 + dt.timedelta(days=2), suspense_days)
    assert out2.flagged == expect2
    if suspense_days <= 2:
        assert out2.held == {}


def test_a_cross_midnight_payment_clears_itself_the_next_day():
    pool: dict[str, suspense.PoolItem] = {}
    d0, d1 = Day(), Day()
    put(d0, "pay:P1", (None, S, S), 1200, DAY_S - 2)
    put(d1, "pay:P1", (S, None, None), 1200, 3)
    out0, _ = run_day(d0, pool, DAY0, 2)
    assert out0.flagged == {} and out0.held == {"pay:P1": Cls.over_collection}
    out1, res1 = run_day(d1, pool, DAY0 + dt.timedelta(days=1), 2)
    assert out1.flagged == {} and out1.held == {} and res1.cleared == ["pay:P1"] and pool == {}
    assert out1.matched == 1


def test_a_duplicate_is_one_exception_not_a_match_too():
    d = Day()
    put(d, "pay:P1", (S, S, S), 500, 100)
    d.his.add("pay:P1", 500, 200)
    out = match(d.his, d.platform, d.channel, window_s=WINDOW)
    assert out.flagged == {"pay:P1": Cls.duplicate} and out.matched == 0
