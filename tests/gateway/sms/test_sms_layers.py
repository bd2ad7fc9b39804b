"""Each layer on its own, through the signed API: lists, per-phone interval and caps, per-IP and per-device
caps escalating to a captcha (a hard cap only where configured), number-segment velocity, and the captcha
itself — single use, bound to the phone, expiring."""

from __future__ import annotations

from tests.support.sms_rig import client

SENT = {"status": "sent", "resend_after_s": 60, "expires_in_s": 300}
OFF = {
    "ip": {"enabled": False},
    "device": {"enabled": False},
    "segment": {"enabled": False},
    "identity": {"enabled": False},
    "conversion": {"enabled": False},
}


def phone(n: int, prefix: str = "139") -> str:
    return f"{prefix}{n:08d}"


def only(**layers):
    return {"defaults": {**OFF, **layers}}


async def test_blocked_numbers_are_answered_as_if_sent(sms_factory):
    lists = {"block_phones": ["13900000001"], "block_prefixes": ["1700"], "block_ips": ["203.0.113.0/24"]}
    rig = await sms_factory(**only(lists=lists))
    assert await rig.app.otp("13900000001") == (200, SENT)
    assert await rig.app.otp("17000000002") == (200, SENT)
    assert await rig.sent_to("13900000001") == 0
    assert await rig.sent_to("17000000002") == 0
    status, body = await rig.app.otp("13900000003", client_info=client(3, ip="203.0.113.9"))
    assert (status, body["error"]["code"]) == (403, "sms_refused")
    assert await rig.app.otp("13900000003", client_info=client(3, ip="198.51.100.9")) == (200, SENT)


async def test_resend_interval_and_phone_caps_are_silent(sms_factory, clock):
    rig = await sms_factory(**only(phone={"per_hour": 3, "per_day": 4}))
    number = phone(1)
    assert await rig.app.otp(number) == (200, SENT)
    assert await rig.app.otp(number) == (200, SENT)
    assert await rig.sent_to(number) == 1, "the resend interval"
    for expected in (2, 3, 3):
        clock.advance(61)
        assert await rig.app.otp(number) == (200, SENT)
        assert await rig.sent_to(number) == expected, "the hourly cap"
    clock.advance(3600)
    assert await rig.app.otp(number) == (200, SENT)
    assert await rig.sent_to(number) == 4
    clock.advance(61)
    assert await rig.app.otp(number) == (200, SENT)
    assert await rig.sent_to(number) == 4, "the daily cap"
    assert await rig.app.otp(number, purpose="payment") == (200, SENT)
    assert await rig.sent_to(number) == 5, "caps are per purpose"


async def test_ip_caps_escalate_to_captcha_then_refuse(sms_factory, clock):
    caps = [{"window_s": 3600, "limit": 3}, {"window_s": 3600, "limit": 7, "action": "refuse"}]
    rig = await sms_factory(**only(ip={"enabled": True, "caps": caps}))
    wifi = "100.64.0.1"
    outcomes = []
    for n in range(6):
        status, _, asked = await rig.app.otp_solving(phone(n), client_info=client(n, ip=wifi))
        outcomes.append((status, asked))
    assert outcomes == [(200, False)] * 3 + [(200, True)] * 2 + [(429, False)], "a retry counts as an attempt"
    assert await rig.app.otp(phone(9), client_info=client(9, ip="100.64.0.2")) == (200, SENT), "other addresses"
    clock.advance(3600)
    assert await rig.app.otp(phone(10), client_info=client(10, ip=wifi)) == (200, SENT), "a new window"


async def test_allow_listed_addresses_skip_the_ip_caps(sms_factory):
    policy = only(
        ip={"enabled": True, "caps": [{"window_s": 3600, "limit": 1}]}, lists={"allow_ips": ["100.64.0.0/16"]}
    )
    rig = await sms_factory(**policy)
    for n in range(5):
        assert await rig.app.otp(phone(n), client_info=client(n, ip="100.64.3.4")) == (200, SENT)


