"""The risk engine: runs the layers in order and decides what happens to one code request.

Any layer may refuse outright (the first refusal wins, and later layers do not count the attempt). Otherwise
the risk points add up; at ``captcha_threshold`` the request needs a solved captcha for this very phone and
purpose — on an allow-listed phone it never does. Only then are the phone's and the budget's allowances spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.sms.captcha import CaptchaProvider, Challenge
from gateway.sms.config import Policy
from gateway.sms.layers import Layer, OtpRequest, Refusal, Verdict
from gateway.sms.layers.lists import phone_allowed

Action = Literal["send", "captcha"] | Refusal


@dataclass(frozen=True)
class Decision:
    action: Action
    layer: str | None = None
    reason: str | None = None
    score: int = 0
    signals: list[str] = field(default_factory=list)
    challenge: Challenge | None = None


def _refusal(v: Verdict, score: int, signals: list[str]) -> Decision:
    assert v.refusal is not None
    return Decision(v.refusal, v.layer, v.reason, score, signals)


class RiskEngine:
    def __init__(self, layers: Sequence[Layer], captcha: CaptchaProvider) -> None:
        self.layers = list(layers)
        self.captcha = captcha

    async def decide(self, req: OtpRequest, policy: Policy) -> Decision:
        risky: list[Verdict] = []
        for layer in self.layers:
            for v in await layer.assess(req, policy):
                if v.refusal is not None:
                    return _refusal(v, sum(r.points for r in risky), [f"{r.layer}:{r.reason}" for r in risky])
                risky.append(v)
        score = 0 if phone_allowed(req, policy) else sum(v.points for v in risky)
        signals = [f"{v.layer}:{v.reason}" for v in risky]
        if score >= policy.captcha_threshold:
            solved = req.captcha is not None and await self.captcha.verify(req.captcha, req.subject.binding, req.ip)
            if not solved:
                top = max(risky, key=lambda v: v.points)
                reason = "captcha_invalid" if req.captcha is not None else top.reason
                challenge = await self.captcha.issue(req.subject.binding)
                return Decision("captcha", top.layer, reason, score, signals, challenge)
        for layer in self.layers:
            for v in await layer.charge(req, policy):
                if v.refusal is not None:
                    return _refusal(v, score, signals)
        return Decision("send", score=score, signals=signals)
