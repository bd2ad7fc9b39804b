"""The budget: a burst of sends opens the breaker (everyone needs a captcha, for this window and the next), a
mostly spent day does too, and a spent budget refuses every request until the next day."""

from __future__ import annotations

from tests.support.sms_rig import client

OFF = {
    "ip": {"enabled": False},
    "device": {"enabled": False},
    "segment": {"enabled": False},
    "identity": {"enabled": False},
    "conversion": {"enabled": False},
}


def phone(n: int) -> str:
    return f"139{n:08d}"


async def test_a_burst_opens_the_breaker_for_everyone(sms_factory, clock):
    rig = await sms_factory(
        defaults=OFF, daily_budget=1000, breaker={"window_s": 300, "max_sends": 4, "budget_ratio": 1}
    )
    statuses = [(await rig.app.otp(phone(n), client_info=client(n)))[0] for n in range(6)]
    assert statuses == [200, 200, 200, 200, 403, 403]
    status, _, asked = await rig.app.otp_solving(phone(7), client_info=client(7))
    assert (status, asked) == (200, True), "a person still gets through"
    clock.advance(300)
    assert (await rig.app.otp(phone(8), client_info=client(8)))[0] == 403, "open for the next window too"
    clock.advance(300)
    assert (await rig.app.otp(phone(9), client_info=client(9)))[0] == 200, "closed after a quiet window"
    metrics = rig.service.metrics
    assert metrics.refused.labels("H001", "binding", "budget", "captcha")._value.get() == 4


async def test_a_spent_budget_refuses_until_the_next_day(sms_factory, clock):
    rig = await sms_factory(defaults=OFF, daily_budget=5, breaker={"max_sends": 100, "budget_ratio": 0.6})
    outcomes = []
    for n in range(7):
        status, body, asked = await rig.app.otp_solving(phone(n), client_info=client(n))
        outcomes.append((status, asked))
    assert outcomes[:3] == [(200, False)] * 3
    assert outcomes[3:5] == [(200, True)] * 2, "past 60 % of the budget everyone needs a captcha"
    assert outcomes[5:] == [(503, False)] * 2
    status, body = await rig.app.otp(phone(20))
    assert (status, body["error"]["code"]) == (503, "sms_unavailable")
    await rig.flush()
    assert len(rig.provider.sent) == 5
    clock.advance(86400)
    assert (await rig.app.otp(phone(21)))[0] == 200


async def test_a_hospital_purpose_budget(sms_factory):
    hospitals = {"H001": {"purposes": {"login": {"daily_budget": 1}}}}
    rig = await sms_factory(defaults=OFF, hospitals=hospitals)
    assert (await rig.app.otp(phone(1), purpose="login"))[0] == 200
    assert (await rig.app.otp(phone(2), purpose="login"))[0] == 503
    assert (await rig.app.otp(phone(3), purpose="payment"))[0] == 200
