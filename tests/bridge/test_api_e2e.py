"""The agent over real sockets: mutual TLS, signed calls, the journal and the sandbox HIS over SOAP."""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import aiohttp
import pytest

from bridge import protocol
from bridge.client import BridgeError
from sandbox.his.faults import FaultRule
from tests.support.rig import client_ssl, make_client, prepay

pytestmark = pytest.mark.system


def inject(his, **rule) -> None:
    his.faults.add(FaultRule.from_json(rule))


async def journal_counts(bridge) -> dict[str, int]:
    counts, _ = await bridge.agent.journal.stats()
    return {k: v for k, v in counts.items() if v}


async def raw_post(bridge, certs, path: str, body: bytes, *, key=None, headers=None, ssl_ctx=None):
    key = key or protocol.load_signing_key("platform", certs.platform_signing_key)
    signed = protocol.sign_request(key, "POST", path, body)
    signed.update(headers or {})
    signed["Content-Type"] = "application/json"
    async with (
        aiohttp.ClientSession() as session,
        session.post(bridge.api_url + path, data=body, headers=signed, ssl=ssl_ctx or client_ssl(certs)) as resp,
    ):
        return resp.status, await resp.json(content_type=None), resp.headers, signed


# --- the business path ---------------------------------------------------------------------------------------


async def test_registration_charge_refund_writeback(client, his):
    patient = await client.call("patient.query", {"card_no": "C0001"})
    assert patient.result["patient_id"] == "P0001" and patient.result["name"] == "张三"
    bills = (await client.call("bills.unpaid", {"patient_id": "P0001"})).result["bills"]
    assert {b["bill_no"]: b["amount_fen"] for b in bills} == {"B0001": 1250, "B0002": 8600}

    paid = {"channel": "wechat", "paid_at": "2026-11-25T09:30:00+08:00", "patient_id": "P0001"}
    reg = await client.call(
        "registration.commit",
        {
            "request_id": "req-reg-0001",
            "trade_no": "TR-REG-1",
            "schedule_id": "S001",
            "amount_fen": 1000,
            "channel_trade_no": "WX-REG-1",
            **paid,
        },
    )
    assert reg.status == "done" and reg.result["receipt_no"]

    charge = await client.call(
        "charge.commit",
        {
            "request_id": "req-chg-0001",
            "trade_no": "TR-CHG-1",
            "bill_nos": ["B0001", "B0002"],
            "amount_fen": 9850,
            "channel_trade_no": "WX-CHG-1",
            **paid,
        },
    )
    assert charge.status == "done", charge.body
    assert (await client.call("bills.unpaid", {"patient_id": "P0001"})).result["bills"] == []

    apply = await client.call(
        "refund.apply", {"request_id": "req-rfa-0001", "trade_no": "TR-CHG-1", "refund_no": "RF-1", "amount_fen": 1250}
    )
    assert apply.status == "done" and apply.result["refundable_fen"] == 9850
    back = await client.call(
        "refund.writeback",
        {
            "request_id": "req-rfw-0001",
            "trade_no": "TR-CHG-1",
            "refund_no": "RF-1",
            "amount_fen": 1250,
            "channel_refund_no": "WXR-1",
            "refunded_at": "2026-11-25T10:00:00+08:00",
        },
    )
    assert back.status == "done" and back.result["receipt_no"]

    check = await client.call("trade.check", {"trade_no": "TR-CHG-1", "operation": "charge.commit"})
    assert check.result["found"] is True and check.result["receipt_no"] == charge.result["receipt_no"]


async def test_his_refusal_is_a_failed_result_not_an_error(client, his):
    answer = await client.call(
        "charge.commit",
        {
            "request_id": "req-bad-amount",
            "trade_no": "TR-X",
            "patient_id": "P0001",
            "bill_nos": ["B0001"],
            "amount_fen": 1,
            "channel": "alipay",
            "channel_trade_no": "ALI-1",
            "paid_at": "2026-11-25T09:30:00+08:00",
        },
    )
    assert answer.http_status == 200 and answer.status == "failed"
    assert answer.error["code"] == "2003"
    assert his.state.application_count() == 0


