"""Per-IP velocity across all purposes of a hospital. Past a soft cap the request needs a captcha rather than
being refused: one hospital Wi-Fi address may carry a whole waiting room. Addresses on the allow list (the
hospital's own egress) are not counted."""

from __future__ import annotations

from gateway.sms.config import Policy
from gateway.sms.layers import Layer, OtpRequest, Verdict, count_caps
from gateway.sms.layers.lists import ip_in
from gateway.sms.limits_store import Counters


class IpLayer(Layer):
    name = "ip"

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def assess(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        if not policy.ip.enabled or req.ip_hash is None or ip_in(req.ip, policy.lists.allow_ips):
            return []
        name = f"ip/{req.hospital_id}/{req.ip_hash[:32]}"
        return await count_caps(self.counters, self.name, name, policy.ip.caps, policy.captcha_threshold)
