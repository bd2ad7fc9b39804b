"""A seeded, reproducible day: who pays what, when, by which route, which refunds follow, and which faults hit it.

Everything here is drawn from one ``random.Random(seed)``, so the same seed, order count and mix give the same
orders, the same HIS fixtures (patients, schedules, bills, inpatients), the same refunds and the same faults on
the same orders — the report of two runs can be compared line by line. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sandbox.day.faults import FaultKind

SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
HIS_DOWN_MIN = 20
"""Longer than the HIS's 15-minute slot lock, so that a registration locked before the outage loses its lock."""
PARTITION_MIN = 10
LATE_HOURS = 3
STUCK_HOURS = 5
ABNORMAL_HOURS = 1
MAX_WINDOWS_PER_KIND = 4
"""At most this many HIS outages (and as many partitions) in one day, however long the day is."""
ORDERS_PER_ROUND = 300
"""One round of faults (every kind once) per this many orders."""

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华"
DEPARTMENTS = (
    "内科",
    "外科",
    "儿科",
    "妇产科",
    "眼科",
    "口腔科",
    "皮肤科",
    "骨科",
    "中医科",
    "急诊科",
    "检验科",
    "放射科",
)
FEES_FEN = (500, 1000, 1500, 2000, 3000, 5000)


class Kind(StrEnum):
    registration = "registration"
    """挂号: a registration paid on the phone (WeChat JSAPI / Alipay), sometimes with a slot locked at a kiosk."""
    charge = "charge"
    """门诊缴费: outpatient bills paid by scanning a QR code."""
    prepay = "prepay"
    """住院预交金: an inpatient deposit."""
    codepay = "codepay"
    """自助机扫码付: outpatient bills paid at a kiosk with the patient's barcode."""
    cancel = "cancel"
    """An order the patient never pays; the app closes it."""


ORDER_KINDS = tuple(Kind)