async def test_status_endpoint_reports_the_journal_entry(client):
    done = await client.call("prepay.commit", prepay("T-STATUS"))
    status = await client.operation_status("req-T-STATUS")
    assert status.status == "done" and status.body["journal_id"] == done.body["journal_id"]
    assert status.result == done.result
    with pytest.raises(BridgeError) as e:
        await client.operation_status("req-never-sent")
    assert e.value.status == 404 and e.value.code == "not_found"


# --- idempotency and order -----------------------------------------------------------------------------------


async def test_same_request_id_same_body_returns_the_stored_outcome(client, his):
    first = await client.call("prepay.commit", prepay("T-IDEM"))
    again = await client.call("prepay.commit", prepay("T-IDEM"))
    assert again.body == first.body
    assert his.state.application_count(trade_no="T-IDEM") == 1


async def test_same_request_id_different_body_is_a_conflict(client, his):
    await client.call("prepay.commit", prepay("T-CONF"))
    with pytest.raises(BridgeError) as e:
        await client.call("prepay.commit", prepay("T-CONF", request_id="req-T-CONF", amount_fen=999))
    assert e.value.status == 409 and e.value.code == "request_conflict"
    assert his.state.application_count(trade_no="T-CONF") == 1


async def test_one_trade_runs_in_arrival_order_under_concurrency(client, his, bridge):
    inject(his, operation="*", mode="latency", latency_ms=20)
    calls = [
        client.call("prepay.commit", prepay("T-ORDER", request_id=f"req-order-{i:03d}", amount_fen=100 + i))
        for i in range(12)
    ]
    answers = await asyncio.gather(*calls)
    by_journal = sorted(answers, key=lambda a: a.body["journal_id"])
    receipts = [a.result["receipt_no"] for a in by_journal]
    applied = his.state.receipts_for("T-ORDER")
    assert applied == receipts  # the HIS saw them in journal order


# --- the HIS in doubt or down ----------------------------------------------------------------------------------


async def test_reply_dropped_after_commit_is_checked_not_resent(client, his):
    inject(his, operation="CommitPrepay", mode="drop_reply", count=1)
    answer = await client.call("prepay.commit", prepay("T-DOUBT"))
    assert answer.status == "done" and answer.result["receipt_no"]
    assert his.state.application_count(trade_no="T-DOUBT") == 1
    status = await client.operation_status("req-T-DOUBT")
    assert "trade.check found it applied" in (status.body.get("note") or "")


async def test_writes_queue_while_his_is_down_and_drain_in_order(bridge_factory, dev_certs, his):
    bridge = await bridge_factory(dispatch={"sync_deadline_s": 0.3, "breaker_failures": 2})
    inject(his, operation="*", mode="refuse")
    async with make_client(dev_certs, bridge.api_url) as client:
        pending = [
            await client.call("prepay.commit", prepay(f"T-DOWN-{i % 2}", request_id=f"req-down-{i:03d}"))
            for i in range(6)
        ]
        assert {a.http_status for a in pending} == {202} and {a.status for a in pending} == {"pending"}
        assert his.state.application_count() == 0
        his.faults.clear()
        finals = [await client.wait_for(a.body["request_id"], timeout_s=20, poll_s=0.1) for a in pending]
    assert {f.status for f in finals} == {"done"}
    for parity in (0, 1):
        mine = [f for i, f in enumerate(finals) if i % 2 == parity]  # sent in journal order
        assert his.state.receipts_for(f"T-DOWN-{parity}") == [f.result["receipt_no"] for f in mine]


# --- authentication ----------------------------------------------------------------------------------------------


