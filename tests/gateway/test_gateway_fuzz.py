"""Schema-driven fuzzing of the gateway's business API (issue 15): its OpenAPI document is valid, and every
operation, sent the cases its schemas allow and cases they forbid — signed as the hospital's app — answers
with no 5xx, signed, inside the published schema for its status. The order paths are fuzzed twice: with made-up
order numbers, and against a real paid order (so refund bodies reach the refund saga).

``HB_FUZZ_EXAMPLES`` and ``HB_FUZZ_RANDOM`` work as in ``tests/bridge/test_agent_fuzz.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import get_args

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from gateway.api import openapi
from gateway.config import AppOperation
from gateway.runtime import start_gateway
from gateway.sms.config import SmsConfig
from gateway.sms.providers import SandboxSmsProvider
from tests.support.fuzzrig import (
    CHECKS,
    NEGATIVE_CHECKS,
    ThreadedLoop,
    check_signed,
    component_validator,
    signed_request,
    without_signature_headers,
)
from tests.support.gateway_rig import MERCHANT, ApprovingHis, drain, gateway_config, make_keys, order_body
from tests.support.memory_channel import MemoryChannel
from tests.support.sms_rig import sms_section

DOCUMENT = openapi.build()
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
SCHEMA = schemathesis.openapi.from_dict(without_signature_headers(DOCUMENT))
SCHEMA.config.generation.update(modes=MODES)
PAID = "FUZZ-PAID-0001"
ON_THE_PAID_ORDER = schemathesis.openapi.from_dict(without_signature_headers(DOCUMENT)).include(
    path_regex=r"\{business_order_no\}"
)
"""The order paths again, against a real paid order (so refund bodies reach the refund saga)."""
ON_THE_PAID_ORDER.config.generation.update(modes=MODES)
ON_THE_PAID_ORDER.config.update(parameters={"business_order_no": PAID})
OPERATIONS = [(path, method.upper()) for path, item in DOCUMENT["paths"].items() for method in item]
EXAMPLES = int(os.environ.get("HB_FUZZ_EXAMPLES", "25"))
OPERATION_NAMES = get_args(AppOperation)
"""The fuzzing app may call everything, so every case reaches its handler."""


class GatewayRig:
    def __init__(self, tmp: Path) -> None:
        self.loop = ThreadedLoop()
        self.keys = make_keys(tmp / "keys")
        self.channel = MemoryChannel()
        cfg = gateway_config(
            tmp, self.keys, f"sqlite+aiosqlite:///{tmp / 'gateway.sqlite3'}", app={"operations": list(OPERATION_NAMES)}
        )
        cfg.sms = SmsConfig.model_validate(sms_section(tmp))  # the SMS endpoints are in the contract too
        cfg.sms.resolve(tmp)
        self.running = self.loop.run(
            start_gateway(
                cfg,
                channels={MERCHANT: self.channel},
                his={"H001": ApprovingHis()},
                run_workers=False,
                sms_provider=SandboxSmsProvider(),
            )
        )
        self.url = self.running.url
        self.session = requests.Session()
        self.loop.run(self._paid_order())

    async def _paid_order(self) -> None:
        body = json.dumps(order_body(PAID, amount_fen=100_000)).encode()
        prepared, _ = self.sign("POST", "/v1/orders", body)
        async with aiohttp.ClientSession() as session:
            async with session.post(self.url + "/v1/orders", data=body, headers=dict(prepared.headers)) as resp:
                assert resp.status == 201, await resp.text()
                order = (await resp.json())["order"]
            headers, callback = self.channel.pay(order["out_trade_no"])
            async with session.post(f"{self.url}/notify/wechat/{MERCHANT}", data=callback, headers=headers) as resp:
                assert resp.status == 200
        await drain(self.running.gateway)

    def sign(self, method: str, path: str, body: bytes) -> tuple[requests.PreparedRequest, str]:
        prepared = requests.Request(method, self.url + path, data=body).prepare()
        from bridge import protocol

        signed = protocol.sign_request(self.keys.app, method, path, body)
        prepared.headers.update({**signed, "Content-Type": "application/json"})
        return prepared, signed[protocol.HEADER_NONCE]

    def close(self) -> None:
        self.session.close()
        self.loop.run(self.running.stop())
        self.loop.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    running = GatewayRig(tmp_path_factory.mktemp("gateway-fuzz"))
    yield running
    running.close()


def test_the_document_is_valid_openapi_and_names_every_business_endpoint():
    validate(DOCUMENT)
    assert set(OPERATIONS) == {
        ("/v1/orders", "POST"),
        ("/v1/orders", "GET"),
        ("/v1/orders/{business_order_no}", "GET"),
        ("/v1/orders/{business_order_no}/close", "POST"),
        ("/v1/orders/{business_order_no}/refunds", "POST"),
        ("/v1/refunds/{business_refund_no}", "GET"),
        ("/v1/requests/{request_id}", "GET"),
        ("/v1/window-refunds", "POST"),
        ("/v1/transactions", "GET"),
        ("/v1/events", "GET"),
        ("/v1/his/patients/query", "POST"),
        ("/v1/his/bills/unpaid", "POST"),
        ("/v1/his/registration-locks", "POST"),
        ("/v1/his/registration-locks/{lock_no}", "GET"),
        ("/v1/his/registration-locks/{lock_no}/unlock", "POST"),
        ("/v1/sms/otp", "POST"),
        ("/v1/sms/verify", "POST"),
    }
    schemas = DOCUMENT["components"]["schemas"]
    assert schemas["CreateOrder"]["examples"] and schemas["RequestRefund"]["examples"]
    for name in ("CreateOrder", "RequestRefund", "PatientQuery", "BillsQuery", "LockRequest"):
        for example in schemas[name]["examples"]:
            assert not list(component_validator(DOCUMENT, name).iter_errors(example))
    assert "X-HB-Signature" in DOCUMENT["info"]["description"]


async def test_the_gateway_serves_its_document(gateway_factory, sqlite_url):
    running = await gateway_factory(sqlite_url)
    async with aiohttp.ClientSession() as session, session.get(running.url + "/openapi.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == json.loads(json.dumps(DOCUMENT))


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="HB_FUZZ_RANDOM" not in os.environ,
    suppress_health_check=list(HealthCheck),
)


def _check(rig: GatewayRig, case) -> None:
    prepared, nonce = signed_request(case, rig.url, rig.keys.app)
    response = rig.session.send(prepared, timeout=30)
    check_signed(response, nonce, rig.keys.gateway.public())
    negative = case.meta is not None and case.meta.generation.mode is schemathesis.GenerationMode.NEGATIVE
    case.validate_response(response, checks=NEGATIVE_CHECKS if negative else CHECKS)


@SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_every_answer_is_signed_and_inside_the_published_schema(case, rig):
    _check(rig, case)


@ON_THE_PAID_ORDER.parametrize()
@FUZZ_SETTINGS
def test_a_real_paid_order_fuzzed_answers_inside_the_schema(case, rig):
    _check(rig, case)
