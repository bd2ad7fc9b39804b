"""The adapter interface: one async call per catalog operation, and errors that say what to do next.

The dispatcher never looks inside an adapter. It needs to know only whether a failure may be retried as is
(nothing reached the HIS), must not be retried (the HIS said no), or leaves the outcome unknown (the call may
have been applied) — in which case the HIS must be asked before anything is resent.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    retryable = "retryable"
    permanent = "permanent"
    in_doubt = "in_doubt"


class AdapterError(Exception):
    kind: ErrorKind = ErrorKind.permanent

    def __init__(self, code: str, message: str, *, raw: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.raw = raw

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "code": self.code, "message": self.message}


class RetryableError(AdapterError):
    """The call certainly did not take effect (connection refused, HIS busy): safe to send again."""

    kind = ErrorKind.retryable


class PermanentError(AdapterError):
    """The HIS refused the call, or the profile cannot map it: sending it again changes nothing."""

    kind = ErrorKind.permanent


class InDoubtError(AdapterError):
    """The request may have reached the HIS and been applied (timeout after send, connection lost)."""

    kind = ErrorKind.in_doubt


@dataclass(frozen=True)
class WirePreview:
    """What would go on the wire for one call, for dry runs (``his-bridge try``)."""

    protocol: str
    target: str
    payload: str
    details: dict[str, Any] = field(default_factory=dict)


class Adapter(abc.ABC):
    """One HIS endpoint speaking one protocol."""

    protocol: str = ""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        """A stable name of the HIS endpoint: the circuit breaker and the metrics are keyed on it."""

    def addresses(self) -> str:
        """Exactly where calls go, for people (``doctor``): more than ``endpoint`` when a protocol has more."""
        return self.endpoint

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open pools or load descriptions. Called once before the first call."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release every connection."""

    @abc.abstractmethod
    def operations(self) -> frozenset[str]:
        """The catalog operations this adapter's profile binds."""

    @abc.abstractmethod
    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """Perform one catalog operation; ``params`` and the result are plain JSON-shaped dicts."""

    @abc.abstractmethod
    async def preview(self, operation: str, params: dict[str, Any]) -> WirePreview:
        """Render the call exactly as it would be sent, without sending it."""

    async def call_raw(self, operation: str, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """``call``, plus the reply as the profile's mapping read it, so that ``his-bridge try --send`` can show
        a vendor engineer what their paths ran against. ``None`` when an adapter cannot show it."""
        return await self.call(operation, params), None
