"""Reload the HIS profile on SIGHUP without dropping a call.

A vendor engineer fixes a mapping, or the HIS moves to another host: the operator edits the profile (or the
config's ``[his]`` section) and runs ``systemctl reload his-bridge``. The new adapter takes new calls at once;
calls already sent finish on the old one, which is closed only after they are back. Certificates and keys are
reloaded too, so that a renewed certificate or a new signing key takes effect without downtime: new TLS
handshakes use the new certificate, connections already open keep theirs. The intranet's terminals are reloaded
as well (a kiosk added, a key rotated, a limit changed, a terminal removed): requests already accepted finish
under the registry they were checked with, and the per-day limits, counted from the outbound journal, carry on.
Anything that does not load leaves everything running as it was. Listeners, the journal and dispatch settings,
the rest of ``[intranet]`` and the egress need a restart.
"""

from __future__ import annotations

import asyncio
import ssl

from adapters.base import AdapterError
from adapters.profile import ProfileError
from bridge import tls
from bridge.agent import Agent
from bridge.config import BridgeConfig, ConfigError, load_config
from bridge.intranet.terminals import TerminalRegistry
from bridge.logs import get_logger
from bridge.wiring import build_adapter, load_credentials

log = get_logger("bridge.reload")


class Reloader:
    """Serializes reloads: a second SIGHUP during a reload waits for the first."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._lock = asyncio.Lock()

    async def reload(self) -> bool:
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> bool:
        agent = self.agent
        source = agent.cfg.source
        try:
            if source is None:
                raise ConfigError("the agent was not started from a config file")
            cfg = load_config(source)
            credentials = load_credentials(cfg)
            tls.server_context(cfg.tls.cert, cfg.tls.key, cfg.tls.client_ca)  # the pair must load before we switch
            adapter = build_adapter(cfg)
            terminals = _terminals(agent, cfg)
        except (ConfigError, ProfileError, OSError, ValueError, ssl.SSLError) as e:
            agent.metrics.reloads.labels("failed").inc()
            log.error("reload_failed", error=str(e), kept_profile=str(agent.cfg.his.profile))
            return False
        sections = ("server", "journal", "dispatch", "intranet", "egress")
        changed = [name for name in sections if getattr(cfg, name) != getattr(agent.cfg, name)]
        if terminals is not None:
            changed.remove("intranet")
        if changed:
            log.warning(
                "reload_needs_restart", sections=changed, note="only [his], the profile and the terminals are reloaded"
            )
        try:
            await adapter.start()
        except AdapterError as e:
            log.warning("his_unreachable_at_reload", endpoint=adapter.endpoint, error=e.message)
        agent.signing_key, agent.client_keys, agent.identity_policy = credentials
        agent.cfg.tls, agent.cfg.signing = cfg.tls, cfg.signing
        if agent.ssl_context is not None:
            agent.ssl_context.load_cert_chain(str(cfg.tls.cert), str(cfg.tls.key))
            agent.ssl_context.load_verify_locations(cafile=str(cfg.tls.client_ca))
        agent.refresh_cert_expiry()
        if terminals is not None and agent.intranet is not None and cfg.intranet is not None:
            agent.intranet.terminals, agent.intranet.cfg = terminals, cfg.intranet
            agent.cfg.intranet = cfg.intranet
            log.info("terminals_reloaded", terminals=sorted(terminals.by_id))
        old = await agent.swap_adapter(adapter, cfg.his)
        try:
            await old.close()
        except Exception:
            log.exception("old_adapter_close_failed", endpoint=old.endpoint)
        agent.metrics.reloads.labels("ok").inc()
        log.info("reloaded", profile=str(cfg.his.profile), endpoint=adapter.endpoint, previous=old.endpoint)
        return True


def _terminals(agent: Agent, cfg: BridgeConfig) -> TerminalRegistry | None:
    """The new terminal registry, when ``[intranet]`` differs from the running one in its terminals only (and
    the egress, which names the terminals' apps, is unchanged); None when there is nothing to swap."""
    running, new = agent.cfg.intranet, cfg.intranet
    if running is None or new is None or agent.intranet is None or new == running or cfg.egress != agent.cfg.egress:
        return None
    if new.model_copy(update={"terminals": running.terminals}) != running:
        return None
    assert cfg.egress is not None
    return TerminalRegistry.load(new, cfg.egress)
