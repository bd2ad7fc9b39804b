"""Every instance follows the tenants in the database: when their version moves, it reloads them and rebuilds
just the channels and agent links whose settings changed.

The version is polled every ``tenants.poll_s``; on PostgreSQL a ``LISTEN`` connection is woken by the
``NOTIFY`` each change sends, so a change is seen within moments, and the poll is only the safety net (a
dropped listening connection is opened again on the next poll). A channel or agent link that is replaced or
removed is closed ``close_grace_s`` later, so calls already using it finish. A merchant or agent link whose
new settings cannot be built (a key file missing on this host) is logged and the one in use is kept.

App keys, app and hospital switches take effect at once: the API reads the app with its keys on every request
(``gateway.store.registry.load_app``); this watcher serves what is built from the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from gateway.channels.base import Channel
from gateway.config import BridgeLink, MerchantConfig
from gateway.his import HisLink
from gateway.services import Services
from gateway.store import channel_state
from gateway.store import tenants as store
from gateway.tenants.snapshot import Tenants

log = structlog.get_logger("gateway.tenants")

ChannelBuilder = Callable[[MerchantConfig], Channel]
HisBuilder = Callable[[BridgeLink], HisLink]


async def _close(resource: Any) -> None:
    closer = getattr(resource, "aclose", None) or getattr(resource, "close", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()


class TenantWatcher:
    def __init__(
        self,
        svc: Services,
        *,
        build_channel: ChannelBuilder | None = None,
        build_his: HisBuilder | None = None,
    ) -> None:
        """``build_channel`` / ``build_his``: given when this instance builds its own channels / agent links
        (not when a test handed it fixed ones)."""
        self.svc = svc
        self.build_channel = build_channel
        self.build_his = build_his
        self.wake = asyncio.Event()
        self.reloads = 0
        self._retiring: list[tuple[float, Any]] = []
        self._listener: Any = None

    # --- the initial build -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the tenants and build what this instance owns."""
        tenants = Tenants.from_rows(await store.load(self.svc.db))
        await self._apply(tenants, first=True)

    # --- following changes --------------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Reload when the version moved; True if it did."""
        version = await store.read_version(self.svc.db)
        if version == self.svc.tenants.version:
            return False
        tenants = Tenants.from_rows(await store.load(self.svc.db))
        await self._apply(tenants)
        self.reloads += 1
        log.info("tenants_reloaded", version=tenants.version, instance=self.svc.instance)
        return True

    async def run(self) -> None:
        poll_s = self.svc.cfg.tenants.poll_s
        while True:
            await self._listen()
            try:
                await self.refresh()
            except Exception:
                log.exception("tenants_reload_failed")
            await self._close_retired()
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), poll_s)

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        for _, resource in self._retiring:
            await _close(resource)
        self._retiring.clear()

    async def _listen(self) -> None:
        """On PostgreSQL, keep one connection listening for the changes' ``NOTIFY``."""
        db = self.svc.db
        if not db.is_postgres or (self._listener is not None and not self._listener.is_closed()):
            return
        dsn = make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            await conn.add_listener(store.NOTIFY_CHANNEL, lambda *_: self.wake.set())
        except Exception as e:
            log.warning("tenants_listen_failed", error=str(e), fallback="polling")
            return
        self._listener = conn

    # --- applying a version -------------------------------------------------------------------------------

    async def _apply(self, tenants: Tenants, *, first: bool = False) -> None:
        old = self.svc.tenants
        self.svc.tenants = tenants
        if self.build_channel is not None:
            await self._channels(old, tenants, first)
        if self.build_his is not None:
            self._his(old, tenants, first)

    async def _channels(self, old: Tenants, new: Tenants, first: bool) -> None:
        channels = self.svc.channels
        added = []
        for merchant_id, merchant in new.merchants.items():
            if not first and old.merchants.get(merchant_id) == merchant and merchant_id in channels:
                continue
            assert self.build_channel is not None
            try:
                channel = self.build_channel(merchant)
            except Exception as e:
                log.error("channel_build_failed", merchant=merchant_id, error=str(e), kept=merchant_id in channels)
                continue
            try:
                await channel.load_trust()
            except Exception:
                log.exception("channel_trust_reload_failed", merchant=merchant_id)
            previous = channels.get(merchant_id)
            channels[merchant_id] = channel
            if previous is not None:
                self._retire(previous)
            if channel.refresh_every_s() is not None:
                added.append(merchant_id)
            if not first:
                log.info("channel_rebuilt", merchant=merchant_id, instance=self.svc.instance)
        for merchant_id in [m for m in channels if m not in new.merchants]:
            self._retire(channels.pop(merchant_id))
        if added and not first:
            await channel_state.schedule_refresh(self.svc.db, added)

    def _his(self, old: Tenants, new: Tenants, first: bool) -> None:
        links = self.svc.his
        for hospital_id, hospital in new.hospitals.items():
            bridge = hospital.bridge
            unchanged = not first and hospital_id in old.hospitals and old.hospitals[hospital_id].bridge == bridge
            if bridge is None or (unchanged and hospital_id in links):
                if bridge is None and hospital_id in links:
                    self._retire(links.pop(hospital_id))
                continue
            assert self.build_his is not None
            try:
                link = self.build_his(bridge)
            except Exception as e:
                log.error("agent_link_build_failed", hospital=hospital_id, error=str(e), kept=hospital_id in links)
                continue
            previous = links.get(hospital_id)
            links[hospital_id] = link
            if previous is not None:
                self._retire(previous)
        for hospital_id in [h for h in links if h not in new.hospitals]:
            self._retire(links.pop(hospital_id))

    def _retire(self, resource: Any) -> None:
        deadline = asyncio.get_running_loop().time() + self.svc.cfg.tenants.close_grace_s
        self._retiring.append((deadline, resource))

    async def _close_retired(self) -> None:
        now = asyncio.get_running_loop().time()
        due = [r for t, r in self._retiring if t <= now]
        self._retiring = [(t, r) for t, r in self._retiring if t > now]
        for resource in due:
            await _close(resource)
