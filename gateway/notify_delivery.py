"""Delivering the outbox to hospital business systems: a signed JSON POST per event, retried on a schedule
that spans a day.

The body is signed with the gateway's key in the bridge's envelope (the request string over method, path,
timestamp, nonce and body digest), so a business system verifies a notification exactly as it verifies our
API answers. Any 2xx is delivery. A business system must treat events idempotently by ``id``: an event is
sent once per attempt, and an attempt whose answer was lost is attempted again.

Every URL, the first and each one a redirect names, goes through ``gateway.notify_guard``: one of the app's
hosts, resolved to public addresses only. A redirect is followed (up to ``notifications.max_redirects``),
signed afresh for its own path.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
from yarl import URL

from bridge import protocol
from gateway.notify_guard import GuardedResolver, NotifyUrlRefused, app_hosts, check_url, networks
from gateway.services import Services, log
from gateway.store import outbox, registry

HEADER_EVENT_ID = "X-HB-Event-Id"
HOSTS_TTL_S = 30.0


def event_body(notice: Any) -> bytes:
    return json.dumps(
        {
            "id": notice.id,
            "type": notice.event_type,
            "created_at": notice.created_at.isoformat(),
            "data": notice.payload,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


class Deliverer:
    def __init__(self, svc: Services, signing_key: protocol.SigningKey) -> None:
        self.svc = svc
        self.signing_key = signing_key
        self._session: aiohttp.ClientSession | None = None
        self._hosts: dict[str, tuple[float, list[str]]] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            cfg = self.svc.cfg.notifications
            timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(networks(cfg.allow_addresses)))
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session

    async def _app_hosts(self, app_id: str) -> list[str]:
        """The app's notify hosts, read again at most every ``HOSTS_TTL_S``: a registry change reaches every
        instance within that, and a busy outbox does not read the app once per event."""
        now = time.monotonic()
        cached = self._hosts.get(app_id)
        if cached is not None and now - cached[0] < HOSTS_TTL_S:
            return cached[1]
        app = await registry.load_app(self.svc.db, app_id)
        hosts = app_hosts(app.notify_url, app.notify_hosts) if app is not None else []
        self._hosts[app_id] = (now, hosts)
        return hosts

    async def _post(self, url: str, body: bytes, notice: Any) -> int:
        """POST the event, following redirects through the guard; the final status."""
        cfg = self.svc.cfg.notifications
        hosts = await self._app_hosts(notice.app_id)
        allow = networks(cfg.allow_addresses)
        for _ in range(cfg.max_redirects + 1):
            target = check_url(url, hosts, allow)
            headers = protocol.sign_request(self.signing_key, "POST", target.raw_path_qs, body)
            headers["Content-Type"] = "application/json"
            headers[HEADER_EVENT_ID] = str(notice.id)
            async with self._get_session().post(target, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                location = resp.headers.get("Location")
                if resp.status not in (301, 302, 303, 307, 308) or not location:
                    return resp.status
            url = str(target.join(URL(location)))
        raise NotifyUrlRefused(f"more than {cfg.max_redirects} redirects")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def deliver(self, notice: Any) -> bool:
        """One attempt; records its outcome and schedules the next one. True when delivered."""
        url = notice.notify_url
        if not url:
            await outbox.attempt_failed(self.svc.db, notice.id, status=None, error="no notify URL", retry_in_s=None)
            return False
        body = event_body(notice)
        status: int | None = None
        try:
            status = await self._post(url, body, notice)
            if 200 <= status < 300:
                await outbox.delivered(self.svc.db, notice.id, status)
                return True
            error = f"HTTP {status}"
        except NotifyUrlRefused as e:
            error = f"refused: {e}"
        except (aiohttp.ClientError, TimeoutError) as e:
            refused = e.__cause__ if isinstance(e.__cause__, NotifyUrlRefused) else None
            error = f"refused: {refused}" if refused is not None else f"{type(e).__name__}: {e}"
        schedule = self.svc.cfg.notifications.schedule_s
        retry_in = schedule[notice.attempts] if notice.attempts < len(schedule) else None
        await outbox.attempt_failed(self.svc.db, notice.id, status=status, error=error, retry_in_s=retry_in)
        if retry_in is None:
            log.warning("notification_dead", id=notice.id, app=notice.app_id, error=error)
        return False
