"""Captchas, behind an interface: when a request's risk calls for one, the API answers ``captcha_required``
with a challenge; the client has a person solve it and sends the request again with the answer.

The sandbox provider needs no state, so any instance verifies what another issued: a challenge id carries its
binding (hospital, purpose and the phone's hash, so a solved captcha cannot be spent on another number), its
expiry and a MAC; the answer token is a second MAC only the sandbox's ``solve`` (the stand-in for a person)
computes. Tokens are single-use through the shared counters. Real providers (Tencent 天御, Geetest) verify
their own tickets server-side and implement the same ``CaptchaProvider``.
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
from gateway.sms.config import CaptchaConfig
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

    async def verify(self, answer: CaptchaAnswer, binding: str) -> bool:
        """True once for a solved challenge issued for this binding."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, label: str, data: str) -> str:
    return _b64(hmac.new(key, f"{label}|{data}".encode(), hashlib.sha256).digest()[:18])


def sandbox_solution(key: bytes, challenge_id: str) -> str:
    """What a person solving the sandbox's puzzle would hand back (tests, the attack simulator)."""
    return _mac(key, "answer", challenge_id)


class SandboxCaptcha:
    name = "sandbox"

    def __init__(self, key: bytes, counters: Counters, clock: Clock, ttl_s: int = 300) -> None:
        self.key = key
        self.counters = counters
        self.clock = clock
        self.ttl_s = ttl_s

    @staticmethod
    def _bind(binding: str) -> str:
        return hashlib.sha256(binding.encode()).hexdigest()[:32]

    async def issue(self, binding: str) -> Challenge:
        body = {"b": self._bind(binding), "e": int(self.clock()) + self.ttl_s, "n": secrets.token_hex(8)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        challenge_id = f"{payload}.{_mac(self.key, 'challenge', payload)}"
        return Challenge(self.name, challenge_id, {"question": "drag the slider", "expires_in_s": self.ttl_s})

    def solve(self, challenge_id: str) -> str:
        return sandbox_solution(self.key, challenge_id)

    async def verify(self, answer: CaptchaAnswer, binding: str) -> bool:
        payload, _, mac = answer.challenge_id.partition(".")
        if not hmac.compare_digest(mac, _mac(self.key, "challenge", payload)):
            return False
        if not hmac.compare_digest(answer.token, self.solve(answer.challenge_id)):
            return False
        try:
            body = json.loads(_unb64(payload))
        except ValueError:
            return False
        if body.get("b") != self._bind(binding) or body.get("e", 0) < self.clock():
            return False
        return await self.counters.first(f"captcha/{body['n']}", self.ttl_s + 60)


def build_captcha(cfg: CaptchaConfig, key: bytes, counters: Counters, clock: Clock) -> CaptchaProvider:
    return SandboxCaptcha(key, counters, clock, cfg.ttl_s)
