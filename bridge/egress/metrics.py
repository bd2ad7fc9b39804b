"""Metrics of the outbound path (terminals → agent → gateway), on the agent's registry.

Names are documented in docs/OPERATIONS.md and used by the alert rules; rename with care.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FORWARD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60)


class EgressMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "hisbridge_terminal_requests",
            "Terminal requests answered, by terminal, operation and outcome (a status or an error code).",
            ["terminal", "operation", "outcome"],
            registry=r,
        )
        self.refusals = Counter(
            "hisbridge_terminal_refusals",
            "Terminal requests refused before anything was journaled or forwarded, by reason.",
            ["reason"],
            registry=r,
        )
        self.forwards = Counter(
            "hisbridge_egress_forwards",
            "Calls to the gateway, by operation and result (answered, not_sent, in_doubt).",
            ["operation", "result"],
            registry=r,
        )
        self.forward_seconds = Histogram(
            "hisbridge_egress_forward_duration_seconds",
            "Time of one call to the gateway's business API (付款码 includes the payer entering a password).",
            ["operation"],
            buckets=FORWARD_BUCKETS,
            registry=r,
        )
        self.entries = Gauge("hisbridge_egress_requests", "Outbound journal entries by state.", ["state"], registry=r)
        self.oldest_queued_refund = Gauge(
            "hisbridge_egress_oldest_queued_refund_age_seconds",
            "Age of the oldest refund not yet taken by the gateway (queued or in doubt); 0 when none.",
            registry=r,
        )
        self.settled = Counter(
            "hisbridge_egress_in_doubt_settled",
            "In-doubt forwards settled by asking the gateway, by what it had (found, not_found).",
            ["found"],
            registry=r,
        )
        self.link_up = Gauge(
            "hisbridge_egress_link_up", "1 while the gateway can be reached, 0 after a failed connection.", registry=r
        )
        self.link_up.set(1)
        self.journal_writable = Gauge(
            "hisbridge_egress_journal_writable", "1 while the outbound journal commits.", registry=r
        )
        self.journal_writable.set(1)
