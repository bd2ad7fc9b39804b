"""One gateway instance: the resources with a lifetime (database, channels, HIS links, workers) and the
HTTP listener. Start order: migrate, copy the registry from the config, open the channels and bridges, start
the workers, then listen."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge import protocol
from bridge.settings import parse_host_port
from gateway import channel_trust
from gateway.api.app import create_app
from gateway.channels.base import Channel
from gateway.channels.build import merchant_channel
from gateway.config import GatewayConfig, MtlsListener
from gateway.his import BridgeHis, HisLink
from gateway.notify_delivery import Deliverer
from gateway.recon.schedule import start_scheduler
from gateway.retention.schedule import retention_forever
from gateway.sagas import registration
from gateway.sagas.escalation import escalate_forever
from gateway.services import Services, log
from gateway.sms.clock import Clock, system_clock
from gateway.sms.service import SmsService
from gateway.store import audit, registry
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from gateway.tenants.watcher import TenantWatcher
from gateway.workers import Worker, build_workers, prune_nonces

if TYPE_CHECKING:
    from gateway.sms.providers import SmsProvider


@dataclass
class Gateway:
    cfg: GatewayConfig
    channels: dict[str, Channel] | None = None
    """Channels by merchant id; built from the config when not given (tests give in-memory ones)."""
    his: dict[str, HisLink] | None = None
    run_workers: bool | None = None
    clock: Clock = system_clock
    """The SMS defences' clock (tests and the attack simulator move it)."""
    sms_provider: SmsProvider | None = None
    """An SMS provider object instead of the one ``[sms.provider]`` builds."""
    svc: Services = field(init=False)
    sms: SmsService | None = field(init=False, default=None)
    workers: list[Worker] = field(init=False, default_factory=list)
    watcher: TenantWatcher = field(init=False)
    _tasks: list[asyncio.Task[Any]] = field(init=False, default_factory=list)
    _owned: list[Any] = field(init=False, default_factory=list)

    async def start(self) -> None:
        cfg = self.cfg
        db = Database(cfg.database.url, pool_size=cfg.database.pool_size)
        try:
            revision = await upgrade(db)
            await registry.sync_from_config(db, cfg)
        except BaseException:
            await db.close()
            raise
        log.info("database_ready", dialect=db.dialect, revision=revision)
        self.svc = Services(
            cfg, db, self.channels if self.channels is not None else {}, self.his if self.his is not None else {}
        )
        self.watcher = TenantWatcher(
            self.svc,
            build_channel=(lambda merchant: merchant_channel(merchant, db)) if self.channels is None else None,
            build_his=BridgeHis.from_config if self.his is None else None,
        )
        await self.watcher.start()
        if self.channels is not None:
            await channel_trust.reload_all(self.svc)
        self.signing_key = protocol.load_signing_key(cfg.signing.key_id, cfg.signing.key)
        self.deliverer = Deliverer(self.svc, self.signing_key)
        self.workers = build_workers(self.svc, self.deliverer)
        if cfg.sms.enabled:
            self.sms = SmsService(cfg.sms, db, clock=self.clock, provider=self.sms_provider, his_for=self.svc.his_for)
        self._tasks.append(asyncio.create_task(self.watcher.run(), name="tenants-watcher"))
        self._tasks.append(asyncio.create_task(audit.seal_forever(db), name="audit-sealer"))
        run = cfg.workers.enabled if self.run_workers is None else self.run_workers
        if run:
            self._tasks += [asyncio.create_task(w.run(), name=f"worker-{w.name}") for w in self.workers]
            self._tasks.append(asyncio.create_task(prune_nonces(self.svc), name="prune-nonces"))
            self._tasks.append(asyncio.create_task(escalate_forever(self.svc), name="escalate-his-steps"))
            self._tasks.append(asyncio.create_task(channel_trust.run(self.svc), name="channel-trust"))
            self._tasks.append(asyncio.create_task(registration.release_forever(self.svc), name="registration-locks"))
            if cfg.retention.schedule and cfg.retention.days:
                self._tasks.append(asyncio.create_task(retention_forever(self.svc), name="retention"))
            if self.sms is not None:
                self._tasks.append(asyncio.create_task(self.sms.run_pruner(), name="prune-sms"))
            if cfg.recon.enabled:
                self._tasks.append(start_scheduler(self.svc))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.deliverer.close()
        if self.sms is not None:
            with contextlib.suppress(Exception):
                await self.sms.close()
        await self.watcher.close()
        if self.channels is None:
            self._owned.extend(self.svc.channels.values())
        if self.his is None:
            self._owned.extend(self.svc.his.values())
        for resource in self._owned:
            with contextlib.suppress(Exception):
                await (resource.aclose() if hasattr(resource, "aclose") else resource.close())
        await self.svc.db.close()

    def app(self) -> web.Application:
        return create_app(self.svc, self.signing_key, sms=self.sms)


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str
    runner: web.AppRunner
    mtls_url: str | None = None
    """The mutual-TLS listener (``[server.mtls]``), where the hospitals' agents call."""

    @property
    def svc(self) -> Services:
        return self.gateway.svc

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.gateway.stop()


def mtls_context(cfg: MtlsListener) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cfg.client_ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    return ctx


async def start_gateway(cfg: GatewayConfig, **kwargs: Any) -> RunningGateway:
    """Start one instance and its listener; port 0 in ``server.listen`` picks a free port (tests, benchmarks)."""
    gateway = Gateway(cfg, **kwargs)
    await gateway.start()
    runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        host, port = parse_host_port(cfg.server.listen)
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        mtls_url = None
        if cfg.server.mtls is not None:
            mhost, mport = parse_host_port(cfg.server.mtls.listen)
            msite = web.TCPSite(runner, mhost, mport, ssl_context=mtls_context(cfg.server.mtls), backlog=1024)
            await msite.start()
            mbound = int(runner.addresses[1][1])
            mtls_url = f"https://{'127.0.0.1' if mhost in ('0.0.0.0', '') else mhost}:{mbound}"
    except BaseException:
        await runner.cleanup()
        await gateway.stop()
        raise
    bound = int(runner.addresses[0][1])
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{url_host}:{bound}"
    log.info("serving", url=url, mtls=mtls_url, instance=gateway.svc.instance)
    return RunningGateway(gateway, url, runner, mtls_url)


async def serve(cfg: GatewayConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    running = await start_gateway(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await running.stop()
