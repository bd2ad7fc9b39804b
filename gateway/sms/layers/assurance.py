"""What vouches for the request (``OtpRequest.assurance``), decided before the conversion layer reads it.

``known``: the number verified a code at this hospital before, or the HIS has it on file (asked through the
agent's ``patient.query`` where ``known_patients`` says so). ``onsite``: the hospital's own network
(``lists.allow_ips``). ``identified``: the app names the person. ``open``: the app sent the caller's address and
fingerprint. ``bare``: none of these.

Where the purpose requires a known patient (``require``: payment, binding by default), a number not on file
gets nothing, answered exactly as if sent; a number that could not be checked gets ``sms_unavailable`` unless
``unchecked = "allow"``.
"""

from __future__ import annotations

from gateway.sms.config import Policy
from gateway.sms.layers import Assurance, Layer, OtpRequest, Verdict
from gateway.sms.layers.lists import ip_in
from gateway.sms.metrics import SmsMetrics
from gateway.sms.patients import PatientDirectory


class AssuranceLayer(Layer):
    name = "known_patients"

    def __init__(self, patients: PatientDirectory, metrics: SmsMetrics) -> None:
        self.patients = patients
        self.metrics = metrics

    async def assess(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        p = policy.known_patients
        mode = p.mode(req.purpose)
        known = await self.patients.verified_before(req.hospital_id, "phone", req.subject.phone_hash, p.trust_days)
        if mode == "require" and req.card_no is not None:
            known = False  # binding a card: the number must be the one on file for that card, whatever its past
        if not known and mode != "off":
            on_file = await self.patients.on_file(req.hospital_id, req.phone, req.subject.phone_hash, req.card_no, p)
            self.metrics.his_lookups.labels(req.hospital_id, on_file).inc()
            if mode == "require" and on_file == "not_on_file":
                return [Verdict(self.name, "not_on_file", refusal="silent")]
            if mode == "require" and on_file == "unchecked" and p.unchecked == "refuse":
                return [Verdict(self.name, "his_unchecked", refusal="unavailable")]
            known = on_file == "on_file"
        req.assurance = self._assurance(req, policy, known)
        return []

    @staticmethod
    def _assurance(req: OtpRequest, policy: Policy, known: bool) -> Assurance:
        if known:
            return "known"
        if ip_in(req.ip, policy.lists.allow_ips):
            return "onsite"
        if req.identity_hash is not None:
            return "identified"
        if req.ip_hash is not None and req.has_fingerprint:
            return "open"
        return "bare"
