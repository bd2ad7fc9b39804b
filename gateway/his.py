"""How the sagas tell a hospital's HIS, through that hospital's bridge agent.

The bridge journals writes idempotently on ``request_id``, so the sagas derive it from the order or refund
(``{out_trade_no}-commit``, ``{out_refund_no}-apply``…): a retry after any failure is the same request, never a
second commit. Three outcomes matter: done, failed for good (the HIS refused), pending (the agent holds it and
keeps trying; ask again later). Anything else means the bridge was not reached or not trusted: try again.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge import protocol
from bridge.client import BridgeClient, BridgeError, BridgeResult, BridgeUnreachable, UntrustedResponse
from gateway.config import BridgeLink


class HisUnavailable(Exception):
    """The bridge could not be reached or answered nothing usable; nothing is known, retry later."""


@dataclass(frozen=True)
class HisAnswer:
    status: str
    """``done``, ``failed`` or ``pending``."""
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def pending(self) -> bool:
        return self.status == "pending"


class HisLink(Protocol):
    async def write(self, operation: str, params: dict[str, Any]) -> HisAnswer: ...

    async def read(self, operation: str, params: dict[str, Any]) -> HisAnswer:
        """A catalog read (``patient.query``, ``bills.unpaid``…): answered at once, never journaled."""
        ...

    async def status(self, request_id: str) -> HisAnswer | None:
        """The journaled outcome of a write, or None when the agent never received it."""
        ...

    async def close(self) -> None: ...


def _answer(result: BridgeResult) -> HisAnswer:
    status = result.status if result.status in ("done", "failed") else "pending"
    return HisAnswer(status, result.result or {}, result.error)


def _refusal(e: BridgeError) -> HisAnswer:
    """A 4xx about the request itself (schema, conflicting request id) is final: resending cannot help."""
    return HisAnswer("failed", {}, {"code": e.code, "message": e.message, "kind": "request_refused"})


def _retryable(e: BridgeError) -> bool:
    return isinstance(e, BridgeUnreachable | UntrustedResponse) or e.status >= 500 or e.status in (401, 403, 429)


async def write_once(link: HisLink, operation: str, params: dict[str, Any], *, may_have_sent: bool) -> HisAnswer:
    """The one way the sagas write to the HIS. When an earlier attempt may have reached the agent, ask for that
    request's journaled outcome first (the agent settles its own doubt with ``trade.check`` before it ever
    resends); send only when the agent never received it. The request id is the same on every attempt, so even
    a resend is applied once. Raises ``HisUnavailable`` when nothing is known."""
    if may_have_sent:
        answer = await link.status(params["request_id"])
        if answer is not None:
            return answer
    return await link.write(operation, params)


class BridgeHis:
    def __init__(self, client: BridgeClient) -> None:
        self.client = client

    @classmethod
    def from_config(cls, link: BridgeLink) -> BridgeHis:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(link.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(link.client_cert), str(link.client_key))
        client = BridgeClient(
            link.url,
            signing_key=protocol.load_signing_key(link.signing_key_id, link.signing_key),
            bridge_key=protocol.load_verify_key(link.bridge_key_id, link.bridge_public_key),
            ssl_context=ctx,
            timeout_s=link.timeout_s,
            retries=link.retries,
        )
        return cls(client)

    async def write(self, operation: str, params: dict[str, Any]) -> HisAnswer:
        try:
            return _answer(await self.client.call(operation, params))
        except BridgeError as e:
            if _retryable(e):
                raise HisUnavailable(str(e)) from e
            return _refusal(e)

    async def read(self, operation: str, params: dict[str, Any]) -> HisAnswer:
        return await self.write(operation, params)

    async def status(self, request_id: str) -> HisAnswer | None:
        try:
            return _answer(await self.client.operation_status(request_id))
        except BridgeError as e:
            if e.status == 404:
                return None
            raise HisUnavailable(str(e)) from e

    async def close(self) -> None:
        await self.client.close()


class NoBridge:
    """A hospital configured without a bridge: every HIS step waits until one is configured."""

    def __init__(self, hospital_id: str) -> None:
        self.hospital_id = hospital_id

    async def write(self, operation: str, params: dict[str, Any]) -> HisAnswer:
        raise HisUnavailable(f"hospital {self.hospital_id} has no bridge configured")

    async def read(self, operation: str, params: dict[str, Any]) -> HisAnswer:
        raise HisUnavailable(f"hospital {self.hospital_id} has no bridge configured")

    async def status(self, request_id: str) -> HisAnswer | None:
        raise HisUnavailable(f"hospital {self.hospital_id} has no bridge configured")

    async def close(self) -> None:
        return None
