"""The agent as an attacker and a fuzzer found it (issue 15, items 1-4, 10, 11): refusals that are clean
answers, one contract for what is accepted and what is answered, failures before the wire that are final, and
callers that cannot act as one another."""

from __future__ import annotations

import json

import aiohttp
import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bridge import openapi, protocol
from bridge.config import ConfigError, load_config
from bridge.server import start_agent
from bridge.version import agent_version
from tests.support.rig import bridge_config_toml, client_ssl, prepay

DOCUMENT = openapi.build(agent_version())


def answer_validator(schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator for one of the document's component schemas, resolving its references inside it."""
    resource = Resource.from_contents({"components": DOCUMENT["components"]}, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:agent", resource)
    return jsonschema.Draft202012Validator(
        {"$ref": f"urn:agent#/components/schemas/{schema_name}"},
        registry=registry,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


async def post(bridge, certs, path: str, body: bytes, *, key=None, headers=None, ssl_ctx=None):
    key = key or protocol.load_signing_key("platform", certs.platform_signing_key)
    signed = protocol.sign_request(key, "POST", path, body)
    signed.update(headers or {})
    signed["Content-Type"] = "application/json"
    async with (
        aiohttp.ClientSession() as session,
        session.post(bridge.api_url + path, data=body, headers=signed, ssl=ssl_ctx or client_ssl(certs)) as resp,
    ):
        return resp.status, await resp.json(content_type=None), signed


async def get(bridge, certs, path: str, *, key=None, ssl_ctx=None):
    key = key or protocol.load_signing_key("platform", certs.platform_signing_key)
    signed = protocol.sign_request(key, "GET", path, b"")
    async with (
        aiohttp.ClientSession() as session,
        session.get(bridge.api_url + path, headers=signed, ssl=ssl_ctx or client_ssl(certs)) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def journaled(bridge) -> int:
    counts, _ = await bridge.agent.journal.stats()
    return sum(counts.values())


# --- item 1: deep nesting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/ops/prepay.commit", "/v1/ops/patient.query"])
async def test_a_deeply_nested_body_is_malformed_json_and_a_write_still_spends_its_nonce(bridge, dev_certs, path):
    body = b"[" * 5000 + b"]" * 5000
    status, answer, sent = await post(bridge, dev_certs, path, body)
    assert (status, answer["error"]["code"]) == (400, "malformed_json")
    assert "nested" in answer["error"]["message"]
    replay = {k: v for k, v in sent.items() if k.startswith("X-HB")}
    status, answer, _ = await post(bridge, dev_certs, path, body, headers=replay)
    assert (status, answer["error"]["code"]) == (409, "replayed_nonce")
    assert await journaled(bridge) == 0


# --- item 2: the published schema, exactly -------------------------------------------------------------------


@pytest.mark.parametrize(
    "paid_at",
    [1767225600, "1767225600", "2026-01-01", "2026-01-01T08:30:00", "2026-01-01 08:30:00+08:00", None, 1.5],
)
async def test_an_instant_is_an_rfc3339_string_with_its_offset_or_refused(bridge, dev_certs, his, paid_at):
    body = json.dumps({**prepay("T-TIME"), "paid_at": paid_at}).encode()
    status, answer, _ = await post(bridge, dev_certs, "/v1/ops/prepay.commit", body)
    assert (status, answer["error"]["code"]) == (422, "schema_violation")
    assert [d["field"] for d in answer["error"]["details"]] == ["paid_at"]
    assert "RFC 3339" in answer["error"]["details"][0]["problem"] or paid_at is None
    assert await journaled(bridge) == 0 and his.state.application_count() == 0


@pytest.mark.parametrize(
    ("operation", "body"),
    [
        ("recon.fetch", {"date": 20260101}),
        ("recon.fetch", {"date": "2026-01-01T00:00:00+08:00"}),
        ("recon.fetch", {"date": "2026-01-01", "page": "2"}),
        ("recon.fetch", {"date": "2026-01-01", "page_size": 10.0}),
        ("trade.check", {"trade_no": "T1", "operation": "anything at all"}),
    ],
)
async def test_reads_are_validated_as_strictly_as_published(bridge, dev_certs, operation, body):
    status, answer, _ = await post(bridge, dev_certs, f"/v1/ops/{operation}", json.dumps(body).encode())
    assert (status, answer["error"]["code"]) == (422, "schema_violation")


def test_the_published_request_schemas_say_what_is_refused():
    schemas = DOCUMENT["components"]["schemas"]
    paid_at = schemas["PrepayCommitIn"]["properties"]["paid_at"]
    assert paid_at["type"] == "string" and paid_at["format"] == "date-time"
    assert paid_at["pattern"].startswith("^") and paid_at["pattern"].endswith("$")
    assert schemas["TradeCheckIn"]["properties"]["operation"]["enum"]


# --- item 3: answers inside the published response schema ----------------------------------------------------


async def test_done_failed_pending_and_status_answers_fit_the_published_schema(bridge, dev_certs, his):
    done_status, done, _ = await post(bridge, dev_certs, "/v1/ops/prepay.commit", json.dumps(prepay("T-OK")).encode())
    assert done_status == 200 and done["status"] == "done" and done["error"] is None
    answer_validator("PrepayCommitAnswer").validate(done)

    refused = {**prepay("T-NOPE"), "inpatient_no": "ZY-NOBODY"}
    failed_status, failed, _ = await post(bridge, dev_certs, "/v1/ops/prepay.commit", json.dumps(refused).encode())
    assert failed_status == 200 and failed["status"] == "failed" and failed["result"] is None
    answer_validator("PrepayCommitAnswer").validate(failed)

    status, polled = await get(bridge, dev_certs, "/v1/operations/req-T-OK")
    assert status == 200
    answer_validator("OperationStatus").validate(polled)

    status, read, _ = await post(bridge, dev_certs, "/v1/ops/patient.query", b'{"card_no":"C0001"}')
    assert status == 200
    answer_validator("PatientQueryAnswer").validate(read)

    status, refusal, _ = await post(bridge, dev_certs, "/v1/ops/prepay.commit", b"{}")
    assert status == 422
    answer_validator("Error").validate(refusal)


# --- item 4: a failure before the wire is permanent ----------------------------------------------------------


async def test_a_value_the_his_cannot_take_fails_for_good_without_asking_or_resending(bridge, dev_certs, his):
    body = json.dumps({**prepay("T-FAR"), "paid_at": "9999-12-31T23:59:59-12:00"}).encode()
    status, answer, _ = await post(bridge, dev_certs, "/v1/ops/prepay.commit", body)
    assert status == 200, answer
    assert (answer["status"], answer["state"]) == ("failed", "failed")
    assert answer["error"]["kind"] == "permanent" and answer["error"]["code"] == "mapping_error"
    assert "9999-12-31T23:59:59-12:00 is out of range" in answer["error"]["message"]
    entry = await bridge.agent.journal.get("req-T-FAR")
    assert entry is not None and entry.attempts == 1 and entry.note is None
    assert his.state.application_count() == 0
    answer_validator("PrepayCommitAnswer").validate(answer)


# --- item 10: the timestamp header -----------------------------------------------------------------------------


@pytest.mark.parametrize("timestamp", ["1²", "١٧٦٧٢٢٥٦٠٠", "+1767225600", "1767225600\n", "0" * 13])
async def test_a_timestamp_of_anything_but_ascii_digits_is_refused_as_bad(bridge, dev_certs, timestamp):
    key = protocol.load_signing_key("platform", dev_certs.platform_signing_key)
    body = b'{"card_no":"C0001"}'
    headers = protocol.sign_request(key, "POST", "/v1/ops/patient.query", body)
    headers[protocol.HEADER_TIMESTAMP] = timestamp
    with pytest.raises(protocol.EnvelopeError) as refused:
        protocol.check_timestamp(timestamp, 300)
    assert refused.value.code == "bad_timestamp"
    if "\n" in timestamp:
        return  # not a legal header value: no HTTP client sends it
    status, answer, _ = await post(bridge, dev_certs, "/v1/ops/patient.query", body, headers=headers)
    assert (status, answer["error"]["code"]) == (401, "bad_timestamp")


# --- item 11: identities, keys and operations ------------------------------------------------------------------


@pytest.fixture
async def two_callers(tmp_path, dev_certs, his):
    """An agent with two allowed TLS identities, each bound to its own signing key."""
    other = protocol.generate_ed25519("other")
    other_pub = tmp_path / "other.pub"
    other_pub.write_bytes(other.public().public_pem())
    text = bridge_config_toml(dev_certs, tmp_path / "two.sqlite3", his.base_url)
    text = text.replace(
        'allowed_clients = [{ cn = "platform-gateway" }]',
        'allowed_clients = [{ cn = "platform-gateway", key_ids = ["platform"] }, '
        '{ cn = "someone-else", key_ids = ["other"] }]',
    ).replace(
        f'clients = [{{ key_id = "platform", public_key = "{dev_certs.platform_signing_pub}" }}]',
        f'clients = [{{ key_id = "platform", public_key = "{dev_certs.platform_signing_pub}" }}, '
        f'{{ key_id = "other", public_key = "{other_pub}" }}]',
    )
    config = tmp_path / "two.toml"
    config.write_text(text)
    running = await start_agent(load_config(config))
    rogue = client_ssl(dev_certs, cert=dev_certs.rogue_client_cert, key=dev_certs.rogue_client_key)
    yield running, other, rogue
    await running.stop()


async def test_a_caller_cannot_sign_with_a_key_bound_to_another_identity(two_callers, dev_certs, his):
    bridge, other_key, other_tls = two_callers
    body = json.dumps(prepay("T-SPOOF")).encode()
    status, answer, _ = await post(bridge, dev_certs, "/v1/ops/prepay.commit", body, ssl_ctx=other_tls)
    assert (status, answer["error"]["code"]) == (401, "key_not_bound")
    status, answer, _ = await post(bridge, dev_certs, "/v1/ops/prepay.commit", body, key=other_key)
    assert (status, answer["error"]["code"]) == (401, "key_not_bound")
    assert await journaled(bridge) == 0
    status, answer, _ = await post(bridge, dev_certs, "/v1/ops/prepay.commit", body, key=other_key, ssl_ctx=other_tls)
    assert status == 200 and answer["status"] == "done"


async def test_a_caller_sees_only_its_own_operations(two_callers, dev_certs, his):
    bridge, other_key, other_tls = two_callers
    body = json.dumps(prepay("T-MINE")).encode()
    status, _, _ = await post(bridge, dev_certs, "/v1/ops/prepay.commit", body)
    assert status == 200
    status, answer = await get(bridge, dev_certs, "/v1/operations/req-T-MINE")
    assert status == 200 and answer["request_id"] == "req-T-MINE"
    status, answer = await get(bridge, dev_certs, "/v1/operations/req-T-MINE", key=other_key, ssl_ctx=other_tls)
    assert (status, answer["error"]["code"]) == (404, "not_found")
    # the same request id from the other caller is not an idempotent replay of the first caller's write
    status, answer, _ = await post(bridge, dev_certs, "/v1/ops/prepay.commit", body, key=other_key, ssl_ctx=other_tls)
    assert (status, answer["error"]["code"]) == (409, "request_conflict")
    assert "details" not in answer["error"]
    assert his.state.application_count(trade_no="T-MINE") == 1


def test_several_identities_must_each_be_bound_to_their_keys(tmp_path, dev_certs):
    text = bridge_config_toml(dev_certs, tmp_path / "j.sqlite3", "http://127.0.0.1:1").replace(
        'allowed_clients = [{ cn = "platform-gateway" }]',
        'allowed_clients = [{ cn = "platform-gateway" }, { cn = "someone-else", key_ids = ["platform"] }]',
    )
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match="each needs key_ids"):
        load_config(config)
    config.write_text(text.replace('{ cn = "platform-gateway" }', '{ cn = "platform-gateway", key_ids = ["nope"] }'))
    with pytest.raises(ConfigError, match=r"key_ids \['nope'\] must name keys of signing.clients"):
        load_config(config)


def test_the_agent_document_is_a_valid_openapi_31_document():
    from openapi_spec_validator import validate

    validate(DOCUMENT)
