"""Delivering the outbox to hospital business systems: a signed JSON POST per event, retried on a schedule
that spans a day.

The body is signed with the gateway's key in the bridge's envelope (the request string over method, path,
timestamp, nonce and body digest), so a business system verifies a notification exactly as it verifies our
API answers. Any 2xx is delivery. A business system must treat events idempotently by ``id``: an event is
sent once per attempt, and an attempt whose answer was lost is attempted again.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from yarl import URL

from bridge import protocol
from gateway.services import Services, log
from gateway.store import outbox

HEADER_EVENT_ID = "X-HB-Event-Id"


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

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.svc.cfg.notifications.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

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
        headers = protocol.sign_request(self.signing_key, "POST", URL(url).raw_path_qs, body)
        headers["Content-Type"] = "application/json"
        headers[HEADER_EVENT_ID] = str(notice.id)
        status: int | None = None
        try:
            async with self._get_session().post(url, data=body, headers=headers) as resp:
                status = resp.status
                await resp.read()
            if 200 <= status < 300:
                await outbox.delivered(self.svc.db, notice.id, status)
                return True
            error = f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError) as e:
            error = f"{type(e).__name__}: {e}"
        schedule = self.svc.cfg.notifications.schedule_s
        retry_in = schedule[notice.attempts] if notice.attempts < len(schedule) else None
        await outbox.attempt_failed(self.svc.db, notice.id, status=status, error=error, retry_in_s=retry_in)
        if retry_in is None:
            log.warning("notification_dead", id=notice.id, app=notice.app_id, error=error)
        return False