async def test_mtls_without_certificate_is_refused(bridge, dev_certs):
    ctx = ssl.create_default_context(cafile=str(dev_certs.ca_cert))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.post(bridge.api_url + "/v1/ops/patient.query", data=b"{}", ssl=ctx) as resp:
                await resp.read()


async def test_mtls_with_certificate_from_another_ca_is_refused(bridge, dev_certs):
    ctx = client_ssl(dev_certs, cert=dev_certs.other_client_cert, key=dev_certs.other_client_key)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.post(bridge.api_url + "/v1/ops/patient.query", data=b"{}", ssl=ctx) as resp:
                await resp.read()


async def test_unpinned_identity_from_the_right_ca_is_refused(bridge, dev_certs):
    ctx = client_ssl(dev_certs, cert=dev_certs.rogue_client_cert, key=dev_certs.rogue_client_key)
    status, body, _, _ = await raw_post(bridge, dev_certs, "/v1/ops/patient.query", b'{"card_no":"C0001"}', ssl_ctx=ctx)
    assert status == 403 and body["error"]["code"] == "client_not_allowed"


async def test_spki_pin_admits_a_client(bridge_factory, dev_certs):
    from bridge import tls

    pin = tls.spki_sha256(tls.load_certificate(dev_certs.rogue_client_cert))
    bridge = await bridge_factory()
    bridge.agent.identity_policy = tls.IdentityPolicy.build([tls.AllowedClient(spki_sha256=pin)])
    ctx = client_ssl(dev_certs, cert=dev_certs.rogue_client_cert, key=dev_certs.rogue_client_key)
    status, body, _, _ = await raw_post(bridge, dev_certs, "/v1/ops/patient.query", b'{"card_no":"C0001"}', ssl_ctx=ctx)
    assert status == 200 and body["result"]["patient_id"] == "P0001"


@pytest.mark.parametrize(
    ("tamper", "status", "code"),
    [
        ("body", 401, "bad_signature"),
        ("wrong_key", 401, "bad_signature"),
        ("unknown_key", 401, "unknown_key"),
        ("stale", 401, "stale_timestamp"),
        ("unsigned", 401, "unsigned"),
    ],
)
async def test_bad_signatures_are_refused_and_nothing_is_journaled(bridge, dev_certs, his, tamper, status, code):
    body = json.dumps(prepay("T-SIG")).encode()
    path = "/v1/ops/prepay.commit"
    key = protocol.load_signing_key("platform", dev_certs.platform_signing_key)
    headers = protocol.sign_request(key, "POST", path, body)
    if tamper == "body":
        body = body.replace(b"100", b"900")
    elif tamper == "wrong_key":
        headers = protocol.sign_request(protocol.generate_ed25519("platform"), "POST", path, body)
    elif tamper == "unknown_key":
        headers = protocol.sign_request(protocol.generate_ed25519("intruder"), "POST", path, body)
    elif tamper == "stale":
        headers = protocol.sign_request(key, "POST", path, body, timestamp=int(time.time()) - 3600)
    elif tamper == "unsigned":
        headers = {}
    headers["Content-Type"] = "application/json"
    async with (
        aiohttp.ClientSession() as session,
        session.post(bridge.api_url + path, data=body, headers=headers, ssl=client_ssl(dev_certs)) as resp,
    ):
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == code
    assert await journal_counts(bridge) == {}
    assert his.state.application_count() == 0


async def test_replayed_nonce_is_refused_also_after_restart(bridge_factory, dev_certs, tmp_path):
    journal = tmp_path / "replay.sqlite3"
    bridge = await bridge_factory(journal=journal)
    body = b'{"card_no":"C0001"}'
    status, _, _, headers = await raw_post(bridge, dev_certs, "/v1/ops/patient.query", body)
    assert status == 200
    replay = {k: v for k, v in headers.items() if k.startswith("X-HB")}
    status, answer, _, _ = await raw_post(bridge, dev_certs, "/v1/ops/patient.query", body, headers=replay)
    assert status == 409 and answer["error"]["code"] == "replayed_nonce"
    await bridge.stop()
    restarted = await bridge_factory(journal=journal)
    status, answer, _, _ = await raw_post(restarted, dev_certs, "/v1/ops/patient.query", body, headers=replay)
    assert status == 409 and answer["error"]["code"] == "replayed_nonce"


