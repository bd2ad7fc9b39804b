"""What operators see: refusals in the audit log with the phone masked and hashed, never in the clear; the
metrics (sent, refused by layer and action, verifications) on ``/metrics``; logs that mask the number."""

from __future__ import annotations

import json

import aiohttp
from structlog.testing import capture_logs

from gateway.store import audit
from tests.support.sms_rig import client

PHONE = "13900000001"


async def test_refusals_are_audited_without_the_number(sms_factory):
    lists = {"block_phones": ["13900000002"], "block_ips": ["203.0.113.0/24"]}
    segment = {"caps": [{"window_s": 600, "limit": 1}], "prefix_len": 3}
    rig = await sms_factory(defaults={"lists": lists, "segment": segment, "ip": {"enabled": False}})
    with capture_logs() as logs:
        await rig.app.otp(PHONE, client_info=client(1))
        await rig.app.otp("13900000002", client_info=client(2))
        await rig.app.otp("13900000003", client_info=client(3))
        await rig.app.otp("13900000004", client_info=client(4, ip="203.0.113.5"))
    entries = [e for e in await audit.entries(rig.running.svc.db) if e["action"].startswith("sms.")]
    actions = sorted((e["action"], e["detail"]["layer"], e["detail"]["reason"]) for e in entries)
    assert actions == [
        ("sms.captcha_required", "segment", "over_1_per_600s"),
        ("sms.refused", "lists", "blocked_ip"),
        ("sms.refused", "lists", "blocked_phone"),
    ]
    dumped = json.dumps(entries, default=str) + json.dumps(logs, default=str)
    for number in ("13900000002", "13900000003", "13900000004"):
        assert number not in dumped
    assert {e["detail"]["phone"] for e in entries} == {"139****0002", "139****0003", "139****0004"}
    assert all(e["subject"].startswith("sms:") and e["actor"] == "kiosk-1" for e in entries)


async def test_metrics_count_sends_refusals_and_verifications(sms_factory):
    rig = await sms_factory(defaults={"lists": {"block_phones": ["13900000002"]}})
    await rig.app.otp(PHONE)
    await rig.app.otp("13900000002")
    await rig.flush()
    code = rig.provider.to(PHONE)[0].code
    await rig.app.verify(PHONE, "x")
    await rig.app.verify(PHONE, code)
    async with aiohttp.ClientSession() as session, session.get(f"{rig.running.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    labels = 'hospital="H001",purpose="binding"'
    assert f"hisgateway_sms_sent_total{{{labels}}} 1.0" in text
    assert 'hisgateway_sms_refused_total{action="silent",hospital="H001",layer="lists",purpose="binding"} 1.0' in text
    for outcome in ("failed", "verified"):
        assert (
            f'hisgateway_sms_verifications_total{{hospital="H001",outcome="{outcome}",purpose="binding"}} 1.0' in text
        )
