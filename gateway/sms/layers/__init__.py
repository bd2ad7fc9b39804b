"""The defence layers. Each looks at one code request in two phases: ``assess`` runs for every request (it counts
attempts, adds risk points or refuses outright), ``charge`` only for a request about to send (it spends the
phone's and the budget's allowance). The risk engine (``gateway.sms.risk``) runs them in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.sms.captcha import CaptchaAnswer
from gateway.sms.codes import Subject
from gateway.sms.config import Cap, Policy
from gateway.sms.limits_store import Counters, Window

Refusal = Literal["silent", "refused", "rate_limited", "unavailable"]
"""``silent``: answered exactly as if sent (what concerns one phone must not tell whether it is known);
``refused``: a blocked address; ``rate_limited``: a hard cap; ``unavailable``: the SMS budget is spent."""


Assurance = Literal["known", "onsite", "identified", "open", "bare"]
"""What vouches for a request, strongest first: the number is a patient's (on file at the HIS, or it verified a
code here before); it comes from the hospital's own network; the app names the person; the app sent the
caller's address and fingerprint; nothing at all."""


@dataclass
class OtpRequest:
    app_id: str
    phone: str
    subject: Subject
    ip: str | None
    ip_hash: str | None
    device: str | None
    has_fingerprint: bool
    captcha: CaptchaAnswer | None
    identity_hash: str | None = None
    card_no: str | None = None
    subnet_hash: str | None = None
    """The address's /16 (IPv6: /48), hashed: proxies and botnets rent addresses in blocks."""
    assurance: Assurance = "bare"
    """Set by the assurance layer before the conversion layer reads it."""
    escalation: int = 0
    """The conversion layer's level for this request, kept for ``charge``."""
    scopes: list[str] = field(default_factory=list)
    """The conversion scopes this request counts in, stored with the code it gets."""
    capped: list[tuple[str, int]] = field(default_factory=list)
    """Level-2 scopes (and their verified codes) whose hard cap a send must fit in."""

    @property
    def hospital_id(self) -> str:
        return self.subject.hospital_id

    @property
    def purpose(self) -> str:
        return self.subject.purpose


@dataclass(frozen=True)
class Verdict:
    layer: str
    reason: str
    points: int = 0
    refusal: Refusal | None = None


class Layer:
    name = "layer"

    async def assess(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        return []

    async def charge(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        return []


async def count_caps(
    counters: Counters, layer: str, name: str, caps: Sequence[Cap], points: int, *, sticky: bool = False
) -> list[Verdict]:
    """Count this attempt in every window the caps use, and judge it against each cap. With ``sticky`` the
    previous window's count is judged too."""
    sizes = sorted({c.window_s for c in caps})
    now = dict(zip(sizes, await counters.hit([Window(name, s) for s in sizes]), strict=True))
    before = (
        dict(zip(sizes, await counters.peek([Window(name, s, back=1) for s in sizes]), strict=True)) if sticky else {}
    )
    verdicts = []
    for cap in caps:
        count = max(now[cap.window_s], before.get(cap.window_s, 0))
        if count > cap.limit:
            reason = f"over_{cap.limit}_per_{cap.window_s}s"
            if cap.action == "refuse":
                verdicts.append(Verdict(layer, reason, refusal="rate_limited"))
            else:
                verdicts.append(Verdict(layer, reason, points=points))
    return verdicts
