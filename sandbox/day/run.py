"""The orchestration of a simulated day: the plan's events in the order of the shared clock.

Time. The day starts at 07:00 and the clock then runs at its normal pace, moved forward by the orchestrator to
each event. While work is in flight it moves at most ``STEP_S`` at a time and no faster than ``MAX_SPEED`` (a
request signed before a jump is checked after it, inside the 300 s signature windows every party keeps); during an
outage or a partition it moves in ``WINDOW_STEP_S`` steps at ``WINDOW_SPEED``, so the bridge's back-off and
breaker and the gateway's retries see the minutes pass; across a quiet stretch it first waits for the stack to
settle, letting the clock tick forward meanwhile, and then jumps. So a day with hours-late callbacks and a
midnight crossing takes minutes, and every process sees the same time.

Then the mornings after: at 11:30 of the next day the day is reconciled; each following morning every day so far
is reconciled again (the new one for the first time: the items that crossed midnight, finance's refunds) and
finance works what is open in the console, until a morning leaves finance nothing to do. Then the ledgers are
read and checked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from bridge import clock
from sandbox.day import books, checks
from sandbox.day.actors import ActorError, HisOperator, HospitalApp, Kiosk, NotifyReceiver, Payer
from sandbox.day.faults import FaultKind
from sandbox.day.finance import Console, ConsoleException
from sandbox.day.plan import Kind, Plan, PlannedFault, PlannedOrder, PlannedRefund, at
from sandbox.day.report import Activity
from sandbox.day.stack import STAFF, SUSPENSE_DAYS, Stack

STEP_S = 120.0
WINDOW_STEP_S = 60.0
MAX_SPEED = 500.0
"""Simulated seconds per real second, at most, while flows are in flight (a request half a second in transit sees
under 300 s pass)."""
WINDOW_SPEED = 100.0
"""The same during an outage or a partition, when the gateway's calls to the bridge take seconds to time out."""
TICK_S = 10.0
TICK_REAL_S = 0.1
SETTLE_TIMEOUT_S = 240.0
RETRY_AFTER = dt.timedelta(minutes=10)
RETRIES = 30
RECON_AT = (11, 30)
MORNINGS = SUSPENSE_DAYS + 3
"""At most this many mornings finance works the console after the day (enough for every entry to stop waiting);
the last reconciliation follows the last of them."""
LATENCY_BEFORE_KILL_MS = 3000
"""How long the HIS holds the commit a SIGKILL lands on: long enough for the kill to find it in flight."""
SOAP_COMMIT = {"registration": "CommitRegistration", "charge": "CommitCharge", "prepay": "CommitPrepay"}
SUBJECTS = {
    Kind.registration: "挂号费",
    Kind.charge: "门诊缴费",
    Kind.prepay: "住院预交金",
    Kind.codepay: "自助机缴费",
    Kind.cancel: "门诊缴费",
}
DONE_REFUND = frozenset({"completed", "rejected", "failed"})


@dataclass
class Tracked:
    order: PlannedOrder
    out_trade_no: str | None = None
    paid: bool = False
    close_requested: bool = False
    active: bool = False
    held: set[str] = field(default_factory=set)
    """Business refund numbers a fault holds at the channel until it releases them."""
    last_flow: asyncio.Task[None] | None = None
    """The order's latest flow: the next one waits for it (an app does not refund an order it is still creating)."""


@dataclass(order=True)
class Event:
    at: dt.datetime
    seq: int
    name: str = field(compare=False)
    action: Callable[[], Awaitable[None]] = field(compare=False)
    flow: bool = field(compare=False, default=True)
    """A flow runs as its own task (a patient paying, an app asking for a refund); other events run inline."""
    order: int | None = field(compare=False, default=None)
    first: Callable[[], Awaitable[None]] | None = field(compare=False, default=None)
    """What must happen at the event's time before anything else does (a kiosk locking a slot)."""


