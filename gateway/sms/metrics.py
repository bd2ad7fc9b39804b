"""Prometheus metrics of the SMS defences, one registry per gateway instance (tests run several in one process).

The pumping signal is the verify success rate, ``hisgateway_sms_verifications_total{outcome="verified"}`` over
``hisgateway_sms_sent_total``: patients type in the codes they asked for, a pump sends codes nobody reads. The
alert ``HisGatewaySmsVerifyRateLow`` (config/monitoring/hisbridge-alerts.yml) watches it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class SmsMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sent = Counter(
            "hisgateway_sms_sent", "Verification SMS handed to the provider.", ["hospital", "purpose"], registry=r
        )
        self.refused = Counter(
            "hisgateway_sms_refused",
            "Code requests not sent, by the layer that stopped them and what the client was told"
            " (silent: answered as if sent; captcha; refused; unavailable).",
            ["hospital", "purpose", "layer", "action"],
            registry=r,
        )
        self.verifications = Counter(
            "hisgateway_sms_verifications",
            "Codes checked, by outcome (verified or failed).",
            ["hospital", "purpose", "outcome"],
            registry=r,
        )
        self.send_errors = Counter(
            "hisgateway_sms_send_errors", "SMS the provider refused or could not take.", ["provider"], registry=r
        )
