"""From the outbound journal to the gateway, exactly once.

- **Journaled first.** A terminal's payment or refund is committed to the outbound journal (with its nonce,
  under its daily limit) before a byte goes to the gateway; the journal keeps the exact body forwarded.
- **Ask before resending.** A forward whose outcome is unknown (timeout, lost connection, the agent killed) is
  settled by asking the gateway what it has under the request's id. Only if it has nothing is anything sent
  again — and the gateway's own idempotency (business order and refund numbers derived from the terminal's
  request id) makes even that resend the same request.
- **Payments fail fast, refunds wait.** A patient at a counter cannot wait for a queue: when the gateway cannot
  be reached a payment is refused at once, nothing sent. A refund (the HIS has already refunded at the window)
  is kept and sent when the link returns.
- **A payment the gateway never saw is declared failed only when it no longer can see it**: once its last
  request is older than the gateway's signing window (plus a grace), a late copy would be refused as stale.
  Before that, and while a 付款码 still lives (about a minute), it is sent again instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bridge import clock
from bridge.egress import answers
from bridge.egress.config import EgressConfig
from bridge.egress.gateway import GatewayAnswer, GatewayClient, InDoubt, NotSent
from bridge.egress.journal import (
    EgressJournal,
    EgressJournalUnavailable,
    EgressState,
    TerminalRequest,
)
from bridge.egress.metrics import EgressMetrics
from bridge.logs import get_logger

log = get_logger("bridge.egress")

GRACE_S = 60
"""Beyond the gateway's signing window: how long a request that got past its authentication may still take to
be stored there."""
PAYMENT_RESEND_S = 60
"""A payment the gateway never received is sent again only this long after the terminal asked (a 付款码 lives
about a minute); after that it is declared failed once the gateway can no longer accept the lost request."""
CREATE_PATH = {"pay": "/v1/orders", "refund": "/v1/window-refunds"}
RETRY_LATER = frozenset({401, 403, 409, 429})
"""Refund refusals about us, not the refund (keys, clock, app not allowed): keep the refund queued."""


class CloudUnreachable(Exception):
    """A read the terminal asked for could not be answered by the gateway now."""


@dataclass(frozen=True)
class Submission:
    """A terminal request checked and ready to journal."""

    terminal_id: str
    app: str
    kind: str
    operation: str
    request_id: str
    body_sha256: str
    forward: dict[str, Any]
    """The gateway request body."""
    amount_fen: int
    day: str
    daily_limit_fen: int | None
    nonce: tuple[str, str, float] | None


class Forwarder:
    def __init__(self, cfg: EgressConfig, metrics: EgressMetrics, *, poll_s: float = 1.0) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.journal = EgressJournal(cfg.journal)
        self.client = GatewayClient(cfg)
        self.poll_s = poll_s
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._failures: dict[int, int] = {}
        self._wake = asyncio.Event()
        self._link_down_since: float | None = None
        self._last_probe = 0.0
        self._background: list[asyncio.Task[None]] = []

    # --- lifetime ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.journal.open()
        recovered = await self.journal.recover()
        if recovered:
            log.warning("egress_in_doubt_after_restart", count=recovered)
        self._background = [
            asyncio.create_task(self._settle_loop(), name="egress-settle"),
            asyncio.create_task(self._gauge_loop(), name="egress-gauges"),
            asyncio.create_task(self._prune_loop(), name="egress-prune"),
        ]

    async def stop(self) -> None:
        tasks = [*self._background, *self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()
        await self.journal.close()

    # --- the link ------------------------------------------------------------------------------------------

    @property
    def link_down(self) -> bool:
        return self._link_down_since is not None

    def _down(self, why: str) -> None:
        if self._link_down_since is None:
            self._link_down_since = clock.now()
            self._last_probe = time.monotonic()
            self.metrics.link_up.set(0)
            log.error("egress_link_down", error=why)

    def _up(self) -> None:
        if self._link_down_since is not None:
            log.info("egress_link_up", down_s=round(clock.now() - self._link_down_since, 1))
            self._link_down_since = None
            self.metrics.link_up.set(1)
            self._failures.clear()
            task = asyncio.create_task(self._hurry(), name="egress-hurry")
            self._background.append(task)
            task.add_done_callback(self._background.remove)

    async def _hurry(self) -> None:
        """The link is back: what waited for it goes now, not at the end of its backoff."""
        try:
            await self.journal.hurry()
        except EgressJournalUnavailable as e:
            log.error("egress_journal_unavailable", error=str(e))
        self._wake.set()

    async def _probe(self) -> None:
        self._last_probe = time.monotonic()
        if await self.client.reachable():
            self._up()
        else:
            self._down("probe failed")

    # --- submitting ----------------------------------------------------------------------------------------

    async def submit(self, sub: Submission) -> tuple[TerminalRequest, bool]:
        """Journal a terminal request and start forwarding it; a repeated request id returns the journaled one.

        A payment while the link is down is journaled as failed (nothing sent), a refund as queued."""
        state, answer = EgressState.forwarding, None
        if self.link_down:
            if sub.kind == "pay":
                state = EgressState.failed
                answer = answers.refused(
                    sub.request_id, sub.operation, "cloud_unreachable", self._unreachable_message()
                )
            else:
                state = EgressState.queued
        entry, created = await self.journal.accept(
            terminal_id=sub.terminal_id,
            request_id=sub.request_id,
            operation=sub.operation,
            kind=sub.kind,
            app=sub.app,
            body_sha256=sub.body_sha256,
            params=sub.forward,
            amount_fen=sub.amount_fen,
            day=sub.day,
            state=state,
            daily_limit_fen=sub.daily_limit_fen,
            nonce=sub.nonce,
            answer=answer,
        )
        if created and state is EgressState.forwarding:
            self._ensure(entry.seq, fresh=True)
        elif created and state is EgressState.queued:
            self._wake.set()
        elif not created and entry.state in (EgressState.in_doubt, EgressState.forwarding):
            self._ensure(entry.seq, fresh=False)
        return entry, created

    def _unreachable_message(self) -> str:
        since = self._link_down_since
        ago = f" (down for {int(clock.now() - since)} s)" if since else ""
        return f"the payment platform cannot be reached{ago}; nothing was charged — take the payment another way"

    def _ensure(self, seq: int, *, fresh: bool) -> asyncio.Task[None]:
        task = self._tasks.get(seq)
        if task is None or task.done():
            task = asyncio.create_task(self._drive(seq, fresh), name=f"egress-{seq}")
            self._tasks[seq] = task
            task.add_done_callback(functools.partial(self._forget, seq))
        return task

    def _forget(self, seq: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(seq) is task:
            del self._tasks[seq]

    async def wait(self, seq: int, timeout_s: float) -> TerminalRequest | None:
        """The request once its forward has finished, or as it stands after ``timeout_s``."""
        task = self._tasks.get(seq)
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                pass
            except Exception:
                log.exception("egress_forward_failed", seq=seq)
        return await self.journal.get_seq(seq)

    # --- driving one request -------------------------------------------------------------------------------

    async def _drive(self, seq: int, fresh: bool) -> None:
        entry = await self.journal.get_seq(seq)
        if entry is None:
            return
        if entry.state is EgressState.forwarding and fresh:
            await self._forward(entry)
        elif entry.state is EgressState.forwarding:
            moved = await self.journal.move(
                seq, EgressState.in_doubt, expect=[EgressState.forwarding], note="forward lost its task"
            )
            if moved is not None:
                await self._settle(moved)
        elif entry.state is EgressState.in_doubt:
            await self._settle(entry)
        elif entry.state is EgressState.queued:
            if entry.kind == "pay":
                return
            moved = await self.journal.move(seq, EgressState.forwarding, expect=[EgressState.queued], sent=True)
            if moved is not None:
                await self._forward(moved)

    async def _call(self, entry: TerminalRequest, method: str, path: str, body: dict[str, Any] | None) -> GatewayAnswer:
        started = time.perf_counter()
        try:
            answer = await self.client.call(method, path, body, app=entry.app)
        except NotSent as e:
            self.metrics.forwards.labels(entry.operation, "not_sent").inc()
            self._down(str(e))
            raise
        except InDoubt:
            self.metrics.forwards.labels(entry.operation, "in_doubt").inc()
            raise
        self.metrics.forwards.labels(entry.operation, "answered").inc()
        self.metrics.forward_seconds.labels(entry.operation).observe(time.perf_counter() - started)
        self._up()
        return answer

    async def _forward(self, entry: TerminalRequest) -> None:
        """One attempt on the wire; the entry is already marked as sent."""
        try:
            answer = await self._call(entry, "POST", CREATE_PATH[entry.kind], entry.params)
        except NotSent as e:
            if entry.kind == "pay":
                refusal = answers.refused(entry.request_id, entry.operation, "cloud_unreachable", str(e))
                await self.journal.move(entry.seq, EgressState.failed, expect=[EgressState.forwarding], answer=refusal)
            else:
                await self._later(entry, EgressState.queued, EgressState.forwarding, f"not sent: {e}")
            return
        except InDoubt as e:
            log.warning("egress_in_doubt", seq=entry.seq, request_id=entry.request_id, error=str(e))
            moved = await self.journal.move(
                entry.seq,
                EgressState.in_doubt,
                expect=[EgressState.forwarding],
                error=answers.error("in_doubt", str(e)),
                next_attempt_at=clock.now(),
            )
            if moved is not None:
                await self._settle(moved, resend=False)
            return
        await self._record(entry, answer, expect=EgressState.forwarding)

    async def _record(self, entry: TerminalRequest, answer: GatewayAnswer, *, expect: EgressState) -> None:
        """Store the gateway's answer as the terminal's outcome."""
        body = answer.body
        self._failures.pop(entry.seq, None)
        if entry.kind == "pay" and isinstance(body.get("order"), dict):
            outcome = answers.payment(entry.request_id, entry.operation, body["order"])
        elif entry.kind == "refund" and isinstance(body.get("refund"), dict):
            outcome = answers.refund(entry.request_id, body["refund"])
        elif entry.kind == "refund" and answer.status in RETRY_LATER and answer.code != "not_refundable":
            await self._later(entry, EgressState.queued, expect, f"gateway refused: {answer.code} {answer.message}")
            log.error("egress_refund_refused_by_gateway", seq=entry.seq, code=answer.code, message=answer.message)
            return
        else:
            code = answer.code or f"http_{answer.status}"
            if answer.status in (401, 403):
                code = "gateway_refused"
                log.error("egress_refused_by_gateway", seq=entry.seq, status=answer.status, error=answer.message)
            outcome = answers.refused(entry.request_id, entry.operation, code, answer.message or code)
        state = EgressState.failed if outcome["status"] in answers.NO_MONEY else EgressState.done
        await self.journal.move(entry.seq, state, expect=[expect], answer=outcome)

    async def _settle(self, entry: TerminalRequest, *, resend: bool = True) -> None:
        """Ask the gateway what it has under the request's id; only then decide or resend."""
        path = f"/v1/requests/{quote(entry.gateway_request_id, safe=':')}"
        try:
            answer = await self._call(entry, "GET", path, None)
        except (NotSent, InDoubt) as e:
            await self._later(entry, EgressState.in_doubt, EgressState.in_doubt, f"cannot ask the gateway: {e}")
            return
        if answer.status == 200 and ("order" in answer.body or "refund" in answer.body):
            self.metrics.settled.labels("found").inc()
            log.info("egress_settled", seq=entry.seq, request_id=entry.request_id, found=True)
            await self._record(entry, answer, expect=EgressState.in_doubt)
            return
        if answer.status != 404:
            await self._later(
                entry, EgressState.in_doubt, EgressState.in_doubt, f"gateway: {answer.code} {answer.message}"
            )
            return
        self.metrics.settled.labels("not_found").inc()
        now = clock.now()
        lost_request_dead = entry.sent_at is None or now > entry.sent_at + self.cfg.gateway_window_s + GRACE_S
        if entry.kind == "pay" and now - entry.created_at > PAYMENT_RESEND_S:
            if not lost_request_dead:
                wait_until = (entry.sent_at or now) + self.cfg.gateway_window_s + GRACE_S + 1
                await self.journal.move(
                    entry.seq, EgressState.in_doubt, expect=[EgressState.in_doubt], next_attempt_at=wait_until
                )
                return
            log.info("egress_settled", seq=entry.seq, request_id=entry.request_id, found=False, outcome="failed")
            refusal = answers.refused(
                entry.request_id,
                entry.operation,
                "not_forwarded",
                "the payment platform never received this payment; nothing was charged",
            )
            await self.journal.move(entry.seq, EgressState.failed, expect=[EgressState.in_doubt], answer=refusal)
            return
        if not resend:
            # Just lost in transit: the copy on the wire may still be on its way. Resend after a backoff, asking first.
            await self._later(entry, EgressState.in_doubt, EgressState.in_doubt, "the gateway had nothing yet")
            return
        log.info("egress_settled", seq=entry.seq, request_id=entry.request_id, found=False, outcome="resend")
        moved = await self.journal.move(
            entry.seq,
            EgressState.forwarding,
            expect=[EgressState.in_doubt],
            sent=True,
            note="the gateway had nothing under this request id: sent again",
        )
        if moved is not None:
            await self._forward(moved)

    async def _later(self, entry: TerminalRequest, state: EgressState, expect: EgressState, why: str) -> None:
        failures = self._failures.get(entry.seq, 0) + 1
        self._failures[entry.seq] = failures
        delay = min(self.cfg.retry_max_s, self.cfg.retry_base_s * 2 ** min(failures - 1, 16))
        await self.journal.move(
            entry.seq,
            state,
            expect=[expect],
            error=answers.error("retrying", why[:500]),
            next_attempt_at=clock.now() + delay * random.uniform(0.8, 1.2),
        )

    # --- what a terminal asks later --------------------------------------------------------------------------

    async def current(self, entry: TerminalRequest) -> dict[str, Any]:
        """The terminal's answer for a journaled request, asking the gateway again while it is not final."""
        if entry.state in (EgressState.forwarding, EgressState.in_doubt):
            return answers.waiting(
                entry.request_id, entry.operation, "pending", "in_doubt", "the outcome is not known yet; ask again"
            )
        if entry.state is EgressState.queued:
            return answers.waiting(
                entry.request_id,
                entry.operation,
                "queued",
                "cloud_unreachable",
                "the refund is kept by the agent and sent when the payment platform can be reached",
            )
        answer = entry.answer or {}
        if entry.state is EgressState.failed or not answers.may_change(answer):
            return answer
        path = f"/v1/requests/{quote(entry.gateway_request_id, safe=':')}"
        try:
            fresh = await self._call(entry, "GET", path, None)
        except (NotSent, InDoubt):
            return {**answer, "stale": True}
        if fresh.status != 200:
            log.warning("egress_refresh_refused", seq=entry.seq, status=fresh.status, code=fresh.code)
            return {**answer, "stale": True}
        return await self._refresh(entry, fresh.body, answer)

    async def _refresh(self, entry: TerminalRequest, body: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
        if entry.kind == "pay" and isinstance(body.get("order"), dict):
            outcome = answers.payment(entry.request_id, entry.operation, body["order"])
        elif entry.kind == "refund" and isinstance(body.get("refund"), dict):
            outcome = answers.refund(entry.request_id, body["refund"])
        else:
            return {**stored, "stale": True}
        if outcome != stored:
            if outcome["status"] in answers.NO_MONEY:
                await self.journal.move(entry.seq, EgressState.failed, expect=[EgressState.done], answer=outcome)
            else:
                await self.journal.refresh_answer(entry.seq, outcome)
        return outcome

    async def close_payment(self, entry: TerminalRequest) -> dict[str, Any]:
        """Close a QR payment nobody paid (the gateway asks the channel; a payment that beat the close wins)."""
        order_no = entry.params["business_order_no"]
        try:
            answer = await self._call(entry, "POST", f"/v1/orders/{quote(order_no, safe=':')}/close", {})
        except (NotSent, InDoubt) as e:
            raise CloudUnreachable(str(e)) from e
        if isinstance(answer.body.get("order"), dict):
            return await self._refresh(entry, answer.body, entry.answer or {})
        raise CloudUnreachable(f"gateway: {answer.code} {answer.message}")

    async def read(self, app: str, path: str) -> GatewayAnswer:
        """A read passed through as the terminal's app (the end-of-shift list)."""
        try:
            return await self.client.call("GET", path, None, app=app)
        except NotSent as e:
            self._down(str(e))
            raise CloudUnreachable(str(e)) from e
        except InDoubt as e:
            raise CloudUnreachable(str(e)) from e

    # --- background ----------------------------------------------------------------------------------------

    async def _settle_loop(self) -> None:
        """Settle what is due: in-doubt forwards, queued refunds; while the link is down, probe it."""
        while True:
            self._wake.clear()
            try:
                if self.link_down and time.monotonic() - self._last_probe >= self.cfg.link_retry_s:
                    await self._probe()
                now = clock.now()
                stale = now - self.cfg.timeout_s - GRACE_S
                for seq in await self.journal.due(now, stale):
                    if seq not in self._tasks:
                        self._ensure(seq, fresh=False)
                nxt = await self.journal.next_due_at()
            except EgressJournalUnavailable as e:
                log.error("egress_journal_unavailable", error=str(e))
                nxt = None
            except Exception:
                log.exception("egress_settle_loop_failed")
                nxt = None
            delay = self.poll_s if nxt is None else min(self.poll_s, max(0.01, nxt - clock.now()))
            if self.link_down:
                delay = min(delay, self.cfg.link_retry_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def refresh_gauges(self) -> None:
        counts, oldest = await self.journal.stats()
        for state, n in counts.items():
            self.metrics.entries.labels(state).set(n)
        self.metrics.oldest_queued_refund.set(clock.now() - oldest if oldest else 0)
        self.metrics.journal_writable.set(0 if self.journal.failing else 1)

    async def _gauge_loop(self) -> None:
        while True:
            try:
                await self.refresh_gauges()
            except Exception:
                log.exception("egress_gauges_failed")
            await asyncio.sleep(5)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(3600)
            try:
                cutoff = clock.now() - self.cfg.retention_days * 86400
                while (n := await self.journal.prune(cutoff, 500)) > 0:
                    if n < 500:
                        break
                    await asyncio.sleep(0.05)  # let live writes between the batches
            except Exception:
                log.exception("egress_prune_failed")
