"""Enumeration resistance: what the API says about a phone does not depend on what the gateway knows of it.
A request is answered alike for a fresh number, one with a live code, one in its resend interval, one over its
caps and a blocked one; a failed verification alike for no code, a wrong, expired, used or exhausted one. And
the answer never waits for the rig.provider, so a dropped request and a sent one take the same path in time."""

from __future__ import annotations

import asyncio

from gateway.sms.providers import SmsMessage
from tests.support.sms_rig import client

OFF = {
    "ip": {"enabled": False},
    "device": {"enabled": False},
    "segment": {"enabled": False},
    "conversion": {"enabled": False},
}
"""Per-number rules alone (the conversion layer's per-address taint would change answers between requests)."""


def shape(status: int, body: dict) -> tuple[int, dict]:
    return status, body


async def test_requests_are_answered_alike_whatever_is_known_of_the_phone(sms_factory, clock):
    policy = {**OFF, "phone": {"per_hour": 1}, "lists": {"block_phones": ["13900000004"]}}
    rig = await sms_factory(defaults=policy)
    await rig.app.otp("13900000002")
    await rig.app.otp("13900000003")
    clock.advance(61)
    answers = {
        "fresh": await rig.app.otp("13900000001"),
        "in its resend interval": await rig.app.otp("13900000001"),
        "over its hourly cap": await rig.app.otp("13900000003"),
        "blocked": await rig.app.otp("13900000004"),
    }
    clock.advance(30)
    answers["with a live code"] = await rig.app.otp("13900000002")
    assert len({repr(a) for a in answers.values()}) == 1, answers
    await rig.flush()
    assert [m.phone for m in rig.provider.sent] == ["13900000002", "13900000003", "13900000001"]


async def test_failed_verifications_are_alike(sms_factory, clock):
    rig = await sms_factory(defaults=OFF)
    for n in (2, 3, 4, 5):
        await rig.app.otp(f"1390000000{n}", client_info=client(n))
    await rig.flush()
    code = {m.phone: m.code for m in rig.provider.sent}
    wrong = {p: f"{(int(c) + 1) % 10**6:06d}" for p, c in code.items()}
    await rig.app.verify("13900000003", code["13900000003"])
    for _ in range(5):
        await rig.app.verify("13900000004", wrong["13900000004"])
    answers = {
        "no code": await rig.app.verify("13900000001", "123456"),
        "wrong code": await rig.app.verify("13900000002", wrong["13900000002"]),
        "used code": await rig.app.verify("13900000003", code["13900000003"]),
        "exhausted code": await rig.app.verify("13900000004", code["13900000004"]),
        "not even digits": await rig.app.verify("13900000002", "abc"),
    }
    clock.advance(301)
    answers["expired code"] = await rig.app.verify("13900000005", code["13900000005"])
    assert set(map(repr, answers.values())) == {repr((200, {"verified": False}))}, answers


class StalledProvider:
    """A provider that takes the message and does not return until released."""

    name = "stalled"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.taken: list[SmsMessage] = []

    async def send(self, message: SmsMessage) -> None:
        self.taken.append(message)
        await self.release.wait()

    async def close(self) -> None:
        self.release.set()


async def test_the_answer_never_waits_for_the_provider(tmp_path, keys, clock, api_factory):
    from gateway.runtime import start_gateway
    from tests.support.gateway_rig import MERCHANT
    from tests.support.memory_channel import MemoryChannel
    from tests.support.sms_rig import SmsApp, sms_gateway_config, sms_section

    provider = StalledProvider()
    cfg = sms_gateway_config(tmp_path, keys, f"sqlite+aiosqlite:///{tmp_path / 'g.sqlite3'}", sms_section(tmp_path))
    running = await start_gateway(
        cfg, channels={MERCHANT: MemoryChannel()}, his={}, run_workers=False, clock=clock, sms_provider=provider
    )
    try:
        app = SmsApp(api_factory(running))
        sent = await asyncio.wait_for(app.otp("13900000001"), timeout=60)
        dropped = await asyncio.wait_for(app.otp("13900000001"), timeout=60)
        assert sent == dropped and sent[0] == 200
        assert len(provider.taken) == 1 and not provider.release.is_set()
    finally:
        provider.release.set()
        await running.stop()
