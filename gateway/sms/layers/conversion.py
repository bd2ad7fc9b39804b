"""The conversion layer (``gateway.sms.conversion``) in the risk engine: a request inherits the level of the rate
scopes it falls in (for its assurance), and a source with failed codes today is tainted.

Level 1 or a tainted source: a captcha. Level 2: a captcha, and past the scope's hard cap a refusal that the
captcha does not lift; a tainted source is refused outright while its scope is escalated. A number whose code
went unverified today gets nothing more while its scope is escalated — silently, like every rule about one
number, and only after the captcha, so the answer says nothing about the number.
"""

from __future__ import annotations

from gateway.sms.config import Policy
from gateway.sms.conversion import Conversion, applies, rate_scopes, source_scopes
from gateway.sms.layers import Layer, OtpRequest, Verdict

REFUSABLE = ("open", "bare")


class ConversionLayer(Layer):
    name = "conversion"

    def __init__(self, conversion: Conversion) -> None:
        self.conversion = conversion

    async def assess(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        c = policy.conversion
        rates = rate_scopes(req, policy)
        req.scopes = [*rates, *source_scopes(req)]
        if not c.enabled:
            return []
        states = [s for s in await self.conversion.states(rates, c, req.app_id) if applies(s.scope, req.assurance)]
        top = max(states, key=lambda s: s.level, default=None)
        level = top.level if top is not None else 0
        if req.assurance == "identified":
            level = min(level, 1)
        elif req.assurance == "bare" and level >= 1:
            level = 2  # the riskiest requests: past a captcha already, so an escalated scope caps them at once
        req.escalation = level
        if req.assurance in REFUSABLE:
            req.capped = [(s.scope, s.verified) for s in states if s.level >= 2 or (level >= 2 and s.level >= 1)]
        tainted = await self.conversion.tainted(req, c) if req.assurance in (*REFUSABLE, "identified") else []
        if tainted and level >= 1 and req.assurance in REFUSABLE:
            return [Verdict(self.name, f"tainted_{tainted[0]}", refusal="rate_limited")]
        verdicts = [Verdict(self.name, f"failed_codes_{t}", points=policy.captcha_threshold) for t in tainted]
        if level >= 1 and top is not None:
            verdicts.append(Verdict(self.name, f"low_verify_rate:{top.scope}", points=policy.captcha_threshold))
        return verdicts

    async def charge(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        if (
            req.escalation >= 1
            and req.assurance in REFUSABLE
            and await self.conversion.phone_failed(req, policy.conversion)
        ):
            # About one number, so silent, and only here, past the captcha every request of the scope gets.
            return [Verdict(self.name, "number_failed_today", refusal="silent")]
        for scope, verified in req.capped:
            if await self.conversion.cap_reached(scope, verified, policy.conversion):
                return [Verdict(self.name, f"scope_cap:{scope}", refusal="rate_limited")]
        return []
