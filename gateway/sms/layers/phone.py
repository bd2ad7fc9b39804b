"""Per-phone limits: the resend interval (60 s by default) and hourly and daily caps, per hospital and purpose.
They count sends, not attempts, and concern one number only, so every refusal here is silent: the answer is
the same as for a sent code, and the live code stays good."""

from __future__ import annotations

from gateway.sms.codes import CodeBook
from gateway.sms.config import Policy
from gateway.sms.layers import Layer, OtpRequest, Verdict
from gateway.sms.limits_store import Counters, Window


class PhoneLayer(Layer):
    name = "phone"

    def __init__(self, counters: Counters, codes: CodeBook) -> None:
        self.counters = counters
        self.codes = codes

    async def charge(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        if await self.codes.too_soon(req.subject, policy):
            return [Verdict(self.name, "resend_interval", refusal="silent")]
        name = f"phone/{req.hospital_id}/{req.purpose}/{req.subject.phone_hash[:32]}"
        windows = [Window(name, 3600), Window(name, 86400)]
        hour, day = await self.counters.peek(windows)
        if hour < policy.phone.per_hour and day < policy.phone.per_day:
            hour, day = await self.counters.hit(windows)
            if hour <= policy.phone.per_hour and day <= policy.phone.per_day:
                return []
        reason = "hourly_cap" if hour >= policy.phone.per_hour else "daily_cap"
        return [Verdict(self.name, reason, refusal="silent")]
