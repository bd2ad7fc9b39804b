"""The errors the API answers with. Codes are stable: callers and alert rules branch on them."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


AUTH_STATUS = {
    "unsigned": 401,
    "bad_nonce": 401,
    "bad_timestamp": 401,
    "unknown_key": 401,
    "key_not_bound": 401,
    "bad_signature": 401,
    "stale_timestamp": 401,
    "replayed_nonce": 409,
}
