"""The conversion layer on the running gateway, time driven by the SMS clock: a scope whose codes go unverified
escalates to a captcha, then to refusal past a hard cap that a solved captcha does not lift; it recovers as its
verify rate recovers, or when its hold runs out with nothing against it. Each change is audited and exported;
known patients are never escalated; an address with failed codes is tainted."""

from __future__ import annotations

import aiohttp

from gateway.store import audit
from tests.support.gateway_rig import ApiClient
from tests.support.sms_rig import SmsApp, client, service, sms_section, start_sms_gateway

ONLY_CONVERSION = {
    "ip": {"enabled": False},
    "device": {"enabled": False},
    "segment": {"enabled": False},
    "identity": {"enabled": False},
}
GRACE = 121


def phone(n: int) -> str:
    return f"139{n:08d}"


async def captcha_then(rig, number: str, n: int) -> tuple[int, bool]:
    status, _, asked = await rig.app.otp_solving(number, client_info=client(n))
    return status, asked


async def metrics_text(rig) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{rig.running.url}/metrics") as resp:
        return await resp.text()


async def test_a_scope_escalates_as_codes_go_unverified_and_recovers_as_they_are_verified(sms_factory, clock):
    rig = await sms_factory(defaults=ONLY_CONVERSION)
    for n in range(4):
        assert (await rig.app.otp(phone(n), client_info=client(n)))[0] == 200
    clock.advance(60)
    assert (await rig.app.otp(phone(4), client_info=client(4)))[0] == 200, "codes in their grace are not failures"
    clock.advance(GRACE - 60)
    status, body = await rig.app.otp(phone(5), client_info=client(5))
    assert (status, body["error"]["code"]) == (403, "captcha_required"), "four unverified codes: level 1"
    levels = {e["scope"]: e["level"] for e in await rig.service.escalations()}
    assert levels["hp/H001/binding/open"] == 1 and levels["gw"] == 1

    asked = []
    for n in range(10, 22):
        status, challenged = await captcha_then(rig, phone(n), n)
        assert status == 200
        asked.append(challenged)
        await rig.flush()
        code = rig.provider.to(phone(n))[-1].code
        assert await rig.app.verify(phone(n), code) == (200, {"verified": True})
        clock.advance(5)
    first_free = asked.index(False)
    assert first_free >= 3 and not any(asked[first_free:]), "patients verify their codes: the rate comes back"

    entries = await audit.entries(rig.running.svc.db)
    changes = [(e["action"], e["detail"]["from"], e["detail"]["to"]) for e in entries if e["subject"] == "sms-scope:gw"]
    assert sorted(changes) == [("sms.scope_escalated", 0, 1), ("sms.scope_recovered", 1, 0)]
    text = await metrics_text(rig)
    assert (
        'hisgateway_sms_escalations_total{assurance="*",direction="up",hospital="*",kind="gateway",level="1",'
        'purpose="*"} 1.0' in text
    )
    assert 'hisgateway_sms_scope_level{assurance="open",hospital="H001",kind="hospital",purpose="binding"} 0.0' in text


async def test_level_two_refuses_past_a_cap_that_a_captcha_does_not_lift(sms_factory, clock):
    rig = await sms_factory(defaults={**ONLY_CONVERSION, "conversion": {"cap_floor": 1}})
    for n in range(6):
        assert (await rig.app.otp(phone(n), client_info=client(n)))[0] == 200
    clock.advance(GRACE)
    assert await captcha_then(rig, phone(10), 10) == (200, True), "level 2: the cap allows one"
    assert await captcha_then(rig, phone(11), 11) == (429, True), "a solved captcha does not lift the cap"
    levels = {e["scope"]: e["level"] for e in await rig.service.escalations()}
    assert levels["hp/H001/binding/open"] == 2
    status, _ = await rig.app.otp(phone(12), client_info=client(12), identity={"kind": "app_user", "id": "u-1"})
    assert status == 200, "an identified person is judged by their own scope and the identity caps"
    assert await captcha_then(rig, phone(13), 13) == (429, True)

    clock.advance(3600 + GRACE)
    fresh = client(14, ip="203.0.113.14")  # the test's other addresses share a /16 with eight failed codes today
    status, _ = await rig.app.otp(phone(14), client_info=fresh)
    assert status == 403, "the hold ran out, but today's rate still says pump: held again"
    clock.advance(86400)
    fresh = client(15, ip="203.0.113.15")
    assert (await rig.app.otp(phone(15), client_info=fresh))[0] == 200, "a new day, nothing against it"
    levels = {e["scope"]: e["level"] for e in await rig.service.escalations()}
    assert levels["hp/H001/binding/open"] == 0


