"""What the app vouches for and what it leaves out: caps per identity (numbers a day, codes an hour, unverified
codes), requests without an address pooled in one bucket rather than let off (issue 15, item 12), and patients
on the hospital's Wi-Fi not challenged for sharing one address."""

from __future__ import annotations

from tests.support.sms_rig import client

QUIET = {"device": {"enabled": False}, "segment": {"enabled": False}, "conversion": {"enabled": False}}
ALICE = {"kind": "wechat_openid", "id": "oAlice-1234567890"}


def phone(n: int) -> str:
    return f"139{n:08d}"


async def test_an_identity_asks_for_a_few_numbers_a_day(sms_factory, clock):
    rig = await sms_factory(defaults={**QUIET, "identity": {"numbers_per_day": 2}})
    for n in range(2):
        assert (await rig.app.otp(phone(n), client_info=client(n), identity=ALICE))[0] == 200
    status, body = await rig.app.otp(phone(2), client_info=client(2), identity=ALICE)
    assert (status, body["error"]["code"]) == (429, "sms_rate_limited")
    clock.advance(61)
    assert (await rig.app.otp(phone(0), client_info=client(0), identity=ALICE))[0] == 200, "a number it already used"
    other = {"kind": "wechat_openid", "id": "oBob-0987654321"}
    assert (await rig.app.otp(phone(2), client_info=client(2), identity=other))[0] == 200
    clock.advance(86400)
    assert (await rig.app.otp(phone(2), client_info=client(2), identity=ALICE))[0] == 200, "a new day"


async def test_an_identity_whose_codes_go_unverified_is_refused_for_the_day(sms_factory, clock):
    rig = await sms_factory(defaults={**QUIET, "identity": {"failures_per_day": 2, "numbers_per_day": 10}})
    for n in range(2):
        assert (await rig.app.otp(phone(n), client_info=client(n), identity=ALICE))[0] == 200
    clock.advance(121)
    status, body = await rig.app.otp(phone(5), client_info=client(5), identity=ALICE)
    assert (status, body["error"]["code"]) == (429, "sms_rate_limited")


async def test_the_identity_is_validated(sms_factory):
    rig = await sms_factory(defaults=QUIET)
    for bad in ({"kind": "qq", "id": "x"}, {"kind": "wechat_openid", "id": ""}, {"kind": "app_user"}):
        status, body = await rig.app.otp(phone(1), identity=bad)
        assert (status, body["error"]["code"]) == (422, "schema_violation")


async def test_requests_without_an_address_share_one_bucket(sms_factory):
    caps = [{"window_s": 3600, "limit": 3}]
    rig = await sms_factory(defaults={**QUIET, "ip": {"caps": caps, "missing": {"points": 0}}})
    statuses = [(await rig.app.otp(phone(n), client_info={"user_agent": f"UA {n}"}))[0] for n in range(5)]
    assert statuses == [200, 200, 200, 403, 403], "no address is one address, not none"
    assert (await rig.app.otp(phone(9), client_info=client(9)))[0] == 200, "callers with an address are apart"


async def test_no_address_and_no_fingerprint_is_the_riskiest_case(sms_factory):
    rig = await sms_factory(defaults={"segment": {"enabled": False}, "conversion": {"enabled": False}})
    status, body = await rig.app.otp(phone(1), client_info={})
    assert (status, body["error"]["code"]) == (403, "captcha_required"), "no client object: a captcha at once"
    status, body = await rig.app.otp(phone(2), client_info={"user_agent": "curl/8", "accept_language": "zh"})
    assert (status, body["error"]["code"]) == (403, "captcha_required")
    assert (await rig.app.otp(phone(3), client_info=client(3), identity=ALICE))[0] == 200


async def test_patients_on_the_hospital_wifi_are_not_challenged(sms_factory):
    wifi = "100.64.10.1"
    rig = await sms_factory(defaults={"lists": {"allow_ips": [wifi]}})
    asked = []
    for n in range(40):
        status, _, challenged = await rig.app.otp_solving(phone(n * 7919), client_info=client(n, ip=wifi))
        assert status == 200
        asked.append(challenged)
    assert not any(asked)


async def test_identified_patients_behind_a_carrier_nat_are_not_challenged_for_sharing_it(sms_factory):
    caps = [{"window_s": 3600, "limit": 2}, {"window_s": 3600, "limit": 30, "action": "refuse"}]
    rig = await sms_factory(defaults={**QUIET, "ip": {"caps": caps}})
    cgnat = "100.72.0.9"
    for n in range(6):
        person = {"kind": "wechat_openid", "id": f"o-person-{n}"}
        status, _, asked = await rig.app.otp_solving(phone(n), client_info=client(n, ip=cgnat), identity=person)
        assert (status, asked) == (200, False)
    status, body = await rig.app.otp(phone(9), client_info=client(9, ip=cgnat))
    assert (status, body["error"]["code"]) == (403, "captcha_required"), "without an identity the address counts"