class Day:
    def __init__(
        self,
        plan: Plan,
        stack: Stack,
        clock_file: clock.ClockFile,
        *,
        concurrency: int = 8,
        rate: float = 0.0,
        out: TextIO = sys.stderr,
    ) -> None:
        self.plan, self.stack, self.clock = plan, stack, clock_file
        self.rate = rate
        self.out = out
        self.tracked = {o.index: Tracked(o) for o in plan.orders}
        self.flows = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.events: list[Event] = []
        self._seq = itertools.count()
        self.windows = 0
        self.flow_errors: list[str] = []
        self.activity = Activity(
            gateways=len(stack.gateway_urls), database="postgresql" if stack.postgres else "sqlite"
        )
        self.started = time.monotonic()
        self.created = 0
        self.by_target: dict[int, PlannedFault] = {f.target: f for f in plan.faults if f.target is not None}
        self.his_rules: dict[int, int] = {}
        """Fault id → the HIS rule it added (outages, the latency a kill lands on)."""
        self.rules: dict[int, tuple[str, int]] = {}
        """Fault id → the sandbox rule that injects it (``his`` or ``channels``, rule id): fired once taken."""
        self.fired: set[int] = set()
        """Faults known to have happened (a window opened, a kill landed, a held refund released, a payment at
        23:59:59.9); rule-based ones are confirmed at the end from the sandboxes' remaining rules."""
        self.locks: dict[int, str] = {}
        self._speed_origin: tuple[float, float] | None = None
        """(real, simulated) time when work was last seen in flight after a quiet spell: the speed limit's origin."""
        self.holds = 0
        """While above 0 the clock is not moved: a SIGKILL must land while the HIS still holds the commit."""
        self.unheld = asyncio.Event()
        self.unheld.set()

    # --- the actors ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Day:
        assert self.stack.app_key is not None and self.stack.gateway_key is not None
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self.app = HospitalApp(self.stack.gateway_urls, self.stack.app_key, self.stack.gateway_key)
        self.payer = Payer(self.stack.channels_admin_url, self.session)
        self.his = HisOperator(self.stack.his_admin_url, self.session)
        self.kiosk = Kiosk(self.stack.his_url, self.session)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.app.close()
        await self.session.close()

    def say(self, line: str) -> None:
        sim = dt.datetime.fromtimestamp(clock.now(), self.plan.orders[0].at.tzinfo)
        print(f"[{time.monotonic() - self.started:6.1f}s | {sim:%m-%d %H:%M:%S}] {line}", file=self.out, flush=True)

    def fail(self, what: str) -> None:
        self.flow_errors.append(what)
        self.say(f"! {what}")

    # --- events and time -----------------------------------------------------------------------------------

    def schedule(
        self,
        when: dt.datetime,
        name: str,
        action: Callable[[], Awaitable[None]],
        *,
        flow: bool = True,
        order: int | None = None,
        first: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        heapq.heappush(self.events, Event(when, next(self._seq), name, action, flow, order, first))

    def _plan_events(self) -> None:
        for o in self.plan.orders:
            lock = (lambda o=o: self.lock(o)) if o.lock else None
            fault = self.by_target.get(o.index)
            # The payment at 23:59:59.9 is made by the orchestrator itself, on time, not queued behind other flows.
            exact = not (fault is not None and fault.kind is FaultKind.midnight_payment)
            self.schedule(o.at, f"create {o.no}", lambda o=o: self.create(o), order=o.index, first=lock, flow=exact)
            if o.pay_at > o.at and o.paid and o.kind is not Kind.codepay:
                self.schedule(o.pay_at, f"pay {o.no}", lambda o=o: self.pay(o), order=o.index, flow=exact)
            if o.close_at is not None:
                self.schedule(o.close_at, f"close {o.no}", lambda o=o: self.close(o), order=o.index)
            for r in o.refunds:
                self.schedule(r.at, f"refund {r.no}", lambda o=o, r=r: self.refund(o, r, 0), order=o.index)
        for f in self.plan.faults:
            if f.kind in (FaultKind.his_down, FaultKind.partition):
                assert f.until is not None
                self.schedule(f.at, f"{f.kind} starts", lambda f=f: self.window(f, True), flow=False)
                self.schedule(f.until, f"{f.kind} ends", lambda f=f: self.window(f, False), flow=False)
            elif f.kind is FaultKind.midnight_refund and f.until is not None:
                self.schedule(f.until, "the HIS's nightly jobs end", lambda f=f: self._nightly_jobs_end(f), flow=False)
            elif f.kind in (FaultKind.refund_stuck, FaultKind.refund_abnormal) and f.until is not None:
                self.schedule(f.until, f"release {f.refund}", lambda f=f: self.release(f, 0), order=f.target)

    async def jump(self, seconds: float) -> None:
        """Move the clock forward, no faster than ``MAX_SPEED`` (``WINDOW_SPEED`` during an outage or a
        partition) while anything of ours is in flight: a request signed before a jump and checked after it must
        stay inside the 300 s signature windows, and a lease inside its ``lease_s``, even when the machine is slow."""
        if self.tasks or self.windows:
            speed = WINDOW_SPEED if self.windows else MAX_SPEED
            real, sim = time.monotonic(), self.clock.now()
            if self._speed_origin is None:
                self._speed_origin = (real, sim)
            real0, sim0 = self._speed_origin
            if (wait := real0 + (sim + seconds - sim0) / speed - real) > 0:
                await asyncio.sleep(wait)
                seconds = max(0.0, seconds - wait)  # the clock ran on meanwhile
        else:
            self._speed_origin = None
        self.clock.advance(seconds)

    async def advance_to(self, when: dt.datetime) -> None:
        await self.unheld.wait()
        target = when.timestamp()
        while (gap := target - self.clock.now()) > 0:
            if gap <= STEP_S:
                await self.jump(gap)
                break
            if self.windows:
                await self.jump(WINDOW_STEP_S)
                continue
            await self.settle(until=target - STEP_S)
            await self.jump(max(0.0, target - self.clock.now()))
            break

    async def settle(self, until: float, *, strict: bool = False) -> bool:
        """Wait until every flow has returned and the stack has finished what they started, letting the clock
        tick forward (never past ``until``) so that retries and queries due later come round. ``strict``: the
        apps' closes must have gone through too. False if it did not settle in time."""
        await self._flows_done()
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            pending = await self.unsettled(strict=strict)
            if not pending:
                return True
            room = until - self.clock.now()
            if time.monotonic() > deadline or (room <= 0 and not strict):
                if strict:
                    self.fail(f"{len(pending)} orders did not settle: {', '.join(sorted(pending)[:10])}")
                return False
            if room > 0 and not self.holds:
                await self.jump(min(TICK_S, room))
            await asyncio.sleep(TICK_REAL_S)

    async def _flows_done(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def unsettled(self, *, strict: bool = False) -> list[str]:
        active = [t for t in self.tracked.values() if t.active and t.out_trade_no]
        limit = asyncio.Semaphore(16)

        async def look(t: Tracked) -> str | None:
            async with limit:
                status, answer = await self.app.call("GET", f"/v1/orders/{t.order.no}")
            if status != 200:
                return t.order.no
            if self._settled(t, answer["order"], answer["refunds"], strict):
                t.active = False
                return None
            return t.order.no

        found = await asyncio.gather(*(look(t) for t in active))
        return [no for no in found if no is not None]

    @staticmethod
    def _settled(t: Tracked, order: dict[str, Any], refunds: list[dict[str, Any]], strict: bool) -> bool:
        status = order["status"]
        if t.order.kind is Kind.cancel:
            return status in ("closed", "failed") if (t.close_requested or strict) else True
        if not t.paid:
            return True
        if status in ("created", "paying", "paid"):
            return False
        for r in refunds:
            if r["state"] in DONE_REFUND or r["exception"] or r["business_refund_no"] in t.held:
                continue
            return False
        return True

    # --- the day -------------------------------------------------------------------------------------------

    async def run(self) -> list[ConsoleException]:
        plan = self.plan
        self._plan_events()
        await self.his.load(plan.fixtures)
        fixtures = ", ".join(f"{len(rows)} {kind}" for kind, rows in plan.fixtures.items())
        self.say(
            f"day {plan.day} seed {plan.seed}: {len(plan.orders)} orders, {len(plan.faults)} faults; HIS has {fixtures}"
        )
        every = max(1, len(plan.orders) // 20)
        while self.events:
            event = heapq.heappop(self.events)
            await self.advance_to(event.at)
            if event.at.microsecond and (wait := event.at.timestamp() - self.clock.now()) > 0:
                await asyncio.sleep(wait)  # a payment at 23:59:59.9 lands at .9, not at the second
            self.stack.check()
            if event.name.startswith("create"):
                await self._pace()
                self.created += 1
                if self.created % every == 0:
                    self.say(f"{self.created}/{len(plan.orders)} orders, {len(self.tasks)} in flight")
            if event.first is not None:
                try:
                    await event.first()
                except (ActorError, aiohttp.ClientError, TimeoutError) as exc:
                    self.fail(f"{event.name}: {exc}")
                    continue
            if event.flow:
                await self.flows.acquire()
                after = self.tracked[event.order].last_flow if event.order is not None else None
                task = asyncio.create_task(self._flow(event, after))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                if event.order is not None:
                    self.tracked[event.order].last_flow = task
            else:
                await self._act(event)
        next_day = plan.day + dt.timedelta(days=1)
        self.say("the day's events are done; waiting for the stack to settle")
        await self.settle(at(next_day, 11, 0).timestamp(), strict=True)
        await self.advance_to(at(next_day, *RECON_AT))
        await self.reconcile(plan.day)
        last = next_day
        for _ in range(MORNINGS):
            # Each morning at 11:30: every day so far is reconciled again (the new one for the first time), and
            # finance works what is open; a morning that leaves finance nothing to work and nothing waiting for
            # its counterpart ends it.
            await self.advance_to(at(last + dt.timedelta(days=1), *RECON_AT))
            for offset in range((last - plan.day).days + 1):
                await self.reconcile(plan.day + dt.timedelta(days=offset))
            worked, waiting = await self.finance(last)
            if not worked and not waiting:
                break
            last += dt.timedelta(days=1)
        return await self._console_rows(last)

    async def _pace(self) -> None:
        if self.rate > 0:
            due = self.started + self.created / self.rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)

    async def _flow(self, event: Event, after: asyncio.Task[None] | None) -> None:
        try:
            if after is not None:
                await asyncio.wait([after])
            await self._act(event)
        finally:
            self.flows.release()

    async def _act(self, event: Event) -> None:
        """Run an event's action; what goes wrong is a finding of the day, not the end of it."""
        try:
            await event.action()
        except (ActorError, aiohttp.ClientError, TimeoutError) as exc:
            self.fail(f"{event.name}: {exc}")
        except Exception as exc:
            self.fail(f"{event.name}: {type(exc).__name__}: {exc}")

    # --- flows: patients and apps --------------------------------------------------------------------------

    async def create(self, o: PlannedOrder) -> None:
        t = self.tracked[o.index]
        body: dict[str, Any] = {
            "business_order_no": o.no,
            "business_type": o.business_type,
            "scene": o.scene,
            "channel": o.channel,
            "amount_fen": o.amount_fen,
            "subject": SUBJECTS[o.kind],
            "patient_id": o.patient_id,
        }
        if o.schedule_id:
            body["schedule_id"] = o.schedule_id
        if o.index in self.locks:
            body["lock_id"] = self.locks[o.index]
        if o.bill_nos:
            body["bill_nos"] = list(o.bill_nos)
        if o.inpatient_no:
            body["inpatient_no"] = o.inpatient_no
        if o.scene == "jsapi":
            body["payer_id"] = f"o{o.patient_id}"
        if o.auth_code:
            body["auth_code"] = o.auth_code
            await self.payer.barcode(o.channel, o.auth_code, userpaying=o.userpaying)
        status, answer = await self.app.call("POST", "/v1/orders", body)
        if status not in (200, 201):
            self.fail(f"create {o.no}: HTTP {status} {answer}")
            return
        t.out_trade_no = answer["order"]["out_trade_no"]
        t.active = True
        if o.kind is Kind.codepay:
            t.paid = True
            return
        await self._arm_payment_fault(o, t.out_trade_no)
        if o.paid and o.pay_at <= o.at:
            await self.pay(o)

    async def lock(self, o: PlannedOrder) -> None:
        self.locks[o.index] = await self.kiosk.lock(o.no, o.patient_id, str(o.schedule_id))

    async def pay(self, o: PlannedOrder) -> None:
        t = self.tracked[o.index]
        if t.out_trade_no is None:
            self.fail(f"pay {o.no}: the order was never created")
            return
        fault = self.by_target.get(o.index)
        if fault is not None and fault.kind is FaultKind.bridge_kill:
            self.holds += 1
            self.unheld.clear()
            try:
                await self.payer.pay(o.channel, t.out_trade_no)
                t.paid = t.active = True
                await self._kill_bridge_under(fault, o, t.out_trade_no)
            finally:
                self.holds -= 1
                if not self.holds:
                    self.unheld.set()
            return
        paid_at = clock.now()
        await self.payer.pay(o.channel, t.out_trade_no)
        t.paid = t.active = True
        if (
            fault is not None
            and fault.kind is FaultKind.midnight_payment
            and not (o.pay_at.timestamp() <= paid_at < o.pay_at.timestamp() + 0.1)
        ):
            self.fail(f"fault #{fault.id}: the payment meant for {o.pay_at:%H:%M:%S.%f} was made late")
        elif fault is not None and fault.kind in (FaultKind.midnight_payment, FaultKind.slot_lock_expired):
            self.fired.add(fault.id)

    async def close(self, o: PlannedOrder) -> None:
        t = self.tracked[o.index]
        if t.out_trade_no is None:
            return
        status, answer = await self.app.call("POST", f"/v1/orders/{o.no}/close")
        if status != 200:
            self.fail(f"close {o.no}: HTTP {status} {answer}")
        t.close_requested = t.active = True

    async def refund(self, o: PlannedOrder, r: PlannedRefund, attempt: int) -> None:
        t = self.tracked[o.index]
        if t.out_trade_no is None:
            self.fail(f"refund {r.no}: the order was never created")
            return
        status, answer = await self.app.call("GET", f"/v1/orders/{o.no}")
        if status != 200:
            self.fail(f"refund {r.no}: reading the order answered HTTP {status}")
            return
        if answer["order"]["status"] not in ("completed", "his_rejected"):
            self._retry(r.no, attempt, lambda: self.refund(o, r, attempt + 1), f"order {answer['order']['status']}")
            return
        amount = r.amount_fen
        if amount == 0:
            taken = sum(x["amount_fen"] for x in answer["refunds"] if x["state"] not in ("rejected", "failed"))
            amount = int(answer["order"]["paid_fen"] or 0) - taken
            if amount <= 0:
                return
        fault = self.by_target.get(o.index)
        if fault is not None and fault.refund == r.no and attempt == 0:
            await self._arm_refund_fault(fault, o, t)
        body = {"business_refund_no": r.no, "amount_fen": amount, "reason": r.reason}
        status, answer = await self.app.call("POST", f"/v1/orders/{o.no}/refunds", body)
        if status == 409 and answer.get("error", {}).get("code") == "not_refundable":
            self._retry(r.no, attempt, lambda: self.refund(o, r, attempt + 1), answer["error"]["message"])
            return
        if status not in (200, 201):
            self.fail(f"refund {r.no}: HTTP {status} {answer}")
            return
        t.active = True

    def _retry(self, what: str, attempt: int, action: Callable[[], Awaitable[None]], why: str) -> None:
        if attempt >= RETRIES:
            self.fail(f"{what}: gave up after {attempt} attempts ({why})")
            return
        when = dt.datetime.fromtimestamp(self.clock.now(), self.plan.orders[0].at.tzinfo) + RETRY_AFTER
        self.schedule(when, f"retry {what}", action)

    # --- faults --------------------------------------------------------------------------------------------

    async def window(self, f: PlannedFault, starts: bool) -> None:
        self.fired.add(f.id)
        if f.kind is FaultKind.his_down:
            if starts:
                self.his_rules[f.id] = int((await self.his.fault(operation="*", mode="refuse"))["id"])
            else:
                await self.his.call("DELETE", f"/faults/{self.his_rules.pop(f.id)}")
        else:
            assert self.stack.proxy is not None
            self.stack.proxy.cut() if starts else self.stack.proxy.heal()
        self.windows += 1 if starts else -1
        self.say(f"fault #{f.id} {f.kind} {'starts' if starts else 'ends'}")

    async def _arm_payment_fault(self, o: PlannedOrder, out_trade_no: str) -> None:
        f = self.by_target.get(o.index)
        if f is None:
            return
        notify = {FaultKind.notify_lost: "lost", FaultKind.notify_duplicate: "duplicate", FaultKind.notify_late: "late"}
        if f.kind in notify:
            delay = (f.until - o.pay_at).total_seconds() if f.until is not None else 0.0
            rule = await self.payer.fault(
                kind="notify",
                match=f"{o.channel}.payment",
                mode=notify[f.kind],
                ref=out_trade_no,
                delay_s=delay,
                count=1,
            )
            self.rules[f.id] = ("channels", int(rule["id"]))
        elif f.kind is FaultKind.his_drop_reply:
            rule = await self.his.fault(
                operation=SOAP_COMMIT[o.business_type], mode="drop_reply", trade_no=out_trade_no, count=1
            )
            self.rules[f.id] = ("his", int(rule["id"]))
        elif f.kind is FaultKind.midnight_payment:
            # The HIS's nightly jobs start at midnight: its commit of this payment takes a second and a half, so
            # that it lands on the next day however fast the stack is.
            rule = await self.his.fault(
                operation=SOAP_COMMIT[o.business_type], mode="latency", latency_ms=1500, trade_no=out_trade_no, count=1
            )
            self.rules[f.id] = ("his", int(rule["id"]))
        elif f.kind is FaultKind.bridge_kill:
            rule = await self.his.fault(
                operation=SOAP_COMMIT[o.business_type],
                mode="latency",
                latency_ms=LATENCY_BEFORE_KILL_MS,
                trade_no=out_trade_no,
                count=1,
            )
            self.his_rules[f.id] = int(rule["id"])
        else:
            return
        self.say(f"fault #{f.id} {f.kind} armed on {o.no}")

    async def _kill_bridge_under(self, f: PlannedFault, o: PlannedOrder, out_trade_no: str) -> None:
        """Wait until the commit is at the HIS (its latency rule taken), SIGKILL the agent and restart it; the clock
        stands still meanwhile, and until the HIS has finished the commit the agent was cut off from — so the
        restarted agent meets the doubt a crash leaves: a write it cannot know the HIS applied."""
        rule = self.his_rules.pop(f.id)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while any(r["id"] == rule for r in await self.his.faults()):
            if time.monotonic() > deadline:
                self.fail(f"fault #{f.id}: the commit of {o.no} never reached the HIS")
                return
            await asyncio.sleep(0.02)
        await self.stack.kill_bridge()
        self.fired.add(f.id)
        while not any(t["trade_no"] == out_trade_no for t in (await self.his.ledger())["trades"]):
            if time.monotonic() > deadline:
                self.fail(f"fault #{f.id}: the HIS never finished the commit of {o.no}")
                return
            await asyncio.sleep(0.05)
        self.say(f"fault #{f.id} bridge_kill: SIGKILL with {o.no}'s commit at the HIS; the agent is back")

    async def _arm_refund_fault(self, f: PlannedFault, o: PlannedOrder, t: Tracked) -> None:
        assert t.out_trade_no is not None
        if f.kind in (FaultKind.refund_stuck, FaultKind.refund_abnormal):
            await self.payer.hold_refund(o.channel, t.out_trade_no)
            assert f.refund is not None
            t.held.add(f.refund)
        elif f.kind is FaultKind.midnight_refund:
            # The HIS's nightly jobs again: it answers the write-back of the refund paid at 23:59:30 "busy" until
            # they end at 00:00:40, so that the channel has the refund on the day and the HIS the next.
            rule = await self.his.fault(operation="WritebackRefund", mode="refuse", trade_no=t.out_trade_no)
            self.his_rules[f.id] = int(rule["id"])
        elif f.kind is FaultKind.writeback_refused:
            rule = await self.his.fault(
                operation="WritebackRefund", mode="error", error_code="9999", trade_no=t.out_trade_no, count=1
            )
            self.rules[f.id] = ("his", int(rule["id"]))
        self.say(f"fault #{f.id} {f.kind} armed on {f.refund}")

    async def _nightly_jobs_end(self, f: PlannedFault) -> None:
        """The nightly jobs end once the HIS has turned the write-back away at least once: a refund paid at
        23:59:30 may come to its write-back only after 00:00:40 (the channel pays it later), and the fault is
        that it is refused then. Until it has, the clock ticks on slowly so the stack can get there."""
        rule = self.his_rules.pop(f.id, None)
        if rule is None:
            self.fail(f"fault #{f.id}: the refund {f.refund} was never asked for before the nightly jobs ended")
            return
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not any(r["id"] == rule and r["hits"] for r in await self.his.faults()):
            if time.monotonic() > deadline:
                self.say(f"fault #{f.id} {f.kind}: the write-back of {f.refund} never came to the HIS")
                break
            await self.jump(TICK_S)
            await asyncio.sleep(0.2)
        else:
            self.fired.add(f.id)
        await self.his.call("DELETE", f"/faults/{rule}")
        self.say(f"fault #{f.id} {f.kind}: the HIS takes write-backs again")

    async def release(self, f: PlannedFault, attempt: int) -> None:
        o = self.plan.orders[f.target or 0]
        t = self.tracked[o.index]
        assert f.refund is not None
        status, answer = await self.app.call("GET", f"/v1/refunds/{f.refund}")
        state = "ABNORMAL" if f.kind is FaultKind.refund_abnormal else "SUCCESS"
        released: list[str] = []
        if status == 200 and answer["refund"]["state"] in ("refunding", "reserved"):
            released = await self.payer.release_refunds(o.channel, answer["refund"]["out_refund_no"], state)
        if not released:
            why = f"refund {answer.get('refund', {}).get('state', status)}"
            self._retry(f"release {f.refund}", attempt, lambda: self.release(f, attempt + 1), why)
            return
        t.held.discard(f.refund)
        t.active = True
        self.fired.add(f.id)
        self.say(f"fault #{f.id} {f.kind}: refund {f.refund} released as {state}")

    # --- after the day -------------------------------------------------------------------------------------

    async def reconcile(self, day: dt.date) -> None:
        await self.settle(self.clock.now() + 60)
        summary = await self.stack.reconcile(day)
        self.activity.runs.append(summary)
        counts = summary.get("counts", {})
        flagged = {k: n for k, n in counts.items() if n and not k.endswith("_count") and k != "matched"}
        self.say(
            f"reconciled {day} v{summary['version']} {summary['status']}: matched {counts.get('matched')} {flagged}"
        )

    async def _console_rows(self, last_day: dt.date) -> list[ConsoleException]:
        console = Console(self.stack.gateway_urls[-1], next(iter(STAFF)))
        try:
            await console.login(self.stack.staff_password)
            return await console.exceptions(self.plan.day, last_day)
        finally:
            await console.close()

    async def finance(self, last: dt.date) -> tuple[int, int]:
        """Two people at the console work the open exceptions of the days up to ``last``, as docs/CONSOLE.md
        tells them: money the HIS does not book goes back to the payer when the console offers it (the clerk
        proposes, the approver approves); a refund the HIS applied that was never paid is paid through the
        channel, unless finance already settled it with the patient offline; a stuck HIS step is redriven;
        everything else is settled offline and marked handled. Entries still waiting for their counterpart are
        left to wait. Returns (exceptions worked, entries still waiting)."""
        clerk_name, approver_name = list(STAFF)
        url = self.stack.gateway_urls[-1]
        clerk, approver = Console(url, clerk_name), Console(url, approver_name)
        worked = waiting = 0
        try:
            await clerk.login(self.stack.staff_password)
            await approver.login(self.stack.staff_password)
            rows = await clerk.exceptions(self.plan.day, last)
            settled_offline = {r.out_refund_no for r in rows if r.cls == "refund_abnormal" and r.out_refund_no}
            for row in rows:
                if row.status != "open":
                    continue
                if row.cls == "cross_day":
                    waiting += 1
                    continue
                worked += 1
                if row.cls == "his_stuck":
                    self._finance_result(row, "redriven", await clerk.redrive(row.id, "HIS 已恢复，重新提交"))
                    self._touch(row.out_trade_no)
                    continue
                offered = await clerk.remedies(row.id)
                if "refund" in offered:
                    amount = row.channel_amount or row.platform_amount
                    done = await clerk.propose_refund(row.id, amount, "长款原路退回")
                    if await self._approved(row, "refund", done, approver):
                        continue
                elif "pay_refund" in offered and row.out_refund_no not in settled_offline:
                    done = await clerk.propose(row.id, "pay_refund", "HIS 已退费，原路补退")
                    if await self._approved(row, "pay_refund", done, approver):
                        continue
                done = await clerk.mark_handled(row.id, "已线下核实，并在 HIS 中手工更正")
                self._finance_result(row, "marked handled", done)
            await self.settle(self.clock.now() + 3600)
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while any(r.status == "approved" for r in await clerk.exceptions(self.plan.day, last)):
                if time.monotonic() > deadline:
                    self.fail("finance: approved refunds never settled")
                    break
                await self.jump(TICK_S)
                await asyncio.sleep(1.0)
        finally:
            await clerk.close()
            await approver.close()
        return worked, waiting

    async def _approved(self, row: ConsoleException, action: str, proposed: Any, approver: Console) -> bool:
        label = "refund" if action == "refund" else "HIS refund payment"
        self._finance_result(row, f"{label} proposed", proposed)
        if not proposed.ok:
            return False
        done = await approver.approve(row.id, "核对无误，同意")
        self._finance_result(row, f"{label} approved", done)
        self._touch(row.out_trade_no)
        return bool(done.ok)

    def _finance_result(self, row: ConsoleException, action: str, done: Any) -> None:
        if done.ok:
            self.activity.finance[action] += 1
        else:
            self.activity.finance_refused.append(f"{action} on {row.cls} {row.out_trade_no}: {done.message}")
        self.say(f"finance: {action} on #{row.id} {row.cls} {row.out_trade_no}: {'ok' if done.ok else done.message}")

    def _touch(self, out_trade_no: str) -> None:
        for t in self.tracked.values():
            if t.out_trade_no == out_trade_no:
                t.active = True

    async def confirm_fired(self) -> set[int]:
        """The faults that happened: those seen to, and those whose sandbox rule was taken."""
        left = {
            "his": {int(r["id"]) for r in await self.his.faults()},
            "channels": {int(r["id"]) for r in (await self.payer.call("GET", "/faults"))["faults"]},
        }
        taken = {fault for fault, (where, rule) in self.rules.items() if rule not in left[where]}
        return self.fired | taken

    async def read_books(self, console: list[ConsoleException]) -> books.Books:
        detail = {o.no for o in self.plan.orders if o.refunds}
        return await books.read(self.app, self.payer, self.his, console, detail=detail)


@dataclass
class Outcome:
    verdict: checks.Verdict
    activity: Activity
    work: Path


async def run_day(
    plan: Plan, stack: Stack, clock_file: clock.ClockFile, *, concurrency: int, rate: float, out: TextIO = sys.stderr
) -> Outcome:
    """Start the stack, run the day, reconcile, let finance work, read the books and check them."""
    await asyncio.to_thread(stack.make_keys)
    assert stack.gateway_key is not None
    receiver = await NotifyReceiver(stack.gateway_key).start()
    try:
        await stack.start(receiver.url)
        async with Day(plan, stack, clock_file, concurrency=concurrency, rate=rate, out=out) as day:
            console = await day.run()
            ledgers = await day.read_books(console)
            verdict = checks.check(plan, ledgers, day.flow_errors, await day.confirm_fired())
            if day.app.resent:
                resent = ", ".join(f"{n} after {why}" for why, n in sorted(day.app.resent.items()))
                day.say(f"the app sent requests again: {resent} (the gateway's log says why)")
            day.say(
                f"checked: lost {len(verdict.lost)}, double {len(verdict.double)}, "
                f"false exceptions {len(verdict.false_exceptions)}, unaccounted {verdict.faults_unaccounted}"
            )
            return Outcome(verdict, day.activity, stack.work)
    finally:
        await stack.stop()
        await receiver.close()