async def test_known_patients_are_not_escalated(sms_factory, clock):
    rig = await sms_factory(defaults=ONLY_CONVERSION)
    number = phone(99)
    assert (await rig.app.otp(number, client_info=client(99)))[0] == 200
    await rig.flush()
    assert (await rig.app.verify(number, rig.provider.to(number)[-1].code))[1] == {"verified": True}
    for n in range(8):
        assert (await rig.app.otp(phone(n), client_info=client(n)))[0] == 200
    clock.advance(GRACE)
    assert (await rig.app.otp(phone(50), client_info=client(50)))[0] in (403, 429), "the scope is escalated"
    status, _ = await rig.app.otp(number, client_info=client(51))
    assert status == 200, "a number that verified here before is a patient's"


async def test_an_address_whose_codes_fail_is_tainted(sms_factory, clock):
    rig = await sms_factory(defaults=ONLY_CONVERSION)
    proxy = "198.51.100.7"
    for n in range(2):
        assert (await rig.app.otp(phone(n), client_info=client(n, ip=proxy)))[0] == 200
    clock.advance(GRACE)
    status, body = await rig.app.otp(phone(2), client_info=client(2, ip=proxy))
    assert (status, body["error"]["code"]) == (403, "captcha_required"), "two failed codes from one address"
    assert (await rig.app.otp(phone(3), client_info=client(3, ip="203.0.113.9")))[0] == 200, "others are not"


async def test_a_late_verification_takes_the_failure_back(sms_factory, clock):
    rig = await sms_factory(defaults=ONLY_CONVERSION)
    for n in range(4):
        assert (await rig.app.otp(phone(n), client_info=client(n)))[0] == 200
    clock.advance(GRACE + 30)
    await rig.service.settle()
    await rig.flush()
    for n in range(2):
        assert (await rig.app.verify(phone(n), rig.provider.to(phone(n))[-1].code))[1] == {"verified": True}
    status, _ = await rig.app.otp(phone(10), client_info=client(10))
    assert status == 200, "two of four verified after all: in band"


async def test_two_instances_on_redis_share_the_rates_and_escalate_once(tmp_path, keys, pg_url, redis_server, clock):
    section = sms_section(tmp_path, counters=redis_server.url, defaults=ONLY_CONVERSION)
    started = [await start_sms_gateway(tmp_path, keys, pg_url, section, clock) for _ in range(2)]
    apps = [SmsApp(ApiClient(r.url, keys.app, keys.gateway.public()), service(r).captcha) for r, _ in started]
    try:
        a, b = apps
        for n in range(4):
            assert (await (a if n % 2 else b).otp(phone(n), client_info=client(n)))[0] == 200
        clock.advance(GRACE)
        statuses = [(await app.otp(phone(10 + n), client_info=client(10 + n)))[0] for n, app in enumerate(apps)]
        assert statuses == [403, 403], "both instances see the same four failures"
        entries = await audit.entries(started[0][0].svc.db)
        escalated = [e for e in entries if e["action"] == "sms.scope_escalated" and e["subject"] == "sms-scope:gw"]
        assert len(escalated) == 1, "one escalation, whichever instance saw it first"
        for n in range(10, 20):
            status, _, _ = await b.otp_solving(phone(100 + n), client_info=client(n))
            assert status == 200
            await service(started[0][0]).flush()
            await service(started[1][0]).flush()
            sent = started[0][1].to(phone(100 + n)) + started[1][1].to(phone(100 + n))
            assert sent
            assert (await a.verify(phone(100 + n), sent[-1].code))[1] == {"verified": True}, "verified on the other"
        assert (await a.otp(phone(50), client_info=client(50)))[0] == 200, "recovered for both"
        assert (await b.otp(phone(51), client_info=client(51)))[0] == 200
    finally:
        for app in apps:
            await app.api.close()
        for running, _ in started:
            await running.stop()
