"""Prometheus metrics of the SMS defences, one registry per gateway instance (tests run several in one process).

The pumping signal is the verify success rate, ``hisgateway_sms_verifications_total{outcome="verified"}`` over
``hisgateway_sms_sent_total``: patients type in the codes they asked for, a pump sends codes nobody reads. The
conversion layer acts on it per scope; ``hisgateway_sms_scope_level`` and ``hisgateway_sms_escalations_total``
show what it did, and the alerts in config/monitoring/hisbridge-alerts.yml watch them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SmsMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sent = Counter(
            "hisgateway_sms_sent", "Verification SMS handed to the provider.", ["hospital", "purpose"], registry=r
        )
        self.refused = Counter(
            "hisgateway_sms_refused",
            "Code requests not sent, by the layer that stopped them and what the client was told"
            " (silent: answered as if sent; captcha; refused; rate_limited; unavailable).",
            ["hospital", "purpose", "layer", "action"],
            registry=r,
        )
        self.verifications = Counter(
            "hisgateway_sms_verifications",
            "Codes checked, by outcome (verified or failed).",
            ["hospital", "purpose", "outcome"],
            registry=r,
        )
        self.settled = Counter(
            "hisgateway_sms_codes_settled",
            "Codes whose fate is known: verified, or failed (not verified within the conversion grace).",
            ["hospital", "purpose", "assurance", "outcome"],
            registry=r,
        )
        self.send_errors = Counter(
            "hisgateway_sms_send_errors", "SMS the provider refused or could not take.", ["provider"], registry=r
        )
        self.escalations = Counter(
            "hisgateway_sms_escalations",
            "Changes of a conversion scope's level (up: its verify rate fell below its band; down: it recovered"
            " or its hold ran out). Segments are labelled kind=segment only; the audit log names them.",
            ["kind", "hospital", "purpose", "assurance", "direction", "level"],
            registry=r,
        )
        self.scope_level = Gauge(
            "hisgateway_sms_scope_level",
            "Current level of a conversion scope as this instance last saw it (0 normal, 1 captcha, 2 refusing past"
            " a hard cap); for kind=segment the highest level of any segment.",
            ["kind", "hospital", "purpose", "assurance"],
            registry=r,
        )
        self.hot_segments = Gauge(
            "hisgateway_sms_hot_segments",
            "Number segments (号段) escalated, as this instance last saw them.",
            registry=r,
        )
        self.his_lookups = Counter(
            "hisgateway_sms_his_lookups",
            "Known-patient look-ups, by answer (on_file, not_on_file, unchecked).",
            ["hospital", "answer"],
            registry=r,
        )
