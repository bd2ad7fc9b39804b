"""Per-IP velocity across all purposes of a hospital. Past a soft cap the request needs a captcha rather than
being refused: one hospital Wi-Fi address may carry a whole waiting room. Addresses on the allow list (the
hospital's own egress) are not counted: identity caps take over there. Behind a carrier-grade NAT nothing can be
listed, so a request the HIS or the app vouches for (``known``, ``identified``) is counted but never challenged
by the soft caps — its identity caps replace them; the hard caps still refuse.

A request without an address is not let off: every such request of a hospital counts against one shared
``no address`` bucket under the same caps, and carries ``ip.missing.points`` (issue 15, item 12)."""

from __future__ import annotations

from gateway.sms.config import Policy
from gateway.sms.layers import Layer, OtpRequest, Verdict, count_caps
from gateway.sms.layers.lists import ip_in
from gateway.sms.limits_store import Counters

NO_ADDRESS = "none"


class IpLayer(Layer):
    name = "ip"

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def assess(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        if not policy.ip.enabled or ip_in(req.ip, policy.lists.allow_ips):
            return []
        subject = req.ip_hash[:32] if req.ip_hash is not None else NO_ADDRESS
        name = f"ip/{req.hospital_id}/{subject}"
        verdicts = await count_caps(self.counters, self.name, name, policy.ip.caps, policy.captcha_threshold)
        if req.assurance in ("known", "identified"):
            verdicts = [v for v in verdicts if v.refusal is not None]
        if req.ip_hash is None and policy.ip.missing.points:
            verdicts.append(Verdict(self.name, "no_address", points=policy.ip.missing.points))
        return verdicts