async def test_device_caps_and_missing_fingerprint(sms_factory):
    device = {"enabled": True, "caps": [{"window_s": 3600, "limit": 2}], "missing_fingerprint_points": 60}
    rig = await sms_factory(**only(device=device))
    same_device = [dict(client(7), ip=f"100.64.1.{n}") for n in range(3)]
    results = [await rig.app.otp_solving(phone(n), client_info=same_device[n]) for n in range(3)]
    assert [(s, asked) for s, _, asked in results] == [(200, False), (200, False), (200, True)]
    bare = client(8, fingerprint=False)
    assert await rig.app.otp(phone(20), client_info=bare) == (200, SENT), "60 points alone stay under 100"
    status, body = await rig.app.otp(phone(21), client_info=client(9, fingerprint=False))
    assert status == 200
    bare_twice = dict(bare, ip="100.64.9.9")
    status, body = await rig.app.otp(phone(22), client_info=bare_twice)
    assert status == 200
    status, body = await rig.app.otp(phone(23), client_info=dict(bare, ip="100.64.9.10"))
    assert (status, body["error"]["code"]) == (403, "captcha_required"), "over the cap and no fingerprint"


async def test_a_hot_segment_needs_a_captcha_and_stays_hot(sms_factory, clock):
    segment = {"enabled": True, "prefix_len": 7, "caps": [{"window_s": 600, "limit": 3}], "sticky": True}
    rig = await sms_factory(**only(segment=segment))
    hot = [f"1380013{n:04d}" for n in range(10)]
    statuses = [(await rig.app.otp(p, client_info=client(n)))[0] for n, p in enumerate(hot[:5])]
    assert statuses == [200, 200, 200, 403, 403]
    assert await rig.app.otp("13900139000", client_info=client(99)) == (200, SENT), "other segments are unaffected"
    status, _, asked = await rig.app.otp_solving(hot[5], client_info=client(5))
    assert (status, asked) == (200, True), "a patient in a hot segment solves a captcha"
    clock.advance(600)
    assert (await rig.app.otp(hot[6], client_info=client(6)))[0] == 403, "the previous window still counts"
    clock.advance(600)
    assert await rig.app.otp(hot[7], client_info=client(7)) == (200, SENT)


async def test_allow_listed_phones_are_never_asked_for_a_captcha(sms_factory):
    segment = {"enabled": True, "caps": [{"window_s": 600, "limit": 0}]}
    rig = await sms_factory(**only(segment=segment, lists={"allow_phones": ["13800000000"]}))
    assert (await rig.app.otp("13800000001"))[0] == 403
    assert await rig.app.otp("13800000000") == (200, SENT)


async def test_captcha_tokens_are_single_use_bound_and_expiring(sms_factory, clock):
    rig = await sms_factory(**only(segment={"enabled": True, "caps": [{"window_s": 600, "limit": 0}]}))
    solver = rig.service.captcha
    status, body = await rig.app.otp(phone(1))
    assert (status, body["error"]["code"]) == (403, "captcha_required")
    challenge = body["captcha"]["challenge_id"]
    assert body["captcha"]["provider"] == "sandbox"
    answer = {"challenge_id": challenge, "token": solver.solve(challenge)}
    assert (await rig.app.otp(phone(2), captcha=answer))[0] == 403, "bound to the phone it was issued for"
    forged = {"challenge_id": challenge, "token": "x" * 24}
    assert (await rig.app.otp(phone(1), captcha=forged))[0] == 403
    assert await rig.app.otp(phone(1), captcha=answer) == (200, SENT)
    clock.advance(61)
    assert (await rig.app.otp(phone(1), captcha=answer))[0] == 403, "used once"
    status, body = await rig.app.otp(phone(3))
    late = {"challenge_id": body["captcha"]["challenge_id"], "token": solver.solve(body["captcha"]["challenge_id"])}
    clock.advance(301)
    assert (await rig.app.otp(phone(3), captcha=late))[0] == 403, "expired"


async def test_policies_differ_per_hospital_and_purpose(sms_factory):
    strict = {"segment": {"enabled": True, "caps": [{"window_s": 600, "limit": 0}]}}
    hospitals = {"H001": {"purposes": {"payment": strict}}}
    rig = await sms_factory(defaults=OFF, hospitals=hospitals)
    assert await rig.app.otp(phone(1), purpose="binding") == (200, SENT)
    assert (await rig.app.otp(phone(1), purpose="payment"))[0] == 403
    assert rig.service.cfg.policy("H001", "payment").segment.caps[0].limit == 0
    assert rig.service.cfg.policy("H001", "login").segment.enabled is False
