"""Number-segment velocity (号段). A pump that rotates addresses and devices still aims at a few number ranges
(bought lists, a carrier's prefix); patients' numbers spread over thousands of segments. A segment over its
cap makes every request into it need a captcha — patients in it can still solve one. Known patients and
identified people are counted but not challenged here: the HIS or the identity caps vouch for them."""

from __future__ import annotations

from gateway.sms.config import Policy
from gateway.sms.layers import Layer, OtpRequest, Verdict, count_caps
from gateway.sms.limits_store import Counters
from gateway.sms.phones import segment


class SegmentLayer(Layer):
    name = "segment"

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def assess(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        p = policy.segment
        if not p.enabled:
            return []
        name = f"seg/{req.hospital_id}/{segment(req.phone, p.prefix_len)}"
        verdicts = await count_caps(self.counters, self.name, name, p.caps, policy.captcha_threshold, sticky=p.sticky)
        return [] if req.assurance in ("known", "identified") else verdicts
