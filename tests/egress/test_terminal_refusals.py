"""Every way a terminal request is refused, each with its own error code — and in every case nothing is
journaled and nothing reaches the gateway."""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

import aiohttp
import pytest

from bridge import terminal_protocol
from tests.support.egress_rig import (
    CERT_KIOSK,
    FAR_KIOSK,
    KIOSK,
    OFF_KIOSK,
    WINDOW,
    egress_rig,
    intranet_ssl,
    pay_body,
)


async def raw(
    rig: Any,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    ctx: ssl.SSLContext | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A request exactly as given (no signing, no answer check): what an attacker or a broken terminal sends."""
    connector = aiohttp.TCPConnector(ssl=ctx or intranet_ssl(rig.certs))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(
            method, rig.intranet_url + path, data=body, headers={**headers, "Content-Type": "application/json"}
        ) as resp,
    ):
        data = await resp.read()
        return resp.status, {**json.loads(data), "_raw": data}, dict(resp.headers)


def signed(terminal: str, key: bytes, path: str, body: bytes, **kwargs: Any) -> dict[str, str]:
    return terminal_protocol.sign_request(terminal, key, "POST", path, body, **kwargs)


async def nothing_forwarded(rig: Any, journaled: int = 0) -> None:
    assert len(rig.egress_rows()) == journaled
    assert await rig.gateway_rows("orders") == []
    assert await rig.gateway_rows("refunds") == []


PAY = "/v1/terminal/pay.codepay"


def body_of(**extra: Any) -> bytes:
    return json.dumps(pay_body("REFUSED-0001", auth_code="134567890123456789", **extra)).encode()


async def test_each_refusal_has_its_own_code_and_forwards_nothing(rig):
    kiosk_key, window_key = rig.keys.kiosk, rig.keys.window
    body = body_of()
    cases: list[tuple[str, int, str, bytes, dict[str, str]]] = [
        ("no terminal named, no certificate", 401, "unsigned", body, {}),
        ("unknown terminal", 401, "unknown_terminal", body, signed("NOBODY", kiosk_key, PAY, body)),
        ("malformed terminal id", 401, "unknown_terminal", body, {terminal_protocol.HEADER_TERMINAL: "bad id!"}),
        ("terminal called from an address not its own", 403, "address_not_allowed", body,
         signed(FAR_KIOSK, kiosk_key, PAY, body)),
        ("a disabled terminal", 403, "terminal_disabled", body, signed(OFF_KIOSK, kiosk_key, PAY, body)),
        ("signed with another terminal's key", 401, "bad_signature", body, signed(KIOSK, window_key, PAY, body)),
        ("body changed after signing", 401, "bad_signature", body_of(amount_fen=1),
         signed(KIOSK, kiosk_key, PAY, body)),
        ("timestamp far in the past", 401, "stale_timestamp", body,
         signed(KIOSK, kiosk_key, PAY, body, timestamp=int(time.time()) - 3600)),
        ("timestamp not a number", 401, "bad_timestamp", body,
         {**signed(KIOSK, kiosk_key, PAY, body), terminal_protocol.HEADER_TIMESTAMP: "soon"}),
        ("nonce too short", 401, "bad_nonce", body, signed(KIOSK, kiosk_key, PAY, body, nonce="short")),
        ("a certificate terminal without its certificate", 401, "client_certificate_required", body,
         signed(CERT_KIOSK, kiosk_key, PAY, body)),
    ]  # fmt: skip
    for what, status, code, payload, headers in cases:
        got, answer, _ = await raw(rig, PAY, payload, headers)
        assert (got, answer["error"]["code"]) == (status, code), (what, answer)
    await nothing_forwarded(rig)


async def test_refusals_after_authentication_are_signed_and_forward_nothing(rig):
    kiosk = rig.terminal(KIOSK)
    window = rig.terminal(WINDOW)
    refund = {"request_id": "REFUND-0001", "out_trade_no": "P1", "amount_fen": 1, "his_refund_no": "TF1"}
    cases: list[tuple[str, Any, str, dict[str, Any], int, str]] = [
        ("a kiosk may not refund", kiosk, "refund", refund, 403, "operation_not_allowed"),
        ("a window may not show a QR code", window, "pay.qr", {**pay_body("QR-000001"), "channel": "wechat"}, 403,
         "operation_not_allowed"),
        ("no such operation", kiosk, "pay.steal", {}, 404, "unknown_operation"),
        ("money as a float", kiosk, "pay.codepay", {**pay_body("FLOAT-0001", auth_code="134567890123456789"),
                                                   "amount_fen": 10.5}, 422, "schema_violation"),
        ("unknown field", kiosk, "pay.codepay", {**pay_body("EXTRA-0001", auth_code="134567890123456789"),
                                                "discount": 1}, 422, "schema_violation"),
        ("a 付款码 of no known wallet", kiosk, "pay.codepay", pay_body("CODE-00001", auth_code="9912345678901234"),
         422, "schema_violation"),
        ("a charge without bills", kiosk, "pay.codepay", {**pay_body("BILLS-0001", auth_code="134567890123456789"),
                                                         "business_type": "charge"}, 422, "schema_violation"),
        ("over the per-payment limit", kiosk, "pay.codepay",
         pay_body("LIMIT-0001", amount_fen=500_001, auth_code="134567890123456789"), 422, "over_payment_limit"),
        ("query of a payment this terminal never made", kiosk, "pay.query", {"request_id": "NEVER-0001"}, 404,
         "not_found"),
    ]  # fmt: skip
    for what, terminal, operation, body, status, code in cases:
        got, answer = await terminal.call(operation, body)  # the client checks the agent's HMAC on the answer
        assert (got, answer["error"]["code"]) == (status, code), (what, answer)
    status, answer = await kiosk.send("POST", "/v1/terminal/pay.codepay", None)
    assert (status, answer["error"]["code"]) == (400, "malformed_json")
    big = json.dumps({"pad": "x" * 20_000}).encode()
    status, answer, headers = await raw(rig, PAY, big, signed(KIOSK, rig.keys.kiosk, PAY, big))
    assert (status, answer["error"]["code"]) == (413, "body_too_large")
    assert terminal_protocol.HEADER_SIGNATURE not in headers, "an unread body cannot be authenticated"
    await nothing_forwarded(rig)


async def test_a_replayed_request_is_refused_even_after_it_succeeded(rig):
    kiosk = rig.terminal(KIOSK)
    code = await rig.admin.code("wechat", "pays")
    body = json.dumps(pay_body("REPLAY-0001", auth_code=code)).encode()
    headers = signed(KIOSK, rig.keys.kiosk, PAY, body)
    status, answer, reply = await raw(rig, PAY, body, headers)
    assert (status, answer["status"]) == (200, "paid")
    nonce = headers[terminal_protocol.HEADER_NONCE]
    terminal_protocol.verify_response(rig.keys.kiosk, status, nonce, reply, answer["_raw"])
    with pytest.raises(terminal_protocol.EnvelopeError):
        tampered = answer["_raw"].replace(b"paid", b"pa1d")
        terminal_protocol.verify_response(rig.keys.kiosk, status, nonce, reply, tampered)
    status, answer, _ = await raw(rig, PAY, body, headers)
    assert (status, answer["error"]["code"]) == (409, "replayed_nonce")
    query = json.dumps({"request_id": "REPLAY-0001"}).encode()
    query_headers = signed(KIOSK, rig.keys.kiosk, "/v1/terminal/pay.query", query)
    assert (await raw(rig, "/v1/terminal/pay.query", query, query_headers))[0] == 200
    status, answer, _ = await raw(rig, "/v1/terminal/pay.query", query, query_headers)
    assert (status, answer["error"]["code"]) == (409, "replayed_nonce")
    assert len(await rig.gateway_rows("orders")) == 1
    assert len(await rig.admin.trades()) == 1
    status, answer = await kiosk.call("pay.codepay", pay_body("REPLAY-0001", amount_fen=999, auth_code=code))
    assert (status, answer["error"]["code"]) == (409, "request_conflict")
    assert len(rig.egress_rows()) == 1


async def test_a_certificate_terminal_pays_and_a_foreign_certificate_is_refused(rig):
    kiosk = rig.terminal(CERT_KIOSK, cert=True)
    code = await rig.admin.code("alipay", "pays")
    status, answer = await kiosk.call("pay.codepay", pay_body("CERT-00001", auth_code=code))
    assert (status, answer["status"], answer["channel"]) == (200, "paid", "alipay")
    foreign = intranet_ssl(rig.certs)
    foreign.load_cert_chain(str(rig.certs.other_client_cert), str(rig.certs.other_client_key))
    with pytest.raises(aiohttp.ClientError):
        await raw(rig, PAY, b"{}", {}, ctx=foreign)
    assert [o.terminal_id for o in await rig.gateway_rows("orders")] == [CERT_KIOSK]


async def test_the_daily_limit_counts_what_was_taken_not_what_was_refused(tmp_path, dev_certs, channel_keys, his):
    limits = "max_payment_fen = 5000\nmax_daily_fen = 12000"
    async with egress_rig(tmp_path, dev_certs, channel_keys, his, limits=limits) as rig:
        kiosk = rig.terminal(KIOSK)

        async def pay(request_id: str, payer: str) -> dict[str, Any]:
            code = await rig.admin.code("wechat", payer)
            return (await kiosk.call("pay.codepay", pay_body(request_id, amount_fen=5000, auth_code=code)))[1]

        assert (await pay("DAY-000001", "pays"))["status"] == "paid"
        assert (await pay("DAY-000002", "expired"))["status"] == "failed"
        assert (await pay("DAY-000003", "pays"))["status"] == "paid"
        refused = await pay("DAY-000004", "pays")
        assert refused["error"]["code"] == "over_daily_limit", refused
        assert "10000 fen so far" in refused["error"]["message"]
        assert [r["request_id"] for r in rig.egress_rows()] == ["DAY-000001", "DAY-000002", "DAY-000003"]
        assert len(await rig.gateway_rows("orders")) == 3
