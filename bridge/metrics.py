"""Prometheus metrics of one agent. A registry per agent keeps tests with several agents in one process apart.

Names and labels are documented in docs/OPERATIONS.md; alert rules depend on them, so rename with care.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge.egress.metrics import EgressMetrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "hisbridge_requests",
            "Requests answered, by operation and outcome code.",
            ["operation", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "hisbridge_request_duration_seconds",
            "Time to answer a platform request.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "hisbridge_auth_failures", "Requests refused by authentication.", ["reason"], registry=r
        )
        self.his_calls = Counter(
            "hisbridge_his_calls",
            "Calls to the HIS, by outcome.",
            ["endpoint", "operation", "outcome"],
            registry=r,
        )
        self.his_seconds = Histogram(
            "hisbridge_his_call_duration_seconds",
            "HIS call latency.",
            ["endpoint", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker_state = Gauge(
            "hisbridge_breaker_state",
            "Circuit breaker per HIS endpoint: 0 closed, 1 half-open, 2 open.",
            ["endpoint"],
            registry=r,
        )
        self.journal_entries = Gauge("hisbridge_journal_entries", "Journal entries by state.", ["state"], registry=r)
        self.journal_oldest_pending = Gauge(
            "hisbridge_journal_oldest_pending_age_seconds",
            "Age of the oldest accepted, in-flight or unknown entry.",
            registry=r,
        )
        self.journal_commit_seconds = Histogram(
            "hisbridge_journal_commit_duration_seconds",
            "Time of one group commit, fsync included.",
            buckets=FSYNC_BUCKETS,
            registry=r,
        )
        self.journal_batch = Histogram(
            "hisbridge_journal_commit_batch_size",
            "Writes per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
            registry=r,
        )
        self.journal_errors = Counter("hisbridge_journal_errors", "Journal commits that failed.", registry=r)
        self.journal_writable = Gauge(
            "hisbridge_journal_writable",
            "1 while the journal commits, 0 after a failed commit (disk full, I/O error) until one succeeds again.",
            registry=r,
        )
        self.journal_writable.set(1)
        self.journal_disk_free = Gauge(
            "hisbridge_journal_disk_free_bytes", "Free bytes on the journal's filesystem.", registry=r
        )
        self.reloads = Counter(
            "hisbridge_reloads", "Profile reloads on SIGHUP, by outcome (ok, failed).", ["outcome"], registry=r
        )
        self.transitions = Counter("hisbridge_journal_transitions", "Entries reaching a state.", ["state"], registry=r)
        self.adapter_events = Counter(
            "hisbridge_adapter_events",
            "Protocol events an adapter reports (HL7: ack code, ae_retry, ack_timeout, undecodable, ...).",
            ["endpoint", "event", "detail"],
            registry=r,
        )
        self.in_doubt_resolved = Counter(
            "hisbridge_in_doubt_resolved",
            "In-doubt entries resolved by the HIS status query.",
            ["found"],
            registry=r,
        )
        self.pruned = Counter("hisbridge_journal_pruned", "Finished entries pruned by retention.", registry=r)
        self.ready = Gauge("hisbridge_ready", "1 once recovery is complete and the agent serves.", registry=r)
        self.cert_expiry_days = Gauge(
            "hisbridge_certificate_expiry_days", "Days until a certificate expires.", ["cert"], registry=r
        )
        self.egress = EgressMetrics(r)

    def on_commit(self, seconds: float, batch: int) -> None:
        self.journal_commit_seconds.observe(seconds)
        self.journal_batch.observe(batch)
        self.journal_writable.set(1)

    def on_journal_error(self, _reason: str) -> None:
        self.journal_errors.inc()
        self.journal_writable.set(0)
