"""From journal to HIS: ordering, retries, in-doubt resolution, quarantine.

Think of it as the sink side of a durable buffer. The journal holds every write; the dispatcher delivers each
to the adapter and acknowledges it back into the journal (done / failed / unknown / quarantined).

- **Same key, same order.** Writes are grouped in lanes by business key (the trade number); a lane runs one
  entry at a time, in journal order. Different trades run in parallel.
- **Never twice.** An entry whose outcome is unknown (timeout after send, crash mid-call) is resolved by
  asking the HIS (``trade.check``) before anything is resent.
- **Never silently forever.** Retries back off with jitter; after ``max_attempts`` the entry is quarantined and
  later entries of its trade wait behind it until an operator retries or resolves it. Only failures of its own
  count: one that leaves the circuit breaker open (the whole HIS is failing: an outage, not a poison entry) is
  retried, capped at ``backoff_max_s``, for as long as the outage lasts — the breaker and backlog alerts say so.
- **The journal is the truth.** A periodic sweep re-reads unfinished entries, which is how recovery after a
  crash and an operator's ``journal retry`` from another process reach the dispatcher.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adapters.base import Adapter, AdapterError, ErrorKind, InDoubtError
from bridge import catalog, clock
from bridge.breaker import BreakerState, CircuitBreaker
from bridge.config import DispatchConfig
from bridge.journal import TERMINAL, UNFINISHED, Entry, Journal, JournalUnavailable, State
from bridge.logs import get_logger
from bridge.metrics import Metrics

log = get_logger("bridge.dispatcher")


class _Stopping(Exception):
    """Raised inside a lane to end it when the dispatcher stops."""


class HisUnavailable(Exception):
    """The breaker is open: the HIS is not being called right now."""


@dataclass
class _Lane:
    items: list[tuple[int, Entry | None]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


@dataclass
class _Call:
    outcome: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def failed(cls, e: AdapterError) -> _Call:
        """A failed call, as the journal records it: the error's kind, code and message."""
        return cls(e.kind, error=e.as_dict())


