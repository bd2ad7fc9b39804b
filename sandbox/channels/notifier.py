"""Callbacks to the merchant's ``notify_url``, with each channel's retry behaviour on a compressed clock.

WeChat retries a callback not answered 2xx at growing intervals for about a day (15 s, 15 s, 30 s, 3 min, 10 min,
20 min, 30 min ×3, 60 min, 3 h ×3, 6 h ×2), signing every delivery anew. Alipay re-sends the same signed form
until it reads exactly ``success`` (4 min, 10 min, 10 min, 1 h, 2 h, 6 h, 15 h). UnionPay re-sends a
back-notification not answered HTTP 200, five more times at doubling intervals (1, 2, 4, 8, 16 min; our reading
of its material, which gives the count and the doubling). The sandbox keeps the shape and divides the intervals
by ``time_scale``. Every delivery is recorded in the ledger and kept for tests. Delays and retries are waited on
the shared clock (``bridge.clock``), so a simulated day that jumps forward hours delivers a callback delayed by
hours at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from bridge import clock
from sandbox.channels.faults import FaultBook, NotifyFault
from sandbox.channels.ledger import Ledger

log = logging.getLogger("sandbox.channels.notify")

WECHAT_RETRY_S = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
ALIPAY_RETRY_S = (240, 600, 600, 3600, 7200, 21600, 54000)
UNIONPAY_RETRY_S = (60, 120, 240, 480, 960)
RETRY_S = {"wechat": WECHAT_RETRY_S, "alipay": ALIPAY_RETRY_S, "unionpay": UNIONPAY_RETRY_S}

Builder = Callable[[], tuple[dict[str, str], bytes]]
"""Makes one delivery's headers and body (WeChat re-signs each time)."""
Acceptor = Callable[[int, bytes], bool]


@dataclass
class Sent:
    """One delivery as it went out, for tests that replay or tamper with it."""

    record_id: int
    channel: str
    kind: str
    url: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    answer: bytes = b""


@dataclass
class _Job:
    record_id: int
    channel: str
    kind: str
    url: str
    build: Builder
    accepted: Acceptor
    schedule: tuple[float, ...]


def _spoiled(build: Builder) -> Builder:
    """Each delivery signed as usual, then its body altered by one trailing byte: the signature no longer covers
    what is sent."""

    def spoiled() -> tuple[dict[str, str], bytes]:
        headers, body = build()
        return headers, body + b" "

    return spoiled


@dataclass
class Notifier:
    ledger: Ledger
    faults: FaultBook
    time_scale: float = 1000.0
    first_delay_s: float = 0.0
    answer_timeout_s: float = 5.0
    sent: deque[Sent] = field(default_factory=lambda: deque(maxlen=1000))
    _jobs: dict[int, _Job] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def send(
        self,
        *,
        channel: str,
        merchant: str,
        kind: str,
        ref: str,
        notification_id: str,
        url: str,
        build: Builder,
        accepted: Acceptor,
    ) -> int:
        schedule = RETRY_S[channel]
        record_id = self.ledger.add_notification(
            channel=channel, merchant=merchant, kind=kind, ref=ref, notification_id=notification_id, url=url
        )
        job = _Job(record_id, channel, kind, url, build, accepted, tuple(s / self.time_scale for s in schedule))
        self._jobs[record_id] = job
        rule = self.faults.take("notify", f"{channel}.{kind}", ref)
        if rule is not None and rule.mode == NotifyFault.lost:
            self.ledger.update_notification(record_id, status="lost")
            log.info("callback %s %s lost on purpose", channel, notification_id)
            return record_id
        if rule is not None and rule.mode == NotifyFault.bad_signature:
            job.build = _spoiled(build)
        delay = self.first_delay_s + (rule.delay_s if rule is not None and rule.mode == NotifyFault.late else 0.0)
        self._start(job, delay)
        if rule is not None and rule.mode == NotifyFault.duplicate:
            self._start(job, delay)
        return record_id

    def resend(self, record_id: int) -> bool:
        """Deliver a recorded callback once more (as the channel does when it re-pushes)."""
        job = self._jobs.get(record_id)
        if job is None:
            return False
        self._start(job, 0.0)
        return True

    def _start(self, job: _Job, delay: float) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(job, delay))
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def idle(self) -> None:
        """Wait until no delivery is in progress or scheduled."""
        await self._idle.wait()

    async def _deliver(self, job: _Job, delay: float) -> None:
        if delay:
            await clock.sleep(delay)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.answer_timeout_s))
        for wait in (0.0, *job.schedule):
            if wait:
                await clock.sleep(wait)
            headers, body = job.build()
            sent = Sent(job.record_id, job.channel, job.kind, job.url, headers, body)
            self.sent.append(sent)
            error = None
            try:
                async with self._session.post(job.url, data=body, headers=headers) as resp:
                    sent.status, sent.answer = resp.status, await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = repr(exc)
            record = self.ledger.notification(job.record_id) or {}
            total = int(record.get("attempts") or 0) + 1
            if error is None and sent.status is not None and job.accepted(sent.status, sent.answer):
                self.ledger.update_notification(
                    job.record_id,
                    status="delivered",
                    attempts=total,
                    last_status=sent.status,
                    last_error=None,
                    delivered_at=self.ledger.now().isoformat(),
                )
                return
            self.ledger.update_notification(
                job.record_id,
                attempts=total,
                last_status=sent.status,
                last_error=error or sent.answer[:200].decode(errors="replace"),
            )
        if (self.ledger.notification(job.record_id) or {}).get("status") != "delivered":
            self.ledger.update_notification(job.record_id, status="gave_up")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
