"""``GatewayClient``: how a hospital app calls the gateway's business API (docs/APPS.md), and checks what the
gateway pushes to it.

It signs every attempt afresh as the app (a new nonce each time), refuses any answer the gateway did not sign
for that very request, and retries transport failures and 502/503/504 with the same body — safe because every
write of the API is idempotent on the app's own number (``business_order_no``, ``business_refund_no``,
``lock_no``). Refusals raise :class:`GatewayError` with the API's stable ``code``; answers come back as the
API's JSON (the shapes are in ``/openapi.json``). Notifications pushed to the app's notify URL are checked with
:meth:`GatewayClient.verify_notification`.

It needs nothing of the gateway but the envelope (``bridge.protocol``) and ``aiohttp``: an app may copy this
module and ``bridge/protocol.py`` into its own code.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bridge import protocol

RETRY_STATUSES = frozenset({502, 503, 504})
HEADER_EVENT_ID = "X-HB-Event-Id"


class GatewayError(Exception):
    """The gateway refused the request (4xx) or could not do it (5xx): ``code`` is stable, branch on it."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


class GatewayUnreachable(GatewayError):
    """No answer after the retries: the request may or may not have been acted on — send it again as is."""


class UntrustedAnswer(GatewayError):
    """An answer the gateway did not sign for this request: not from the gateway, or altered on the way."""


@dataclass(frozen=True)
class Notification:
    """An event the gateway pushed (``order.completed``, ``refund.succeeded``, …): handle it idempotently by id."""

    id: int
    type: str
    created_at: str
    data: dict[str, Any]


