"""CSRF protection for every POST: a signed-in form carries its session's token; the login form, which has no
session yet, carries the same random value as a short-lived cookie (double submit). SameSite=Strict cookies
already keep other sites' requests out; the token also covers an older browser or a same-site subdomain."""

from __future__ import annotations

import hmac
import secrets

FIELD = "csrf"
PRE_COOKIE = "hb_console_pre"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def valid(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
