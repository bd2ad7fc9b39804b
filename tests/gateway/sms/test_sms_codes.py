"""Codes: drawn from the CSPRNG, stored only as an HMAC (and sealed), five minutes of life, five guesses, the
live code re-sent instead of a new one, good once."""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.sms_tables import sms_codes

PHONE = "13800138000"


async def code_of(rig, phone: str = PHONE) -> str:
    await rig.flush()
    return rig.provider.to(phone)[-1].code


async def test_a_code_is_sent_and_verifies_once(sms, clock):
    rig = sms
    status, body = await rig.app.otp(PHONE)
    assert (status, body) == (200, {"status": "sent", "resend_after_s": 60, "expires_in_s": 300})
    await rig.flush()
    [message] = rig.provider.to(PHONE)
    assert message.code.isdigit() and len(message.code) == 6 and message.purpose == "binding"
    assert await rig.app.verify(PHONE, "000000" if message.code != "000000" else "111111") == (200, {"verified": False})
    assert await rig.app.verify(PHONE, message.code) == (200, {"verified": True})
    assert await rig.app.verify(PHONE, message.code) == (200, {"verified": False})
    assert await rig.app.verify(PHONE, message.code, purpose="payment") == (200, {"verified": False})


async def test_neither_phone_nor_code_is_stored_in_the_clear(sms):
    rig = sms
    await rig.app.otp("+86 138-0013-8000")
    await rig.flush()
    code = rig.provider.to(PHONE)[0].code
    async with rig.running.svc.db.read() as conn:
        [row] = (await conn.execute(sa.select(sms_codes))).all()
    stored = " ".join(str(v) for v in row)
    assert PHONE not in stored and code not in row.code_hash and code not in row.code_sealed
    assert row.phone_masked == "138****8000"


async def test_the_live_code_is_reused_until_it_expires(sms_factory, clock):
    rig = await sms_factory()
    await rig.app.otp(PHONE)
    clock.advance(61)
    await rig.app.otp(PHONE)
    clock.advance(61)
    await rig.app.otp(PHONE)
    await rig.flush()
    codes = [m.code for m in rig.provider.to(PHONE)]
    assert len(codes) == 3 and len(set(codes)) == 1
    clock.advance(300 - 122 + 1)
    assert await rig.app.verify(PHONE, codes[0]) == (200, {"verified": False}), "five minutes from when it was drawn"
    await rig.app.otp(PHONE)
    await rig.flush()
    fresh = rig.provider.to(PHONE)[-1].code
    assert len(rig.provider.to(PHONE)) == 4
    assert await rig.app.verify(PHONE, fresh) == (200, {"verified": True})


async def test_five_wrong_guesses_kill_the_code(sms, clock):
    rig = sms
    await rig.app.otp(PHONE)
    await rig.flush()
    code = await code_of(rig)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(5):
        assert await rig.app.verify(PHONE, wrong) == (200, {"verified": False})
    assert await rig.app.verify(PHONE, code) == (200, {"verified": False})
    clock.advance(61)
    await rig.app.otp(PHONE)
    await rig.flush()
    again = await code_of(rig)
    assert await rig.app.verify(PHONE, again) == (200, {"verified": True})


async def test_codes_are_uniform_digits():
    from collections import Counter

    from gateway.sms.codes import draw

    digits = Counter("".join(draw(6) for _ in range(4000)))
    assert set(digits) == set("0123456789")
    assert all(1900 < n < 2900 for n in digits.values()), digits