class GatewayClient:
    def __init__(
        self,
        base_url: str,
        *,
        app_key: protocol.SigningKey,
        gateway_key: protocol.VerifyKey,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 30,
        retries: int = 2,
        backoff_s: float = 0.2,
        window_s: int = protocol.DEFAULT_WINDOW_S,
    ) -> None:
        """``app_key``: the app's private key, its key id the app id. ``gateway_key``: the gateway's public key
        (its key id as the gateway signs with, ``gateway`` by default)."""
        self.base_url = base_url.rstrip("/")
        self.app_key = app_key
        self.gateway_key = gateway_key
        self.retries = retries
        self.backoff_s = backoff_s
        self.window_s = window_s
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    # --- money ---------------------------------------------------------------------------------------------

    async def create_order(self, **order: Any) -> dict[str, Any]:
        """Create an order (``CreateOrder`` fields: business_order_no, business_type, scene, channel, amount_fen,
        subject, patient_id, and the HIS references of its type); the order with what the front end pays with.
        A repeat of the same request returns the same order."""
        return (await self.call("POST", "/v1/orders", order))["order"]

    async def get_order(self, business_order_no: str) -> dict[str, Any]:
        """The order and its refunds: ``{"order": …, "refunds": […]}``."""
        return await self.call("GET", f"/v1/orders/{_segment(business_order_no)}")

    async def close_order(self, business_order_no: str) -> dict[str, Any]:
        return (await self.call("POST", f"/v1/orders/{_segment(business_order_no)}/close"))["order"]

    async def list_orders(self, **query: Any) -> dict[str, Any]:
        """One page of the hospital's orders (``page``, ``page_size``, ``status``, ``exceptions``)."""
        return await self.call("GET", "/v1/orders", query=query)

    async def refund(
        self, business_order_no: str, business_refund_no: str, amount_fen: int, reason: str | None = None
    ) -> dict[str, Any]:
        """Refund part or all of a paid order; a repeat of the same request returns the same refund."""
        body: dict[str, Any] = {"business_refund_no": business_refund_no, "amount_fen": amount_fen}
        if reason is not None:
            body["reason"] = reason
        return (await self.call("POST", f"/v1/orders/{_segment(business_order_no)}/refunds", body))["refund"]

    async def get_refund(self, business_refund_no: str) -> dict[str, Any]:
        return (await self.call("GET", f"/v1/refunds/{_segment(business_refund_no)}"))["refund"]

    async def events(self, *, after: int = 0, limit: int = 100, undelivered: bool = False) -> dict[str, Any]:
        """The pull side of the notifications: ``{"events": […], "next_after": N}``, oldest first."""
        query: dict[str, Any] = {"after": after, "limit": limit}
        if undelivered:
            query["undelivered"] = "1"
        return await self.call("GET", "/v1/events", query=query)

    # --- the HIS -------------------------------------------------------------------------------------------

    async def query_patient(self, **keys: str) -> dict[str, Any]:
        """A patient by ``card_no``, ``id_card_no`` or ``phone``: ``{"found": …, "patient": {…} | None, …}``."""
        return await self.call("POST", "/v1/his/patients/query", keys)

    async def unpaid_bills(self, patient_id: str) -> list[dict[str, Any]]:
        return list((await self.call("POST", "/v1/his/bills/unpaid", {"patient_id": patient_id}))["bills"])

    async def lock_slot(self, lock_no: str, patient_id: str, schedule_id: str) -> dict[str, Any]:
        """Hold a registration slot while the patient pays; give the lock's ``lock_id`` to the order. A lock
        still ``locking`` is asked about again with :meth:`get_slot`."""
        body = {"lock_no": lock_no, "patient_id": patient_id, "schedule_id": schedule_id}
        return (await self.call("POST", "/v1/his/registration-locks", body))["lock"]

    async def get_slot(self, lock_no: str) -> dict[str, Any]:
        return (await self.call("GET", f"/v1/his/registration-locks/{_segment(lock_no)}"))["lock"]

    async def unlock_slot(self, lock_no: str) -> dict[str, Any]:
        return (await self.call("POST", f"/v1/his/registration-locks/{_segment(lock_no)}/unlock"))["lock"]

    # --- the wire ------------------------------------------------------------------------------------------

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, query: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One API call, signed and verified; the answer's JSON. Raises :class:`GatewayError` on a refusal."""
        status, answer = await self.send(method, path, body, query=query)
        if status >= 400:
            error = answer.get("error", {})
            raise GatewayError(status, error.get("code", "unknown"), error.get("message", ""), answer)
        return answer

    async def send(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, query: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One API call, signed, its answer verified, retried as the class says: the status and the JSON, a
        refusal included (raises only when no answer came, or one the gateway did not sign)."""
        if query:
            path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() if body is not None else b""
        attempt = 0
        while True:
            attempt += 1
            headers = protocol.sign_request(self.app_key, method, path, raw)
            headers["Content-Type"] = "application/json"
            try:
                async with self._get_session().request(method, self.base_url + path, data=raw, headers=headers) as resp:
                    data = await resp.read()
                    status, answer_headers = resp.status, resp.headers
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                if attempt > self.retries:
                    raise GatewayUnreachable(0, "unreachable", f"{type(e).__name__}: {e}") from e
                await asyncio.sleep(self._delay(attempt))
                continue
            try:
                protocol.verify_response(
                    self.gateway_key, status, headers[protocol.HEADER_NONCE], answer_headers, data,
                    window_s=self.window_s,
                )  # fmt: skip
                answer = json.loads(data) if data else {}
            except (protocol.EnvelopeError, ValueError) as e:
                code = e.code if isinstance(e, protocol.EnvelopeError) else "not_json"
                raise UntrustedAnswer(status, code, str(e)) from None
            if status in RETRY_STATUSES and attempt <= self.retries:
                await asyncio.sleep(self._delay(attempt))
                continue
            return status, answer if isinstance(answer, dict) else {"answer": answer}

    def _delay(self, attempt: int) -> float:
        return self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)

    # --- what the gateway pushes ---------------------------------------------------------------------------

    def verify_notification(self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes) -> Notification:
        """Check a notification POSTed to the app's notify URL: signed by the gateway over this method, path
        (with its query, as it reached the app) and body, within the signing window. Raises
        ``protocol.EnvelopeError`` otherwise — answer it with a non-2xx status and the gateway sends it again."""
        protocol.verify_request(
            {self.gateway_key.key_id: self.gateway_key}, method, path_qs, headers, body, window_s=self.window_s
        )
        event = json.loads(body)
        if str(event.get("id")) != headers.get(HEADER_EVENT_ID, str(event.get("id"))):
            raise protocol.EnvelopeError("bad_event", "X-HB-Event-Id does not match the body's id")
        return Notification(int(event["id"]), str(event["type"]), str(event["created_at"]), dict(event["data"]))


def _segment(value: str) -> str:
    """A business number as a path segment. Numbers are ``[A-Za-z0-9_.:-]`` (the API refuses others), so they
    go as they are: the signature covers the path exactly as sent."""
    if not value or any(c in value for c in "/?#% "):
        raise ValueError(f"{value!r} cannot be a business number in a path")
    return value
