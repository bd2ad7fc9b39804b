"""Per-device velocity. The device is what the browser shows of itself: the page's client-side fingerprint
(when its script ran) and the headers the app forwards. Where no device id can be read (a PC, a script) the
headers alone are a weak identity shared by many, so a missing fingerprint adds risk points and caps escalate
to a captcha, never to a block."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from gateway.sms.config import Policy
from gateway.sms.layers import Layer, OtpRequest, Verdict, count_caps
from gateway.sms.limits_store import Counters

HINT_HEADERS = ("sec-ch-ua", "sec-ch-ua-platform", "sec-ch-ua-mobile", "accept-encoding")


def device_id(fingerprint: str | None, user_agent: str, accept_language: str, headers: Mapping[str, str]) -> str:
    hints = [f"{h}={headers.get(h, '')}" for h in HINT_HEADERS]
    material = "\n".join([fingerprint or "-", user_agent, accept_language, *hints])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


class DeviceLayer(Layer):
    name = "device"

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def assess(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        if not policy.device.enabled or req.device is None:
            return []
        verdicts = await count_caps(
            self.counters,
            self.name,
            f"dev/{req.hospital_id}/{req.device}",
            policy.device.caps,
            policy.captcha_threshold,
        )
        if not req.has_fingerprint and policy.device.missing_fingerprint_points:
            verdicts.append(Verdict(self.name, "no_fingerprint", points=policy.device.missing_fingerprint_points))
        return verdicts
