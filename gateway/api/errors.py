"""The errors the business API answers with; codes are stable, business systems branch on them."""

from __future__ import annotations

from typing import Any

AUTH_STATUS = {
    "unsigned": 401,
    "bad_nonce": 401,
    "bad_timestamp": 401,
    "unknown_key": 401,
    "bad_signature": 401,
    "stale_timestamp": 401,
    "replayed_nonce": 409,
    "key_not_valid": 401,
    "app_disabled": 403,
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}, **self.extra}
