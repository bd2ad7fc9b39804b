"""The gateway's business API as the agent calls it: mutual TLS, each request signed as a hospital app, each
answer believed only if the gateway signed it for that request.

What matters here is telling apart the two ways a call can fail. :class:`NotSent`: no connection was made, so
the gateway cannot have acted — a payment may be refused at once. :class:`InDoubt`: the request may have
reached the gateway (timeout, connection lost, an unsigned or unexpected answer) — nothing may be concluded or
resent until the gateway has been asked what it has under the request's id.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge import protocol
from bridge.egress.config import EgressConfig

DEFINITE_5XX = frozenset({"channel_unavailable"})
"""5xx codes the gateway answers about a request it has handled (the order exists; the channel did not take it)."""


class NotSent(Exception):
    """No connection to the gateway: the request did not leave the agent."""


class InDoubt(Exception):
    """The request may have reached the gateway; its outcome is unknown."""


@dataclass(frozen=True)
class GatewayAnswer:
    status: int
    body: dict[str, Any]

    @property
    def code(self) -> str:
        error = self.body.get("error")
        return str(error.get("code", "")) if isinstance(error, dict) else ""

    @property
    def message(self) -> str:
        error = self.body.get("error")
        return str(error.get("message", "")) if isinstance(error, dict) else ""


class GatewayClient:
    def __init__(self, cfg: EgressConfig) -> None:
        self.base_url = cfg.gateway_url
        self.keys = {a.app_id: protocol.load_signing_key(a.app_id, a.signing_key) for a in cfg.apps}
        self.default_app = cfg.apps[0].app_id
        self.gateway_key = protocol.load_verify_key(cfg.gateway_key_id, cfg.gateway_public_key)
        self.window_s = cfg.gateway_window_s
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cfg.client_cert), str(cfg.client_key))
        self._ssl = ctx
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout_s, connect=cfg.connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=200, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, app: str | None = None
    ) -> GatewayAnswer:
        """One signed call. Returns any answer the gateway signed; raises :class:`NotSent` or :class:`InDoubt`."""
        key = self.keys[app or self.default_app]
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() if body is not None else b""
        headers = protocol.sign_request(key, method, path, raw)
        headers["Content-Type"] = "application/json"
        try:
            async with self._get_session().request(method, self.base_url + path, data=raw, headers=headers) as resp:
                data = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except aiohttp.ClientConnectorError as e:
            raise NotSent(f"cannot connect to the gateway: {e}") from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise InDoubt(f"{type(e).__name__}: {e}".rstrip(": ")) from e
        try:
            protocol.verify_response(
                self.gateway_key, status, headers[protocol.HEADER_NONCE], resp_headers, data, window_s=self.window_s
            )
            answer = json.loads(data) if data else {}
        except (protocol.EnvelopeError, ValueError) as e:
            raise InDoubt(f"HTTP {status} answer not signed by the gateway: {e}") from None
        if not isinstance(answer, dict):
            raise InDoubt(f"HTTP {status} answer is not a JSON object")
        result = GatewayAnswer(status, answer)
        if status >= 500 and result.code not in DEFINITE_5XX:
            raise InDoubt(f"HTTP {status} {result.code}: {result.message}")
        return result

    async def reachable(self) -> bool:
        """Whether a mutual-TLS connection to the gateway can be made now (``/healthz``, unsigned)."""
        try:
            async with self._get_session().get(self.base_url + "/healthz") as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
