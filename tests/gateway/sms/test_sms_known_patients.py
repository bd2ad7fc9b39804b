"""Known patients, checked against the sandbox HIS through a real bridge agent (``patient.query``): where the
purpose requires it a code goes only to the number on file (for the card being bound, when one is given),
anything else is answered as if sent; the HIS is asked once per number for a while, never faster than its cap;
an agent that cannot answer means ``sms_unavailable``; for login a number on file is simply vouched for."""

from __future__ import annotations

from tests.support.sms_rig import client

QUIET = {"device": {"enabled": False}, "segment": {"enabled": False}, "ip": {"enabled": False}}
REQUIRE = {"binding": "require", "payment": "require", "login": "prefer"}
SENT = {"status": "sent", "resend_after_s": 60, "expires_in_s": 300}
ZHANG_SAN = "13800000001"  # the sandbox HIS's P0001, card C0001
LI_SI = "13800000002"  # P0002, card C0002


async def test_codes_go_only_to_the_number_on_file(sms_factory, his_rig):
    rig = await sms_factory(his=his_rig.link, defaults={**QUIET, "known_patients": REQUIRE})
    assert await rig.app.otp(ZHANG_SAN, "payment") == (200, SENT)
    assert await rig.app.otp("13912345678", "payment") == (200, SENT), "not on file: answered alike"
    assert await rig.app.otp(ZHANG_SAN, "binding", card_no="C0001") == (200, SENT)
    assert await rig.app.otp(LI_SI, "binding", card_no="C0001") == (200, SENT), "someone else's card"
    await rig.flush()
    assert [(m.phone, m.purpose) for m in rig.provider.sent] == [(ZHANG_SAN, "payment"), (ZHANG_SAN, "binding")]
    metrics = rig.service.metrics
    assert metrics.his_lookups.labels("H001", "not_on_file")._value.get() == 2
    assert metrics.his_lookups.labels("H001", "on_file")._value.get() == 2


async def test_the_his_is_asked_once_per_number_and_never_flooded(sms_factory, his_rig, clock):
    known = {**REQUIRE, "lookups_per_minute": 2}
    rig = await sms_factory(his=his_rig.link, defaults={**QUIET, "known_patients": known})
    statuses = [(await rig.app.otp(number, "payment"))[0] for number in (ZHANG_SAN, "13912345678", LI_SI)]
    assert statuses == [200, 200, 503], "the third look-up in a minute is not made"
    assert rig.service.metrics.his_lookups.labels("H001", "unchecked")._value.get() == 1
    await his_rig.agent.stop()
    clock.advance(61)
    assert await rig.app.otp(ZHANG_SAN, "payment") == (200, SENT), "remembered: the HIS is not asked again"
    assert await rig.app.otp("13912345678", "payment") == (200, SENT)
    await rig.flush()
    assert [m.phone for m in rig.provider.sent] == [ZHANG_SAN, ZHANG_SAN]


async def test_an_agent_that_cannot_answer_means_unavailable(sms_factory, his_rig):
    await his_rig.agent.stop()
    rig = await sms_factory(his=his_rig.link, defaults={**QUIET, "known_patients": REQUIRE})
    status, body = await rig.app.otp(ZHANG_SAN, "payment")
    assert (status, body["error"]["code"]) == (503, "sms_unavailable")
    assert (await rig.app.otp(ZHANG_SAN, "login", client_info=client(1)))[0] == 200, "login only prefers"


async def test_for_login_a_number_on_file_is_vouched_for(sms_factory, his_rig, clock):
    rig = await sms_factory(his=his_rig.link, defaults={**QUIET, "known_patients": REQUIRE})
    for n in range(8):
        assert (await rig.app.otp(f"139{n:08d}", "login", client_info=client(n)))[0] == 200
    clock.advance(121)
    status, _ = await rig.app.otp("13900000099", "login", client_info=client(99))
    assert status in (403, 429), "the login scope is escalated for strangers"
    assert await rig.app.otp(ZHANG_SAN, "login", client_info=client(100)) == (200, SENT), "a patient on file"
