"""``BridgeClient``: how the cloud platform calls an agent.

It signs each attempt afresh (a new nonce every time), sends over mutual TLS, refuses any answer whose
signature does not verify, and retries transport failures with the *same* request id and body — safe because
the agent journals writes idempotently on request id.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge import protocol

RETRY_STATUSES = {502, 503, 504}


class BridgeError(Exception):
    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


class BridgeUnreachable(BridgeError):
    pass


class UntrustedResponse(BridgeError):
    """The answer's signature did not verify: it is not from the agent, or was altered."""


@dataclass(frozen=True)
class BridgeResult:
    http_status: int
    body: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.body.get("status", ""))

    @property
    def result(self) -> dict[str, Any] | None:
        return self.body.get("result")

    @property
    def error(self) -> dict[str, Any] | None:
        return self.body.get("error")


class BridgeClient:
    def __init__(
        self,
        base_url: str,
        *,
        signing_key: protocol.SigningKey,
        bridge_key: protocol.VerifyKey,
        ssl_context: ssl.SSLContext | None,
        timeout_s: float = 30,
        retries: int = 3,
        backoff_s: float = 0.2,
        window_s: int = protocol.DEFAULT_WINDOW_S,
        connection_limit: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.signing_key = signing_key
        self.bridge_key = bridge_key
        self.retries = retries
        self.backoff_s = backoff_s
        self.window_s = window_s
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._limit = connection_limit
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BridgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False, limit=self._limit)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, operation: str, params: dict[str, Any]) -> BridgeResult:
        """Call one catalog operation. Writes must carry ``request_id`` and ``trade_no`` in ``params``.

        Returns the verified answer for 200 and 202; raises :class:`BridgeError` for refusals.
        """
        body = json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode()
        return await self._send("POST", f"/v1/ops/{operation}", body)

    async def operation_status(self, request_id: str) -> BridgeResult:
        return await self._send("GET", f"/v1/operations/{request_id}", b"")

    async def wait_for(self, request_id: str, *, timeout_s: float = 60, poll_s: float = 0.5) -> BridgeResult:
        """Poll a pending write until it is done or failed, or the timeout passes (then the last answer)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            answer = await self.operation_status(request_id)
            if answer.status in ("done", "failed") or loop.time() >= deadline:
                return answer
            await asyncio.sleep(poll_s)

    async def _send(self, method: str, path: str, body: bytes) -> BridgeResult:
        attempt = 0
        while True:
            attempt += 1
            headers = protocol.sign_request(self.signing_key, method, path, body)
            headers["Content-Type"] = "application/json"
            try:
                async with self._get_session().request(
                    method, self.base_url + path, data=body, headers=headers
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    resp_headers = resp.headers
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                if attempt > self.retries:
                    raise BridgeUnreachable(0, "unreachable", f"{type(e).__name__}: {e}") from e
                await asyncio.sleep(self._delay(attempt))
                continue
            try:
                protocol.verify_response(
                    self.bridge_key,
                    status,
                    headers[protocol.HEADER_NONCE],
                    resp_headers,
                    raw,
                    window_s=self.window_s,
                )
            except protocol.EnvelopeError as e:
                raise UntrustedResponse(status, e.code, e.message) from None
            data = json.loads(raw) if raw else {}
            if status in RETRY_STATUSES and attempt <= self.retries:
                await asyncio.sleep(self._delay(attempt))
                continue
            if status >= 400:
                err = data.get("error", {})
                raise BridgeError(status, err.get("code", "unknown"), err.get("message", ""), data)
            return BridgeResult(status, data)

    def _delay(self, attempt: int) -> float:
        return self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
