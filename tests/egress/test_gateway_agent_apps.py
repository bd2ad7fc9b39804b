"""The gateway's side of the second direction: only the hospital's agent app, over mutual TLS with its own client
certificate, may name terminals or start window refunds; a caller's request id finds only that caller's order."""

from __future__ import annotations

import json
import ssl

import aiohttp

from bridge import protocol, tls
from tests.support.egress_rig import pay_body, today


async def signed_call(rig, url: str, key: protocol.SigningKey, method: str, path: str, body=None, *, ctx=None):
    raw = json.dumps(body).encode() if body is not None else b""
    headers = {**protocol.sign_request(key, method, path, raw), "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url + path, data=raw, headers=headers) as resp,
    ):
        data = await resp.read()
        nonce = headers[protocol.HEADER_NONCE]
        protocol.verify_response(rig.keys.gateway.public(), resp.status, nonce, resp.headers, data)
        return resp.status, json.loads(data)


def mtls(rig, cert, key) -> ssl.SSLContext:
    return tls.client_context(rig.certs.ca_cert, cert, key)


def order(no: str, **extra) -> dict:
    return {
        "business_order_no": no, "business_type": "prepay", "scene": "native", "channel": "wechat",
        "amount_fen": 100, "subject": "住院预交金", "patient_id": "P0003", "inpatient_no": "Z0001", **extra,
    }  # fmt: skip


async def test_only_the_agent_over_its_own_certificate_speaks_for_terminals(rig):
    agent, phone = rig.keys.agent_app, rig.keys.phone_app
    plain, secure = rig.gateway.url, rig.gateway.mtls_url
    egress = mtls(rig, rig.certs.egress_client_cert, rig.certs.egress_client_key)
    other_cert = mtls(rig, rig.certs.client_cert, rig.certs.client_key)
    body = order("T-ORDER-1", terminal_id="KIOSK-01", origin="terminal", request_id="KIOSK-01:T1")

    status, answer = await signed_call(rig, plain, agent, "POST", "/v1/orders", body)
    assert (status, answer["error"]["code"]) == (403, "client_not_allowed"), "the agent's key alone is not enough"
    status, answer = await signed_call(rig, secure, agent, "POST", "/v1/orders", body, ctx=other_cert)
    assert (status, answer["error"]["code"]) == (403, "client_not_allowed"), "nor another platform certificate"
    status, answer = await signed_call(rig, secure, phone, "POST", "/v1/orders", body, ctx=egress)
    assert (status, answer["error"]["code"]) == (403, "not_an_agent")
    refund = {"business_refund_no": "W-1", "out_trade_no": "P1", "amount_fen": 1, "his_refund_no": "TF1",
              "terminal_id": "WIN-01"}  # fmt: skip
    status, answer = await signed_call(rig, plain, phone, "POST", "/v1/window-refunds", refund)
    assert (status, answer["error"]["code"]) == (403, "not_an_agent")
    assert await rig.gateway_rows("orders") == [] and await rig.gateway_rows("refunds") == []

    status, answer = await signed_call(rig, secure, agent, "POST", "/v1/orders", body, ctx=egress)
    assert status == 201 and answer["order"]["origin"] == "terminal" and answer["order"]["terminal_id"] == "KIOSK-01"
    status, found = await signed_call(rig, secure, agent, "GET", "/v1/requests/KIOSK-01:T1", ctx=egress)
    assert status == 200 and found["order"]["out_trade_no"] == answer["order"]["out_trade_no"]
    status, missing = await signed_call(rig, plain, phone, "GET", "/v1/requests/KIOSK-01:T1")
    assert (status, missing["error"]["code"]) == (404, "request_not_found"), "another app's request id finds nothing"
    again = order("T-ORDER-2", terminal_id="KIOSK-01", origin="terminal", request_id="KIOSK-01:T1")
    status, answer = await signed_call(rig, secure, agent, "POST", "/v1/orders", again, ctx=egress)
    assert (status, answer["error"]["code"]) == (409, "request_conflict")


async def test_a_kiosk_payment_is_listed_for_the_end_of_shift_count(rig):
    kiosk = rig.terminal()
    code = await rig.admin.code("alipay", "pays")
    _, paid = await kiosk.call("pay.codepay", pay_body("SHIFT-0001", amount_fen=1_800, auth_code=code))
    _, declined = await kiosk.call(
        "pay.codepay", pay_body("SHIFT-0002", amount_fen=900, auth_code=await rig.admin.code("alipay", "expired"))
    )
    assert (paid["status"], declined["status"]) == ("paid", "failed")
    _, day = await kiosk.call("transactions", {"date": today().isoformat()})
    assert day["terminal_id"] == "KIOSK-01" and len(day["orders"]) == 2
    assert day["totals"]["paid_count"] == 1 and day["totals"]["paid_fen"] == 1_800
    assert day["totals"]["by_channel"]["alipay"]["paid_fen"] == 1_800 and day["totals"]["net_fen"] == 1_800
    _, other_day = await kiosk.call("transactions", {"date": "2020-01-01"})
    assert other_day["orders"] == [] and other_day["totals"]["paid_fen"] == 0
