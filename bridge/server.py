"""The agent's listeners, started and served: the ops listener first, then the agent's recovery, then the
mutual-TLS API and (with ``[intranet]``) the terminals' listener. Kept beside the agent rather than inside it, as
aiohttp keeps the runner beside the application, so that the API modules can use the agent without importing what
starts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass

from aiohttp import web

from adapters.base import Adapter
from bridge import systemd, tls
from bridge.agent import Agent
from bridge.api import create_api_app
from bridge.config import BridgeConfig
from bridge.intranet.api import create_intranet_app, server_context
from bridge.intranet.service import Intranet
from bridge.logs import get_logger
from bridge.ops_api import create_ops_app
from bridge.reload import Reloader
from bridge.settings import parse_host_port

log = get_logger("bridge.server")


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
