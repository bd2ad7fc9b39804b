"""Races on one phone, on SQLite and PostgreSQL: concurrent requests send one SMS (the resend interval is
claimed in the code's transaction), and concurrent right answers verify once."""

from __future__ import annotations

import asyncio

from tests.support.sms_rig import client

PHONE = "13900000001"


async def test_concurrent_requests_send_once_and_verify_once(sms_factory, db_url):
    rig = await sms_factory(db_url, defaults={"segment": {"enabled": False}})
    answers = await asyncio.gather(*(rig.app.otp(PHONE, client_info=client(n)) for n in range(8)))
    assert {status for status, _ in answers} == {200}
    assert await rig.sent_to(PHONE) == 1
    code = rig.provider.to(PHONE)[0].code
    verdicts = await asyncio.gather(*(rig.app.verify(PHONE, code) for _ in range(6)))
    assert sorted(body["verified"] for _, body in verdicts) == [False] * 5 + [True]
