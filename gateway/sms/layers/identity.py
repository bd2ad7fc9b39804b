"""Per-identity caps: the person as the app knows them (WeChat openid, Alipay user id, the app's own user id),
passed in the signed request. An identity may ask for a few numbers a day and a few codes an hour; one whose
codes keep going unverified is refused for the day. Every refusal here concerns the app's own user, so it is
an open ``rate_limited``. A request without an identity carries ``identity.missing_points``."""

from __future__ import annotations

from gateway.sms.config import DAY_S, Policy
from gateway.sms.layers import Layer, OtpRequest, Verdict
from gateway.sms.limits_store import Counters, Window


def failures_name(identity_hash: str) -> str:
    return f"cvf/id/{identity_hash[:32]}"


class IdentityLayer(Layer):
    name = "identity"

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def assess(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        p = policy.identity
        if not p.enabled:
            return []
        if req.identity_hash is None:
            return [Verdict(self.name, "no_identity", points=p.missing_points)] if p.missing_points else []
        who = req.identity_hash[:32]
        (failures,) = await self.counters.peek([Window(failures_name(req.identity_hash), DAY_S)])
        if failures >= p.failures_per_day:
            return [Verdict(self.name, "unverified_codes", refusal="rate_limited")]
        hour, day = await self.counters.hit([Window(f"idc/{who}", 3600), Window(f"idc/{who}", DAY_S)])
        if hour > p.codes_per_hour or day > p.codes_per_day:
            return [Verdict(self.name, "codes_per_identity", refusal="rate_limited")]
        number = Window(f"idn/{who}/{req.subject.phone_hash[:32]}", DAY_S)
        numbers = Window(f"idn/{who}", DAY_S)
        used, count = await self.counters.peek([number, numbers])
        if not used:
            if count >= p.numbers_per_day:
                return [Verdict(self.name, "numbers_per_identity", refusal="rate_limited")]
            await self.counters.hit_many([(number, 1), (numbers, 1)])
        return []
