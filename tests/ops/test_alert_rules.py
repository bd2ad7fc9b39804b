"""The Prometheus alert rules in config/monitoring/: valid, each with a firing and a non-firing promtool case,
and naming only metrics the agent exports; the Grafana dashboard queries only those metrics too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from bridge.metrics import Metrics
from tests.support.rig import REPO

pytestmark = pytest.mark.system

MONITORING = REPO / "config" / "monitoring"
RULES = MONITORING / "hisbridge-alerts.yml"
RULE_TESTS = MONITORING / "hisbridge-alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: install Debian's `prometheus` package (scripts/bootstrap does, as root)"
    return path


def exported_names() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {m.name + s for m in Metrics().registry.collect() for s in suffixes.get(m.type, ("",))}


def test_promtool_checks_and_tests_every_alert():
    check = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name], capture_output=True, text=True, cwd=MONITORING
    )
    assert result.returncode == 0, result.stdout + result.stderr

    alerts = re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M)
    tests = RULE_TESTS.read_text()
    assert len(alerts) >= 14
    for alert in alerts:
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts: \[\]", tests), f"{alert}: no non-firing case"
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels:", tests), f"{alert}: no firing case"


def test_gateway_rules_use_only_exported_metrics():
    from gateway.channels.metrics import ChannelKeyCollector
    from gateway.money_metrics import MoneyMetrics
    from gateway.platform_metrics import PlatformMetrics
    from gateway.sms.metrics import SmsMetrics

    suffix = {"counter": "_total", "gauge": ""}
    exported = {m.name + suffix[m.type] for m in SmsMetrics().registry.collect() if m.type in suffix}
    exported |= {m.name for m in MoneyMetrics().registry.collect() if m.type == "gauge"}
    exported |= {m.name for m in PlatformMetrics().registry.collect() if m.type == "gauge"}
    exported |= {m.name for m in ChannelKeyCollector({}).collect()}
    in_rules = set(re.findall(r"\b(hisgateway_[a-z_]+)", RULES.read_text()))
    assert in_rules and in_rules <= exported, in_rules - exported
    for alert in (
        "HisGatewaySmsVerifyRateLow",
        "HisGatewaySmsScopeEscalated",
        "HisGatewaySmsScopeRefusing",
        "HisGatewayChannelKeyExpiringSoon",
        "HisGatewayHisStepStuck",
        "HisGatewayMoneyException",
    ):
        assert alert in RULES.read_text()


def test_rules_and_dashboard_use_only_exported_metrics():
    exported = exported_names()
    rules = RULES.read_text()
    in_rules = set(re.findall(r"\b(hisbridge_[a-z_]+)", rules))
    assert in_rules and in_rules <= exported, in_rules - exported

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    in_dashboard = {name for e in exprs for name in re.findall(r"\b(hisbridge_[a-z_]+)", e)}
    assert in_dashboard <= exported, in_dashboard - exported
    for topic in (
        "hisbridge_journal_entries",
        "hisbridge_journal_oldest_pending_age_seconds",
        "hisbridge_breaker_state",
        "hisbridge_certificate_expiry_days",
        "hisbridge_his_calls_total",
        "hisbridge_his_call_duration_seconds_bucket",
        "hisbridge_journal_disk_free_bytes",
        "hisbridge_journal_commit_duration_seconds_bucket",
    ):
        assert topic in in_dashboard, f"the dashboard shows nothing of {topic}"