async def test_responses_are_signed_over_the_request_nonce(bridge, dev_certs):
    status, body, headers, sent = await raw_post(bridge, dev_certs, "/v1/ops/patient.query", b'{"card_no":"C0001"}')
    bridge_key = protocol.load_verify_key("bridge-H001", dev_certs.bridge_signing_pub)
    raw = json.dumps(body, ensure_ascii=False).encode()
    protocol.verify_response(bridge_key, status, sent[protocol.HEADER_NONCE], headers, raw)
    with pytest.raises(protocol.EnvelopeError):
        protocol.verify_response(bridge_key, status, "another-nonce-0000", headers, raw)


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/ops/prepay.commit", b'{"request_id": ', 400, "malformed_json"),
        ("/v1/ops/prepay.commit", b"[1, 2]", 400, "malformed_json"),
        ("/v1/ops/prepay.commit", b"\xff\xfe", 400, "malformed_json"),
        ("/v1/ops/sql.exec", b'{"sql": "DROP TABLE patients"}', 404, "unknown_operation"),
        (
            "/v1/ops/prepay.commit",
            json.dumps({**prepay("T-SCHEMA"), "amount_fen": 12.5}).encode(),
            422,
            "schema_violation",
        ),
        (
            "/v1/ops/prepay.commit",
            json.dumps({**prepay("T-SCHEMA"), "amount_fen": -1}).encode(),
            422,
            "schema_violation",
        ),
        (
            "/v1/ops/prepay.commit",
            json.dumps({**prepay("T-SCHEMA"), "amount_fen": "100"}).encode(),
            422,
            "schema_violation",
        ),
        ("/v1/ops/prepay.commit", json.dumps({**prepay("T-SCHEMA"), "extra": 1}).encode(), 422, "schema_violation"),
        (
            "/v1/ops/prepay.commit",
            json.dumps({**prepay("T-SCHEMA"), "trade_no": "x" * 65}).encode(),
            422,
            "schema_violation",
        ),
        (
            "/v1/ops/prepay.commit",
            json.dumps({**prepay("T-SCHEMA"), "channel": "paypal"}).encode(),
            422,
            "schema_violation",
        ),
        (
            "/v1/ops/prepay.commit",
            json.dumps({k: v for k, v in prepay("T-SCHEMA").items() if k != "request_id"}).encode(),
            422,
            "schema_violation",
        ),
        ("/v1/ops/patient.query", b"{}", 422, "schema_violation"),
        ("/v1/ops/prepay.commit", b'{"pad": "' + b"x" * 70_000 + b'"}', 413, "body_too_large"),
    ],
)
async def test_bad_input_is_refused_clearly_and_nothing_is_half_written(
    bridge, dev_certs, his, path, body, status, code
):
    got, answer, _, _ = await raw_post(bridge, dev_certs, path, body)
    assert (got, answer["error"]["code"]) == (status, code)
    assert answer["error"]["message"]
    assert await journal_counts(bridge) == {}
    assert his.state.application_count() == 0


async def test_schema_violation_names_the_field(bridge, dev_certs):
    body = json.dumps({**prepay("T-SCHEMA"), "amount_fen": 12.5}).encode()
    _, answer, _, _ = await raw_post(bridge, dev_certs, "/v1/ops/prepay.commit", body)
    assert [d["field"] for d in answer["error"]["details"]] == ["amount_fen"]


