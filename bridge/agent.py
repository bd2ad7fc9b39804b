"""The agent: the resources with a lifetime (journal, adapter, dispatcher, housekeeping) and the two listeners.

Start order is what makes the agent safe to restart at any moment: the ops listener comes up first (so an
operator sees ``/readyz`` say "not ready" during recovery), then the journal opens, the adapter starts, every
unfinished entry is queued again, and only then does the mutual-TLS listener accept new work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from adapters.base import Adapter, AdapterError
from adapters.profile import load_profile
from bridge import catalog, clock, protocol, tls
from bridge.config import BridgeConfig, HisConfig
from bridge.dispatcher import Dispatcher
from bridge.intranet.api import create_intranet_app, server_context
from bridge.intranet.service import Intranet
from bridge.journal import Journal, JournalUnavailable
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.settings import parse_host_port

log = get_logger("bridge.agent")


def load_credentials(
    cfg: BridgeConfig,
) -> tuple[protocol.SigningKey, dict[str, protocol.VerifyKey], tls.IdentityPolicy]:
    """Our response-signing key, the platform's verify keys and the allowed client identities."""
    signing_key = protocol.load_signing_key(cfg.signing.key_id, cfg.signing.key)
    client_keys = {c.key_id: protocol.load_verify_key(c.key_id, c.public_key) for c in cfg.signing.clients}
    policy = tls.IdentityPolicy.build(
        [
            tls.AllowedClient(c.cn, c.spki_sha256, frozenset(c.key_ids) if c.key_ids is not None else None)
            for c in cfg.tls.allowed_clients
        ]
    )
    return signing_key, client_keys, policy


def build_adapter(cfg: BridgeConfig) -> Adapter:
    profile = load_profile(
        cfg.his.profile,
        known_operations=frozenset(catalog.OPERATIONS),
        read_operations=catalog.READ_OPERATIONS,
        overrides=cfg.his.overrides,
    )
    return profile.build_adapter()


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


@dataclass
class RunningAgent:
    agent: Agent
    api_url: str
    ops_url: str
    _runners: list[web.AppRunner]
    intranet_url: str | None = None

    async def stop(self) -> None:
        while self._runners:
            await self._runners.pop().cleanup()


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes no public accessor for the bound port when listening on port 0
    assert isinstance(server, asyncio.Server) and server.sockets
    return int(server.sockets[0].getsockname()[1])


async def start_agent(cfg: BridgeConfig, *, adapter: Adapter | None = None) -> RunningAgent:
    """Start both listeners and the agent; port 0 in the config picks free ports (tests, benchmarks)."""
    from bridge.api import create_api_app
    from bridge.ops_api import create_ops_app

    agent = Agent(cfg, adapter=adapter)
    ops_runner = web.AppRunner(create_ops_app(agent), access_log=None)
    await ops_runner.setup()
    ops_host, ops_port = parse_host_port(cfg.server.ops_listen)
    ops_site = web.TCPSite(ops_runner, ops_host, ops_port)
    await ops_site.start()
    ops_url = f"http://{ops_host}:{_bound_port(ops_site)}"

    api_runner = web.AppRunner(create_api_app(agent), access_log=None, shutdown_timeout=5)
    try:
        await api_runner.setup()
    except BaseException:
        await ops_runner.cleanup()
        raise
    host, port = parse_host_port(cfg.server.listen)
    ssl_ctx = tls.server_context(cfg.tls.cert, cfg.tls.key, cfg.tls.client_ca)
    agent.ssl_context = ssl_ctx
    site = web.TCPSite(api_runner, host, port, ssl_context=ssl_ctx, backlog=1024)
    await site.start()
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    api_url = f"https://{url_host}:{_bound_port(site)}"
    runners = [ops_runner, api_runner]
    intranet_url = None
    if agent.intranet is not None and cfg.intranet is not None:
        intranet_url = await _start_intranet(agent.intranet, cfg.intranet.listen, runners)
    log.info(
        "serving",
        api=api_url,
        ops=ops_url,
        intranet=intranet_url,
        hospital=cfg.hospital,
        endpoint=agent.adapter.endpoint,
    )
    return RunningAgent(agent, api_url, ops_url, runners, intranet_url)


async def _start_intranet(intranet: Intranet, listen: str, runners: list[web.AppRunner]) -> str:
    """The second listener, on its own address so that a firewall can keep it on the hospital LAN. It starts
    last: by then the agent (and the outbound journal's recovery) is ready."""
    runner = web.AppRunner(create_intranet_app(intranet), access_log=None, shutdown_timeout=5)
    try:
        await runner.setup()
        host, port = parse_host_port(listen)
        tls_cfg = intranet.cfg.tls
        site = web.TCPSite(runner, host, port, ssl_context=server_context(tls_cfg) if tls_cfg else None, backlog=512)
        await site.start()
    except BaseException:
        await runner.cleanup()
        for started in reversed(runners):
            await started.cleanup()
        raise
    runners.append(runner)
    intranet.listening = True
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"{'https' if tls_cfg else 'http'}://{url_host}:{_bound_port(site)}"


async def serve(cfg: BridgeConfig) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the HIS profile. Under systemd (``Type=notify``) it says
    READY=1 once recovery is complete, pings the watchdog from this loop, and says STOPPING=1 on the way out."""
    import signal

    from bridge import systemd
    from bridge.reload import Reloader

    notifier = systemd.Notifier.from_env()
    running = await start_agent(cfg)
    reloader = Reloader(running.agent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        notifier.reloading()
        await reloader.reload()
        notifier.ready()

    def on_hup() -> None:
        task = asyncio.create_task(reload(), name="reload")
        background.add(task)
        task.add_done_callback(background.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    interval = systemd.watchdog_interval()
    if interval is not None:
        background.add(asyncio.create_task(systemd.watchdog_loop(notifier, interval, running.agent.healthy)))
    notifier.ready()
    await stop.wait()
    log.info("stopping")
    notifier.stopping()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await running.stop()


@contextlib.asynccontextmanager
async def agent_lifetime(agent: Agent) -> AsyncIterator[None]:
    await agent.start()
    try:
        yield
    finally:
        await agent.stop()