class Dispatcher:
    def __init__(
        self,
        journal: Journal,
        adapter: Adapter,
        cfg: DispatchConfig,
        metrics: Metrics,
        *,
        sweep_interval_s: float = 5.0,
    ) -> None:
        self.journal = journal
        self.adapter = adapter
        self.cfg = cfg
        self.metrics = metrics
        self.sweep_interval_s = sweep_interval_s
        self.breaker = self._new_breaker(adapter.endpoint)
        self._calls_on: dict[int, int] = {}
        """Calls under way per adapter (by id), so a replaced adapter is closed only once they are back."""
        self._calls_changed = asyncio.Event()
        self._lanes: dict[str, _Lane] = {}
        self._known: set[int] = set()
        self._blocked: dict[str, int] = {}
        self._waiters: dict[int, list[asyncio.Future[Entry]]] = {}
        self._read_slots = asyncio.Semaphore(cfg.read_concurrency)
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def _new_breaker(self, endpoint: str) -> CircuitBreaker:
        metrics = self.metrics
        self.metrics.breaker_state.labels(endpoint).set(0)
        return CircuitBreaker(
            endpoint,
            failures=self.cfg.breaker_failures,
            reset_s=self.cfg.breaker_reset_s,
            on_change=lambda ep, st: metrics.breaker_state.labels(ep).set(int(st)),
        )

    async def replace_adapter(self, new: Adapter, drain_s: float | None = None) -> Adapter:
        """Send new calls to ``new`` at once, and return the old adapter once the calls already sent through it
        have come back (or ``drain_s``, default the HIS timeout, has passed), so that the caller can close it.
        A new endpoint gets its own circuit breaker; the same endpoint keeps its breaker's state."""
        old, self.adapter = self.adapter, new
        if new.endpoint != self.breaker.endpoint:
            old_endpoint = self.breaker.endpoint
            self.breaker = self._new_breaker(new.endpoint)
            with contextlib.suppress(KeyError):
                self.metrics.breaker_state.remove(old_endpoint)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.cfg.his_timeout_s + 1 if drain_s is None else drain_s)
        while self._calls_on.get(id(old), 0) > 0 and (remaining := deadline - loop.time()) > 0:
            self._calls_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._calls_changed.wait(), remaining)
        return old

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> int:
        """Recover: queue every unfinished entry, in journal order, before any new work is accepted."""
        recovered = await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="dispatcher-sweep")
        log.info("recovered", entries=recovered)
        return recovered

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop delivering: calls already sent to the HIS get ``grace_s`` (default: the HIS timeout) to come back
        and be journaled; nothing new is sent. An entry still cut mid-call stays ``in_flight`` and is treated as
        in doubt on restart."""
        self._closing.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
        lanes = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if lanes:
            _, late = await asyncio.wait(lanes, timeout=self.cfg.his_timeout_s if grace_s is None else grace_s)
            for task in late:
                task.cancel()
        await asyncio.gather(*lanes, *([self._sweeper] if self._sweeper else []), return_exceptions=True)
        self._lanes.clear()
        self._known.clear()

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` (of the shared clock), or end the lane at once if the dispatcher is stopping."""
        deadline = clock.monotonic() + delay
        while (remaining := deadline - clock.monotonic()) > 0:
            try:
                await asyncio.wait_for(self._closing.wait(), clock.wait_slice(remaining))
            except TimeoutError:
                continue
            raise _Stopping
        if self._closing.is_set():
            raise _Stopping

    async def sweep(self) -> int:
        """Queue unfinished entries that no lane holds; returns how many were queued."""
        self._blocked = await self.journal.quarantined_keys()
        queued = 0
        async for seq, key in self.journal.unfinished():
            if seq not in self._known and not self._is_blocked_key(key, seq):
                self._enqueue(seq, key, None)
                queued += 1
        return queued

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep_failed")

    # --- writes --------------------------------------------------------------------------------------------

    def submit(self, entry: Entry) -> None:
        """Hand a freshly journaled entry to its lane."""
        if entry.state in UNFINISHED and not self._is_blocked(entry):
            self._enqueue(entry.seq, entry.business_key, entry)

    async def wait(self, seq: int, deadline_s: float) -> Entry | None:
        """The entry once it is finished or quarantined, or None if that takes longer than ``deadline_s``."""
        fut: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(seq, []).append(fut)
        try:
            if seq not in self._known:
                current = await self.journal.get_seq(seq)
                if current is None or current.state not in UNFINISHED:
                    return current
            return await asyncio.wait_for(fut, deadline_s)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(seq)
            if waiters is not None:
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    del self._waiters[seq]

    def _is_blocked(self, entry: Entry) -> bool:
        return self._is_blocked_key(entry.business_key, entry.seq)

    def _is_blocked_key(self, key: str, seq: int) -> bool:
        first = self._blocked.get(key)
        return first is not None and first < seq

    def _enqueue(self, seq: int, key: str, entry: Entry | None) -> None:
        if seq in self._known:
            return
        self._known.add(seq)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        # Keep the whole entry only when it will run at once; a backlog holds just sequence numbers.
        bisect.insort(lane.items, (seq, entry if not lane.items else None), key=lambda i: i[0])
        if lane.task is None:
            lane.task = asyncio.create_task(self._run_lane(key, lane), name=f"lane-{key}")

    async def _run_lane(self, key: str, lane: _Lane) -> None:
        try:
            while lane.items:
                seq, entry = lane.items[0]
                if entry is None:
                    entry = await self.journal.get_seq(seq)
                if entry is not None and entry.state in UNFINISHED:
                    if self._is_blocked(entry):
                        break
                    entry = await self._drive(entry)
                    if entry.state is State.quarantined:
                        self._blocked.setdefault(key, entry.seq)
                lane.items.pop(0)
                self._known.discard(seq)
        except _Stopping:
            pass
        except JournalUnavailable as e:
            # Nothing is lost: the entry stays unfinished in the journal and the sweep queues it again; one cut
            # after the HIS call is settled as in doubt (trade.check) before anything is resent.
            log.warning("lane_paused", trade_no=key, reason="journal cannot commit", error=str(e))
        finally:
            for seq, _ in lane.items:
                self._known.discard(seq)
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    def _notify(self, entry: Entry) -> None:
        for fut in self._waiters.pop(entry.seq, []):
            if not fut.done():
                fut.set_result(entry)

    def _backoff(self, attempts: int) -> float:
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** max(attempts - 1, 0))
        return delay * random.uniform(0.5, 1.0)

    async def _drive(self, entry: Entry) -> Entry:
        """Run one entry until it is finished or quarantined."""
        op = catalog.OPERATIONS[entry.operation]
        while True:
            if entry.state in (State.in_flight, State.unknown):
                resolved = await self._resolve_in_doubt(entry, op)
                if resolved is None:
                    return entry  # an operator acted on it meanwhile
                entry = resolved
                if entry.state in TERMINAL or entry.state is State.quarantined:
                    self._notify(entry)
                    return entry
                if entry.state is not State.accepted:
                    continue
            await self.breaker.wait_allowed()
            if self._closing.is_set():
                self.breaker.release()
                raise _Stopping
            sent = await self.journal.update(entry.seq, State.in_flight, expect=[State.accepted], attempts_delta=1)
            if sent is None:
                self.breaker.release()
                return await self._current(entry)
            entry = sent
            call = await self._call(entry.operation, entry.params, op.output)
            entry = await self._record(entry, call)
            if entry.state in TERMINAL or entry.state is State.quarantined:
                self._notify(entry)
                return entry
            if entry.state is State.accepted:
                await self._pause(self._backoff(entry.attempts))

    def _may_still_run(self, entry: Entry) -> float:
        """Seconds the HIS may still be applying a call that our own crash cut off: an entry found in flight went
        out at its ``updated_at``, and the HIS goes on with it whatever became of us, for up to ``his_timeout_s``.
        A call that ended in an error or a timeout here is waited for one backoff only."""
        if entry.state is not State.in_flight:
            return 0.0
        return max(0.0, entry.updated_at + self.cfg.his_timeout_s - clock.now())

    def _failing_alone(self) -> bool:
        """Whether a failure just recorded was the entry's own: the breaker stayed closed. A failure that opened
        it, or a half-open trial that failed, says the HIS as a whole is down, and quarantining every write in
        flight during an outage would leave each one for an operator to retry by hand."""
        return self.breaker.state is BreakerState.closed

    async def _current(self, entry: Entry) -> Entry:
        return await self.journal.get_seq(entry.seq) or entry

    async def _record(self, entry: Entry, call: _Call) -> Entry:
        now = clock.now()
        quarantine = entry.attempts >= self.cfg.max_attempts and self._failing_alone()
        kwargs: dict[str, Any]
        if call.outcome == "done":
            state, kwargs = State.done, {"result": call.result}
        elif call.outcome == ErrorKind.permanent:
            state, kwargs = State.failed, {"error": call.error}
        elif call.outcome == ErrorKind.retryable:
            state = State.quarantined if quarantine else State.accepted
            kwargs = {"error": call.error, "next_attempt_at": now + self._backoff(entry.attempts)}
        else:
            state = State.quarantined if quarantine else State.unknown
            kwargs = {"error": call.error}
        updated = await self.journal.update(entry.seq, state, expect=[State.in_flight], **kwargs)
        if updated is None:
            return await self._current(entry)
        self.metrics.transitions.labels(state.value).inc()
        if state is State.quarantined:
            log.warning(
                "quarantined",
                journal_id=entry.seq,
                operation=entry.operation,
                trade_no=entry.business_key,
                attempts=entry.attempts,
                error=call.error,
            )
        return updated

    async def _resolve_in_doubt(self, entry: Entry, op: catalog.Operation) -> Entry | None:
        """Ask the HIS whether an in-doubt write took effect; accept it as done, or make it safe to resend.

        Waits first: a HIS that timed out may still be finishing the original call, and asking too early would
        read "not found" and resend a write that is about to land — at a HIS naive about duplicates, a second
        booking. One backoff after an error; after a crash, ``his_timeout_s`` from when the call went out.
        """
        await self._pause(max(self._backoff(max(entry.attempts, 1)), self._may_still_run(entry)))
        if entry.state is State.in_flight:
            entry = await self.journal.update(entry.seq, State.unknown, expect=[State.in_flight]) or entry
            if entry.state is not State.unknown:
                return None if entry.state not in UNFINISHED else entry
        if op.from_check is None or "trade.check" not in self.adapter.operations():
            error = InDoubtError(
                "no_status_query", "the profile binds no trade.check to resolve this in-doubt write"
            ).as_dict()
            return await self.journal.update(entry.seq, State.quarantined, expect=[State.unknown], error=error)
        params_model = op.input.model_validate(entry.params)
        check_params = op.check_input(params_model).model_dump(mode="json")
        await self.breaker.wait_allowed()
        call = await self._call("trade.check", check_params, catalog.TradeCheckOut)
        if call.outcome != "done":
            quarantine = entry.attempts + 1 >= self.cfg.max_attempts and self._failing_alone()
            error = {**(call.error or {}), "while": "trade.check"}
            return await self.journal.update(
                entry.seq,
                State.quarantined if quarantine else State.unknown,
                expect=[State.unknown],
                attempts_delta=1,
                error=error,
            )
        assert call.result is not None
        check = catalog.TradeCheckOut.model_validate(call.result)
        self.metrics.in_doubt_resolved.labels(str(check.found).lower()).inc()
        if check.found:
            try:
                result = op.output.model_validate(op.from_check(check)).model_dump(mode="json")
            except ValidationError as e:
                error = InDoubtError("check_unmappable", str(e)[:500]).as_dict()
                return await self.journal.update(entry.seq, State.quarantined, expect=[State.unknown], error=error)
            log.info("in_doubt_resolved", journal_id=entry.seq, found=True, trade_no=entry.business_key)
            return await self.journal.update(
                entry.seq,
                State.done,
                expect=[State.unknown],
                result=result,
                note="in doubt; trade.check found it applied, not resent",
            )
        log.info("in_doubt_resolved", journal_id=entry.seq, found=False, trade_no=entry.business_key)
        return await self.journal.update(
            entry.seq,
            State.accepted,
            expect=[State.unknown],
            note="in doubt; trade.check found nothing, resent",
        )

    async def _call(self, operation: str, params: dict[str, Any], output: type[catalog.Strict]) -> _Call:
        """One adapter call with its timeout, classification, metrics and breaker bookkeeping."""
        adapter, breaker = self.adapter, self.breaker
        endpoint = adapter.endpoint
        started = time.perf_counter()
        self._calls_on[id(adapter)] = self._calls_on.get(id(adapter), 0) + 1
        try:
            raw = await asyncio.wait_for(adapter.call(operation, params), self.cfg.his_timeout_s)
            result = output.model_validate(raw).model_dump(mode="json")
            call = _Call("done", result=result)
            breaker.success()
        except AdapterError as e:
            call = _Call.failed(e)
            if e.kind is ErrorKind.permanent:
                breaker.neutral()
            else:
                breaker.failure()
        except TimeoutError:
            call = _Call.failed(InDoubtError("his_timeout", f"no answer within {self.cfg.his_timeout_s} s"))
            breaker.failure()
        except ValidationError as e:
            call = _Call.failed(InDoubtError("unexpected_reply", f"HIS reply does not fit {operation}: {e}"[:800]))
            breaker.neutral()
        except Exception as e:
            log.exception("adapter_crashed", operation=operation)
            call = _Call.failed(InDoubtError("adapter_error", f"{type(e).__name__}: {e}"[:800]))
            breaker.failure()
        finally:
            self._calls_on[id(adapter)] -= 1
            if not self._calls_on[id(adapter)]:
                del self._calls_on[id(adapter)]
                self._calls_changed.set()
        self.metrics.his_seconds.labels(endpoint, operation).observe(time.perf_counter() - started)
        self.metrics.his_calls.labels(endpoint, operation, str(call.outcome)).inc()
        return call

    # --- reads ---------------------------------------------------------------------------------------------

    async def read(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """A read goes straight to the HIS; it is never journaled and never retried behind the caller's back."""
        op = catalog.OPERATIONS[operation]
        async with self._read_slots:
            if not self.breaker.allow():
                raise HisUnavailable(f"HIS endpoint {self.adapter.endpoint} is failing; circuit breaker open")
            call = await self._call(operation, params, op.output)
        if call.outcome == "done":
            assert call.result is not None
            return call.result
        raise ReadFailed(call.error or {})

    @property
    def breaker_open(self) -> bool:
        return self.breaker.state is BreakerState.open


class ReadFailed(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "read failed"))
        self.error = error
