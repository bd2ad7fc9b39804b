"""The business API trusts only requests its apps signed, each once, and signs every answer."""

from __future__ import annotations

import time

import aiohttp
import pytest

from bridge import protocol
from tests.support.gateway_rig import order_body


@pytest.fixture
async def api(gateway_factory, api_factory, sqlite_url):
    running = await gateway_factory(sqlite_url)
    return running, api_factory(running)


async def test_a_signed_request_is_served_and_the_answer_is_signed(api):
    _, client = api
    status, body = await client.call("POST", "/v1/orders", order_body("A1"))
    assert status == 201 and body["order"]["status"] == "paying"
    assert body["order"]["pay_params"]["code_url"].startswith("mem://")


async def test_a_bad_signature_is_refused(api, keys):
    _, client = api
    raw = b"{}"
    headers = protocol.sign_request(keys.app, "POST", "/v1/orders", b'{"other": 1}')
    async with client.session.post(client.base_url + "/v1/orders", data=raw, headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "bad_signature"


async def test_a_key_the_gateway_does_not_know_is_refused(api, keys):
    _, client = api
    impostor = protocol.generate_ed25519("kiosk-1")
    headers = protocol.sign_request(impostor, "GET", "/v1/orders", b"")
    status, body = await client.call("GET", "/v1/orders", headers=headers)
    assert status == 401 and body["error"]["code"] == "bad_signature"
    headers = protocol.sign_request(protocol.generate_ed25519("nobody"), "GET", "/v1/orders", b"")
    status, body = await client.call("GET", "/v1/orders", headers=headers)
    assert status == 401 and body["error"]["code"] == "unknown_key"


async def test_a_replayed_request_is_refused_even_by_another_instance(gateway_factory, api_factory, sqlite_url, keys):
    first = await gateway_factory(sqlite_url)
    second = await gateway_factory(sqlite_url)
    headers = protocol.sign_request(keys.app, "GET", "/v1/orders", b"")
    status, _ = await api_factory(first).call("GET", "/v1/orders", headers=headers)
    assert status == 200
    status, body = await api_factory(first).call("GET", "/v1/orders", headers=headers)
    assert status == 409 and body["error"]["code"] == "replayed_nonce"
    status, body = await api_factory(second).call("GET", "/v1/orders", headers=headers)
    assert status == 409 and body["error"]["code"] == "replayed_nonce"


async def test_a_stale_timestamp_is_refused(api, keys):
    _, client = api
    headers = protocol.sign_request(keys.app, "GET", "/v1/orders", b"", timestamp=int(time.time()) - 3600)
    status, body = await client.call("GET", "/v1/orders", headers=headers)
    assert status == 401 and body["error"]["code"] == "stale_timestamp"


async def test_an_unsigned_request_is_refused(api):
    running, _ = api
    async with aiohttp.ClientSession() as session, session.get(running.url + "/v1/orders") as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "unsigned"


async def test_an_order_is_checked_against_the_his_commit_schema_before_anyone_pays(api):
    _, client = api
    status, body = await client.call("POST", "/v1/orders", order_body("A2", business_type="charge"))
    assert status == 422 and "bill_nos" in str(body)
    status, body = await client.call("POST", "/v1/orders", order_body("A3", amount_fen=1.5))
    assert status == 422


async def test_the_same_business_order_no_is_one_order(api):
    _, client = api
    status, first = await client.call("POST", "/v1/orders", order_body("A4"))
    status2, again = await client.call("POST", "/v1/orders", order_body("A4"))
    assert (status, status2) == (201, 200)
    assert again["order"]["out_trade_no"] == first["order"]["out_trade_no"]
    status, body = await client.call("POST", "/v1/orders", order_body("A4", amount_fen=999))
    assert status == 409 and body["error"]["code"] == "order_conflict"