@dataclass(frozen=True)
class Mix:
    """Weights of the order kinds, the share of payments made by Alipay, and how often refunds follow (percent of
    the payments that can have them)."""

    registration: int = 25
    charge: int = 30
    prepay: int = 10
    codepay: int = 20
    cancel: int = 15
    alipay: int = 40
    partial_refund: int = 30
    """Insurance settled at a kiosk: part of an outpatient payment (or a deposit) goes back."""
    full_refund: int = 15
    """A registration cancelled (退号), or what is left of an outpatient payment."""

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``registration=25,charge=30,...``; names not given keep their defaults."""
        values: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, number = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in cls.__dataclass_fields__:
                raise ValueError(
                    f"mix: {part!r} is not NAME=NUMBER with NAME one of {', '.join(cls.__dataclass_fields__)}"
                )
            if not number.strip().isdigit():
                raise ValueError(f"mix: {name} must be a whole number, not {number.strip()!r}")
            values[name] = int(number)
        mix = cls(**values)
        for name in ("alipay", "partial_refund", "full_refund"):
            if getattr(mix, name) > 100:
                raise ValueError(f"mix: {name} is a percentage (0-100)")
        if not any(getattr(mix, k.value) for k in ORDER_KINDS):
            raise ValueError("mix: give at least one order kind a weight")
        return mix

    def text(self) -> str:
        return ",".join(f"{name}={getattr(self, name)}" for name in self.__dataclass_fields__)


@dataclass(frozen=True)
class PlannedRefund:
    no: str
    """The business refund number."""
    at: dt.datetime
    amount_fen: int
    """0 means "whatever is left of the payment" (a full refund after a partial one)."""
    reason: str


@dataclass(frozen=True)
class PlannedOrder:
    index: int
    no: str
    """The business order number."""
    kind: Kind
    channel: str
    scene: str
    at: dt.datetime
    """When the patient starts: the kiosk locks the slot (if it does) and the app creates the order."""
    pay_at: dt.datetime
    """When the payer pays (codepay: when the barcode is scanned, which is when the order is created)."""
    amount_fen: int
    patient_id: str
    schedule_id: str | None = None
    bill_nos: tuple[str, ...] = ()
    inpatient_no: str | None = None
    auth_code: str | None = None
    userpaying: bool = False
    """Codepay: the payer must enter a password first (the channel answers USERPAYING, then paid)."""
    lock: bool = False
    close_at: dt.datetime | None = None
    refunds: tuple[PlannedRefund, ...] = ()

    @property
    def business_type(self) -> str:
        return "charge" if self.kind in (Kind.codepay, Kind.cancel) else self.kind.value

    @property
    def paid(self) -> bool:
        return self.kind is not Kind.cancel


@dataclass(frozen=True)
class PlannedFault:
    id: int
    kind: FaultKind
    at: dt.datetime
    until: dt.datetime | None = None
    """End of an outage or partition; when a held refund is released; when a late callback is due."""
    target: int | None = None
    """The order (index) a targeted fault hits."""
    refund: str | None = None
    """The business refund number a refund fault hits."""

    def describe(self, orders: tuple[PlannedOrder, ...]) -> str:
        when = f"{self.at:%H:%M:%S}" + (f".{self.at.microsecond // 100000}" if self.at.microsecond else "")
        span = f"–{self.until:%H:%M}" if self.until is not None and self.target is None else ""
        what = f" {orders[self.target].no}" if self.target is not None else ""
        refund = f" refund {self.refund}" if self.refund else ""
        return f"#{self.id:<3} {self.kind.value:<18} {when}{span}{what}{refund}"


@dataclass(frozen=True)
class Plan:
    seed: int
    day: dt.date
    mix: Mix
    orders: tuple[PlannedOrder, ...]
    faults: tuple[PlannedFault, ...]
    fixtures: dict[str, list[dict[str, Any]]] = field(repr=False)

    def order(self, no: str) -> PlannedOrder:
        return self.orders[int(no.rsplit("-", 1)[1])]


def at(day: dt.date, hour: int, minute: int = 0, second: float = 0.0) -> dt.datetime:
    whole = int(second)
    return dt.datetime(day.year, day.month, day.day, hour, minute, whole, round((second - whole) * 1e6), SHANGHAI)


def _moment(rng: random.Random, day: dt.date) -> dt.datetime:
    """A time a patient pays: a busy morning, an afternoon, a quieter evening."""
    start, end = rng.choices([(7.5, 12.0), (13.5, 17.5), (17.5, 23.5)], weights=[50, 35, 15])[0]
    hours = rng.uniform(start, end)
    return at(day, 0) + dt.timedelta(seconds=round(hours * 3600, 1))


class _Builder:
    def __init__(self, seed: int, day: dt.date, mix: Mix) -> None:
        self.rng = random.Random(seed)
        self.seed, self.day, self.mix = seed, day, mix
        self.patients: list[dict[str, Any]] = []
        self.bills: list[dict[str, Any]] = []
        self.schedules = [
            {
                "schedule_id": f"SS{i + 1:02d}",
                "dept_name": DEPARTMENTS[i],
                "doctor_name": f"{SURNAMES[i]}医生",
                "period": "全天",
                "fee_fen": FEES_FEN[i % len(FEES_FEN)],
                "capacity": 0,
            }
            for i in range(len(DEPARTMENTS))
        ]
        self.inpatients: list[dict[str, Any]] = []

    def patient(self) -> str:
        n = len(self.patients) + 1
        name = self.rng.choice(SURNAMES) + "".join(self.rng.choice(GIVEN) for _ in range(self.rng.randint(1, 2)))
        self.patients.append(
            {"patient_id": f"SP{n:06d}", "name": name, "gender": self.rng.choice("MF"), "card_no": f"SC{n:06d}"}
        )
        return f"SP{n:06d}"

    def returning_or_new_patient(self) -> str:
        if self.patients and self.rng.random() < 0.3:
            return str(self.rng.choice(self.patients)["patient_id"])
        return self.patient()

    def new_bills(self, index: int, patient_id: str) -> tuple[tuple[str, ...], int]:
        nos, total = [], 0
        for k in range(self.rng.choices([1, 2, 3], weights=[50, 35, 15])[0]):
            amount = self.rng.randint(5, 600) * 50 + self.rng.choice([0, 0, 0, 25, 80])
            no = f"SB{index:06d}{k}"
            self.bills.append(
                {
                    "bill_no": no,
                    "patient_id": patient_id,
                    "dept_name": self.rng.choice(DEPARTMENTS),
                    "amount_fen": amount,
                }
            )
            nos.append(no)
            total += amount
        return tuple(nos), total

    def inpatient(self) -> tuple[str, str]:
        if not self.inpatients or self.rng.random() < 0.4:
            patient_id = self.patient()
            no = f"SZ{len(self.inpatients) + 1:05d}"
            self.inpatients.append({"inpatient_no": no, "patient_id": patient_id, "ward": "住院部", "balance_fen": 0})
            return no, patient_id
        chosen = self.rng.choice(self.inpatients)
        return str(chosen["inpatient_no"]), str(chosen["patient_id"])

    def auth_code(self, channel: str) -> str:
        prefix = "13" if channel == "wechat" else "28"
        return prefix + "".join(self.rng.choice("0123456789") for _ in range(16))

    def order(self, index: int, kind: Kind, when: dt.datetime, **overrides: Any) -> PlannedOrder:
        rng, mix = self.rng, self.mix
        channel = "alipay" if rng.randrange(100) < mix.alipay else "wechat"
        no = f"D{self.seed}-{index:06d}"
        values: dict[str, Any] = {"index": index, "no": no, "kind": kind, "channel": channel, "at": when}
        if kind is Kind.registration:
            schedule = rng.choice(self.schedules)
            schedule["capacity"] += 1
            values.update(schedule_id=schedule["schedule_id"], amount_fen=schedule["fee_fen"])
            values.update(
                patient_id=self.returning_or_new_patient(), scene="jsapi" if channel == "wechat" else "native"
            )
        elif kind is Kind.prepay:
            inpatient_no, patient_id = self.inpatient()
            amount = rng.choice([50000, 100000, 200000, 300000, 500000]) + rng.randint(0, 20) * 1000
            values.update(inpatient_no=inpatient_no, patient_id=patient_id, amount_fen=amount, scene="native")
        else:
            patient_id = self.returning_or_new_patient()
            bill_nos, total = self.new_bills(index, patient_id)
            values.update(patient_id=patient_id, bill_nos=bill_nos, amount_fen=total)
            if kind is Kind.codepay:
                values.update(scene="codepay", auth_code=self.auth_code(channel), userpaying=rng.random() < 0.25)
            else:
                values.update(scene="native")
        if kind is Kind.cancel:
            values["close_at"] = when + dt.timedelta(minutes=rng.randint(3, 20))
        values.update(overrides)
        values.setdefault("pay_at", values["at"])
        order = PlannedOrder(**values)
        return order if overrides.get("refunds") is not None else self.with_refunds(order)

    def with_refunds(self, order: PlannedOrder) -> PlannedOrder:
        rng, mix = self.rng, self.mix
        refunds: list[PlannedRefund] = []
        latest = at(self.day + dt.timedelta(days=1), 10)
        when = order.pay_at
        partial = order.kind in (Kind.charge, Kind.codepay) or (order.kind is Kind.prepay and rng.random() < 0.5)
        if partial and rng.randrange(100) < mix.partial_refund and order.amount_fen >= 200:
            when += dt.timedelta(minutes=rng.randint(40, 180))
            share = rng.uniform(0.2, 0.8) if order.kind is not Kind.prepay else rng.uniform(0.1, 0.6)
            refunds.append(
                PlannedRefund(
                    f"{order.no}-R1",
                    min(when, latest),
                    max(1, int(order.amount_fen * share)),
                    "医保结算" if order.kind is not Kind.prepay else "出院退预交金",
                )
            )
        full = order.kind in (Kind.registration, Kind.charge, Kind.codepay)
        if full and rng.randrange(100) < mix.full_refund:
            when += dt.timedelta(minutes=rng.randint(30, 240))
            reason = "退号" if order.kind is Kind.registration else "患者退费"
            refunds.append(PlannedRefund(f"{order.no}-R{len(refunds) + 1}", min(when, latest), 0, reason))
        return PlannedOrder(**{**order.__dict__, "refunds": tuple(refunds)})


def build(
    seed: int,
    orders: int,
    mix: Mix,
    day: dt.date,
    *,
    fault_rounds: int | None = None,
    kinds: frozenset[FaultKind] | None = None,
) -> Plan:
    """The day's plan: ``orders`` orders in all, those the faults need of their own (a registration locked before
    an outage, the payment at 23:59:59.9) included. ``fault_rounds`` (default: one per ``ORDERS_PER_ROUND``
    orders) injects every kind in ``kinds`` (default: all) that many times, HIS outages and partitions at most
    ``MAX_WINDOWS_PER_KIND`` times."""
    if orders < 1:
        raise ValueError("a day has at least one order")
    b = _Builder(seed, day, mix)
    rng = b.rng
    weights = [getattr(mix, k.value) for k in ORDER_KINDS]
    kinds = frozenset(FaultKind) if kinds is None else kinds
    rounds = max(1, orders // ORDERS_PER_ROUND) if fault_rounds is None else fault_rounds
    outages = min(rounds, MAX_WINDOWS_PER_KIND) if FaultKind.his_down in kinds else 0
    extras = (
        (outages if FaultKind.slot_lock_expired in kinds else 0)
        + (FaultKind.midnight_payment in kinds)
        + (FaultKind.midnight_refund in kinds)
    )
    moments = sorted(_moment(rng, day) for _ in range(max(1, orders - extras)))
    planned = [b.order(i, rng.choices(ORDER_KINDS, weights)[0], when) for i, when in enumerate(moments)]
    faults: list[PlannedFault] = []
    taken: set[int] = set()

    def add(kind: FaultKind, when: dt.datetime, **values: Any) -> PlannedFault:
        fault = PlannedFault(len(faults) + 1, kind, when, **values)
        faults.append(fault)
        return fault

    def extra(kind: Kind, when: dt.datetime, **overrides: Any) -> PlannedOrder:
        order = b.order(len(planned), kind, when, refunds=(), **overrides)
        planned.append(order)
        taken.add(order.index)
        return order

    def target(after: dt.datetime, wanted: Any, *, anywhere: bool = False) -> PlannedOrder | None:
        """The first order from ``after`` on that ``wanted`` accepts (with ``anywhere``, then from the start)."""
        candidates = [o for o in planned if o.index not in taken and wanted(o)]
        later = [o for o in candidates if o.at >= after]
        chosen = later[0] if later else (candidates[0] if anywhere and candidates else None)
        if chosen is not None:
            taken.add(chosen.index)
        return chosen

    slots = [
        at(day, 8) + dt.timedelta(hours=14) * (i + 0.5) / max(1, rounds * len(kinds))
        for i in range(rounds * len(kinds))
    ]
    rng.shuffle(slots)
    windows = {FaultKind.his_down: 0, FaultKind.partition: 0}
    per_kind = min(rounds, MAX_WINDOWS_PER_KIND)

    def window_start(kind: FaultKind, n: int) -> dt.datetime:
        """Outages and partitions never overlap: each has its share of the day, the outage early in it."""
        return at(day, 8) + dt.timedelta(hours=14) * (n + (0.3 if kind is FaultKind.his_down else 0.8)) / per_kind

    spans = [
        (window_start(kind, n), minutes)
        for kind, minutes in ((FaultKind.his_down, HIS_DOWN_MIN), (FaultKind.partition, PARTITION_MIN))
        if kind in kinds
        for n in range(per_kind)
    ]

    def calm(when: dt.datetime) -> bool:
        """Not in an outage or a partition (nor just before one): a fault aimed at one HIS call must reach it."""
        return all(
            not start - dt.timedelta(minutes=5) <= when <= start + dt.timedelta(minutes=minutes + 5)
            for start, minutes in spans
        )

    for r in range(rounds):
        for kind in sorted(kinds):
            when = slots.pop()
            if kind in windows:
                if windows[kind] >= per_kind:
                    continue
                when = window_start(kind, windows[kind])
                windows[kind] += 1
                minutes = HIS_DOWN_MIN if kind is FaultKind.his_down else PARTITION_MIN
                add(kind, when, until=when + dt.timedelta(minutes=minutes))
                if kind is FaultKind.his_down and FaultKind.slot_lock_expired in kinds:
                    lock_at = when - dt.timedelta(minutes=2)
                    order = extra(Kind.registration, lock_at, lock=True, pay_at=when + dt.timedelta(minutes=1))
                    order = PlannedOrder(**{**order.__dict__, "channel": "wechat", "scene": "jsapi"})
                    planned[order.index] = order
                    add(FaultKind.slot_lock_expired, lock_at, target=order.index)
            elif kind is FaultKind.midnight_refund:
                if r == 0:
                    order = extra(Kind.charge, at(day, 23, 20), channel="wechat", scene="native")
                    refund = PlannedRefund(
                        f"{order.no}-R1", at(day, 23, 59, 30), max(1, order.amount_fen // 2), "医保结算"
                    )
                    planned[order.index] = order = PlannedOrder(**{**order.__dict__, "refunds": (refund,)})
                    until = at(day + dt.timedelta(days=1), 0, 0, 40)
                    add(kind, refund.at, until=until, target=order.index, refund=refund.no)
            elif kind is FaultKind.midnight_payment:
                if r == 0:
                    order = extra(Kind.charge, at(day, 23, 59, 50), pay_at=at(day, 23, 59, 59.9))
                    add(kind, order.pay_at, target=order.index)
            elif kind is FaultKind.slot_lock_expired:
                continue  # rides on an outage
            elif kind in (FaultKind.refund_stuck, FaultKind.refund_abnormal, FaultKind.writeback_refused):
                wechat_only = kind in (FaultKind.refund_abnormal, FaultKind.refund_stuck)  # as the issue has them
                hit = target(
                    when,
                    lambda o, w=wechat_only: (
                        bool(o.refunds) and (o.channel == "wechat" or not w) and calm(o.refunds[0].at)
                    ),
                )
                if hit is None:
                    hit = extra(Kind.charge, when, channel="wechat", scene="native")
                    hit = b.with_refunds(hit)
                    if not hit.refunds:
                        hit = PlannedOrder(
                            **{
                                **hit.__dict__,
                                "refunds": (
                                    PlannedRefund(
                                        f"{hit.no}-R1",
                                        hit.pay_at + dt.timedelta(minutes=90),
                                        max(1, hit.amount_fen // 3),
                                        "医保结算",
                                    ),
                                ),
                            }
                        )
                    planned[hit.index] = hit
                refund = hit.refunds[0]
                hours = {FaultKind.refund_stuck: STUCK_HOURS, FaultKind.refund_abnormal: ABNORMAL_HOURS}.get(kind)
                until = refund.at + dt.timedelta(hours=hours) if hours else None
                add(kind, refund.at, until=until, target=hit.index, refund=refund.no)
            else:
                # A barcode payment is paid by the create call itself, before a fault could be aimed at its trade
                # number, and sends no callback: the payment faults hit the other kinds. A lost HIS reply and a
                # killed agent hit registrations and deposits first, which the HIS would book twice if resent.
                hit = None
                if kind in (FaultKind.his_drop_reply, FaultKind.bridge_kill):
                    hit = target(
                        when, lambda o: o.kind in (Kind.registration, Kind.prepay) and calm(o.pay_at), anywhere=True
                    )
                hit = hit or target(when, lambda o: o.paid and o.kind is not Kind.codepay and calm(o.pay_at))
                if hit is None:
                    hit = extra(Kind.charge, when, scene="native")
                until = hit.pay_at + dt.timedelta(hours=LATE_HOURS) if kind is FaultKind.notify_late else None
                add(kind, hit.pay_at, until=until, target=hit.index)
    b.schedules = [s for s in b.schedules if s["capacity"]]
    for s in b.schedules:
        s["capacity"] += 10
    fixtures = {"patients": b.patients, "schedules": b.schedules, "bills": b.bills, "inpatients": b.inpatients}
    ordered = sorted(faults, key=lambda f: (f.at, f.id))
    numbered = tuple(PlannedFault(**{**f.__dict__, "id": n}) for n, f in enumerate(ordered, 1))
    return Plan(seed, day, mix, tuple(planned), numbered, fixtures)