async def test_per_client_concurrency_limit(bridge_factory, dev_certs, his):
    bridge = await bridge_factory(server={"per_client_concurrency": 2})
    inject(his, operation="QueryPatient", mode="latency", latency_ms=300)
    async with make_client(dev_certs, bridge.api_url, retries=0) as client:
        results = await asyncio.gather(
            *[client.call("patient.query", {"card_no": "C0001"}) for _ in range(5)], return_exceptions=True
        )
    refused = [r for r in results if isinstance(r, BridgeError)]
    assert len(refused) == 3 and {r.code for r in refused} == {"too_many_requests"}


# --- operations endpoints ----------------------------------------------------------------------------------------


async def test_ops_listener_health_ready_metrics_openapi(bridge, client):
    await client.call("prepay.commit", prepay("T-MET"))
    await bridge.agent.refresh_gauges()
    async with aiohttp.ClientSession() as session:
        async with session.get(bridge.ops_url + "/healthz") as r:
            assert r.status == 200
        async with session.get(bridge.ops_url + "/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with session.get(bridge.ops_url + "/metrics") as r:
            text = await r.text()
        async with session.get(bridge.ops_url + "/openapi.json") as r:
            doc = await r.json()
    assert 'hisbridge_journal_entries{state="done"} 1.0' in text
    assert "hisbridge_journal_commit_duration_seconds_bucket" in text
    assert "hisbridge_his_calls_total{endpoint=" in text
    assert set(doc["paths"]) >= {"/v1/ops/charge.commit", "/v1/ops/trade.check", "/v1/operations/{request_id}"}
    amount = doc["components"]["schemas"]["PrepayCommitIn"]["properties"]["amount_fen"]
    assert amount["type"] == "integer" and amount["exclusiveMinimum"] == 0


async def test_not_ready_until_recovery_completes(bridge_factory, dev_certs):
    bridge = await bridge_factory()
    bridge.agent.ready = False
    status, body, _, _ = await raw_post(bridge, dev_certs, "/v1/ops/patient.query", b'{"card_no":"C0001"}')
    assert status == 503 and body["error"]["code"] == "not_ready"
    async with aiohttp.ClientSession() as session, session.get(bridge.ops_url + "/readyz") as r:
        assert r.status == 503


async def test_agent_starts_while_the_his_is_down_and_delivers_when_it_comes_up(tmp_path, dev_certs):
    from bridge.config import load_config
    from bridge.server import start_agent
    from sandbox.cli import start_sandbox_his
    from tests.support.rig import bridge_config_toml, free_port

    port = free_port()
    config = tmp_path / "down.toml"
    config.write_text(
        bridge_config_toml(
            dev_certs, tmp_path / "down.sqlite3", f"http://127.0.0.1:{port}", dispatch={"sync_deadline_s": 0.3}
        )
    )
    bridge = await start_agent(load_config(config))
    try:
        async with make_client(dev_certs, bridge.api_url) as client:
            pending = await client.call("prepay.commit", prepay("T-LATE"))
            assert pending.http_status == 202
            his = await start_sandbox_his(port=port, db_path=tmp_path / "late-his.sqlite3")
            try:
                final = await client.wait_for("req-T-LATE", timeout_s=15, poll_s=0.1)
                assert final.status == "done"
                assert his.state.application_count(trade_no="T-LATE") == 1
            finally:
                await his.close()
    finally:
        await bridge.stop()


@pytest.mark.parametrize("body", [json.dumps(prepay("T-REPLAY-W")).encode(), b'{"broken": '])
async def test_a_write_spends_its_nonce_even_when_refused(bridge, dev_certs, his, body):
    status, _, _, headers = await raw_post(bridge, dev_certs, "/v1/ops/prepay.commit", body)
    assert status in (200, 400)
    replay = {k: v for k, v in headers.items() if k.startswith("X-HB")}
    status, answer, _, _ = await raw_post(bridge, dev_certs, "/v1/ops/prepay.commit", body, headers=replay)
    assert (status, answer["error"]["code"]) == (409, "replayed_nonce")
    assert his.state.application_count() <= 1
