"""Captchas, behind an interface: when a request's risk calls for one, the API answers ``captcha_required``
with a challenge; the client has a person solve it and sends the request again with the answer.

The sandbox provider needs no state, so any instance verifies what another issued: a challenge id carries its
binding (hospital, purpose and the phone's hash, so a solved captcha cannot be spent on another number), its
expiry and a MAC; the answer token is a second MAC only the sandbox's ``solve`` (the stand-in for a person)
computes. Tokens are single-use through the shared counters. Tencent Cloud's captcha (``gateway.sms.tencent``)
checks its tickets server-side and implements the same ``CaptchaProvider``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.sms.clock import Clock
from gateway.sms.limits_store import Counters


@dataclass(frozen=True)
class Challenge:
    provider: str
    challenge_id: str
    params: dict[str, Any] = field(default_factory=dict)
    """What the client's captcha widget needs (app id, a question, …)."""


@dataclass(frozen=True)
class CaptchaAnswer:
    challenge_id: str
    token: str


class CaptchaProvider(Protocol):
    name: str

    async def issue(self, binding: str) -> Challenge: ...

    async def verify(self, answer: CaptchaAnswer, binding: str, user_ip: str | None = None) -> bool:
        """True once for a solved challenge issued for this binding (``user_ip``: the caller's address, for
        providers that weigh it)."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, label: str, data: str) -> str:
    return _b64(hmac.new(key, f"{label}|{data}".encode(), hashlib.sha256).digest()[:18])


def sandbox_solution(key: bytes, challenge_id: str) -> str:
    """What a person solving the sandbox's puzzle would hand back (tests, the attack simulator)."""
    return _mac(key, "answer", challenge_id)


def _bind(binding: str) -> str:
    return hashlib.sha256(binding.encode()).hexdigest()[:32]


def bind_challenge(key: bytes, binding: str, clock: Clock, ttl_s: int) -> str:
    """A challenge id that carries its binding (hospital, purpose, the phone's hash), its expiry, a nonce and a
    MAC, so that any instance can check it without shared state."""
    body = {"b": _bind(binding), "e": int(clock()) + ttl_s, "n": secrets.token_hex(8)}
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{payload}.{_mac(key, 'challenge', payload)}"


def open_challenge(key: bytes, challenge_id: str, binding: str, clock: Clock) -> str | None:
    """The challenge's nonce, if it is ours, unexpired and issued for this binding."""
    payload, _, mac = challenge_id.partition(".")
    if not hmac.compare_digest(mac, _mac(key, "challenge", payload)):
        return None
    try:
        body = json.loads(_unb64(payload))
    except ValueError:
        return None
    if body.get("b") != _bind(binding) or body.get("e", 0) < clock():
        return None
    return str(body["n"])


class SandboxCaptcha:
    name = "sandbox"

    def __init__(self, key: bytes, counters: Counters, clock: Clock, ttl_s: int = 300) -> None:
        self.key = key
        self.counters = counters
        self.clock = clock
        self.ttl_s = ttl_s

    async def issue(self, binding: str) -> Challenge:
        challenge_id = bind_challenge(self.key, binding, self.clock, self.ttl_s)
        return Challenge(self.name, challenge_id, {"question": "drag the slider", "expires_in_s": self.ttl_s})

    def solve(self, challenge_id: str) -> str:
        return sandbox_solution(self.key, challenge_id)

    async def verify(self, answer: CaptchaAnswer, binding: str, user_ip: str | None = None) -> bool:
        nonce = open_challenge(self.key, answer.challenge_id, binding, self.clock)
        if nonce is None or not hmac.compare_digest(answer.token, self.solve(answer.challenge_id)):
            return False
        return await self.counters.first(f"captcha/{nonce}", self.ttl_s + 60)
