"""The agent: the resources with a lifetime (journal, adapter, dispatcher, housekeeping).

Start order is what makes the agent safe to restart at any moment: the journal opens, the adapter starts, every
unfinished entry is queued again, and only then is the agent ready. The listeners around it (``bridge.server``)
bring the ops listener up first, so that an operator sees ``/readyz`` say "not ready" during recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
from collections.abc import AsyncIterator

from adapters.base import Adapter, AdapterError
from bridge import clock, tls
from bridge.config import BridgeConfig, HisConfig
from bridge.dispatcher import Dispatcher
from bridge.intranet.service import Intranet
from bridge.journal import Journal, JournalUnavailable
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.wiring import build_adapter, load_credentials

log = get_logger("bridge.agent")


class Agent:
    def __init__(self, cfg: BridgeConfig, *, adapter: Adapter | None = None) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.signing_key, self.client_keys, self.identity_policy = load_credentials(cfg)
        self.ssl_context: ssl.SSLContext | None = None
        """The API listener's TLS context; a reload loads renewed certificates into it for new handshakes."""
        self.adapter = self._count_events(adapter or build_adapter(cfg))
        self.journal = Journal(
            cfg.journal.path,
            max_batch=cfg.journal.max_batch,
            on_commit=self.metrics.on_commit,
            on_error=self.metrics.on_journal_error,
        )
        self.dispatcher = Dispatcher(self.journal, self.adapter, cfg.dispatch, self.metrics)
        self.intranet = (
            Intranet(cfg.intranet, cfg.egress, self.metrics.egress)
            if cfg.intranet is not None and cfg.egress is not None
            else None
        )
        """The terminals' side (kiosks, cashier windows) and their forwarder to the gateway, when configured."""
        self.ready = False
        self.journal_probe_s = 1.0
        """While the journal cannot commit, how often a harmless write checks whether it can again."""
        self._housekeeping: list[asyncio.Task[None]] = []

    def _count_events(self, adapter: Adapter) -> Adapter:
        if hasattr(adapter, "on_event"):
            events = self.metrics.adapter_events
            adapter.on_event = lambda event, detail: events.labels(adapter.endpoint, event, detail).inc()
        return adapter

    async def swap_adapter(self, adapter: Adapter, his: HisConfig) -> Adapter:
        """Route new calls to ``adapter``; returns the previous one once its calls in flight are back."""
        self.adapter = self._count_events(adapter)
        self.cfg.his = his
        return await self.dispatcher.replace_adapter(adapter)

    @property
    def serving(self) -> bool:
        """Recovered, able to journal new writes, and — with terminals — their listener up: what ``/readyz``
        reports."""
        intranet_up = self.intranet is None or self.intranet.listening
        return self.ready and self.journal.failing is None and intranet_up

    def healthy(self) -> bool:
        """What the systemd watchdog vouches for: the journal writer thread is alive."""
        return self.journal.writer_alive

    async def start(self) -> None:
        await self.journal.open()
        try:
            await self.adapter.start()
        except AdapterError as e:
            # A HIS that is down must not keep the agent from journaling writes; the adapter starts on first use.
            log.warning("his_unreachable_at_start", endpoint=self.adapter.endpoint, error=e.message)
        await self.dispatcher.start()
        if self.intranet is not None:
            await self.intranet.start()
        self._housekeeping = [
            asyncio.create_task(self._refresh_gauges(), name="gauges"),
            asyncio.create_task(self._prune(), name="prune"),
            asyncio.create_task(self._watch_journal(), name="journal-watch"),
        ]
        self.refresh_cert_expiry()
        self.ready = True
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        for task in self._housekeeping:
            task.cancel()
        await asyncio.gather(*self._housekeeping, return_exceptions=True)
        if self.intranet is not None:
            await self.intranet.stop()
        await self.dispatcher.stop()
        await self.adapter.close()
        await self.journal.close()

    def refresh_cert_expiry(self) -> None:
        for name, path in (("server", self.cfg.tls.cert), ("client_ca", self.cfg.tls.client_ca)):
            self.metrics.cert_expiry_days.labels(name).set(tls.days_to_expiry(tls.load_certificate(path)))

    async def refresh_gauges(self) -> None:
        counts, oldest = await self.journal.stats()
        for state, n in counts.items():
            self.metrics.journal_entries.labels(state).set(n)
        self.metrics.journal_oldest_pending.set(clock.now() - oldest if oldest else 0)
        with contextlib.suppress(OSError):
            self.metrics.journal_disk_free.set(shutil.disk_usage(os.path.dirname(self.journal.path)).free)

    async def _watch_journal(self) -> None:
        """After a failed commit (disk full), probe until a commit succeeds, so the agent is ready again as
        soon as space returns even if no write arrives meanwhile."""
        while True:
            await asyncio.sleep(self.journal_probe_s)
            if self.journal.failing is None:
                continue
            try:
                await self.journal.probe()
                log.info("journal_writable_again")
            except JournalUnavailable:
                pass
            except Exception:
                log.exception("journal_probe_failed")

    async def _refresh_gauges(self) -> None:
        while True:
            try:
                await self.refresh_gauges()
            except Exception:
                log.exception("gauge_refresh_failed")
            await asyncio.sleep(5)

    async def _prune(self) -> None:
        jcfg = self.cfg.journal
        while True:
            await asyncio.sleep(jcfg.prune_interval_s)
            cutoff = clock.now() - jcfg.retention_days * 86400
            try:
                while (n := await self.journal.prune(cutoff, jcfg.prune_batch)) > 0:
                    self.metrics.pruned.inc(n)
                    if n < jcfg.prune_batch:
                        break
                    await asyncio.sleep(0.05)  # let live writes between the batches
            except Exception:
                log.exception("prune_failed")


@contextlib.asynccontextmanager
async def agent_lifetime(agent: Agent) -> AsyncIterator[None]:
    await agent.start()
    try:
        yield
    finally:
        await agent.stop()
