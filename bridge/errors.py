"""The errors our HTTP APIs answer with — the agent's, its intranet listener's and the gateway's business API.

Codes are stable: callers and alert rules branch on them. Every error body is built by ``ApiError.to_body``, so
every API answers ``{"error": {"code", "message"}}`` the same way. A leaf: the gateway may import it.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A refused call: its HTTP status, a stable ``code``, a ``message`` for people, and what the caller needs to
    act on it — ``error_details`` inside the error object (the agent's schema violations), ``beside`` next to it
    (the gateway's ``details``, ``order``, ``lock``, …, as each API's OpenAPI document names them)."""

    def __init__(self, status: int, code: str, message: str, error_details: Any = None, **beside: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = error_details
        self.beside = beside

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error, **self.beside}


def auth_error(code: str, message: str) -> ApiError:
    """A signature check's refusal (``bridge.protocol``'s codes, and the gateway's app-key ones) as the API
    answers it: 401, but 409 for a replayed nonce (the caller should sign afresh) and 403 for a disabled app."""
    return ApiError(AUTH_STATUS.get(code, 401), code, message)


AUTH_STATUS = {
    "unsigned": 401,
    "bad_nonce": 401,
    "bad_timestamp": 401,
    "unknown_key": 401,
    "key_not_bound": 401,
    "bad_signature": 401,
    "stale_timestamp": 401,
    "replayed_nonce": 409,
    "key_not_valid": 401,
    "app_disabled": 403,
}
"""HTTP status per signature-check code; a code not listed is 401."""
