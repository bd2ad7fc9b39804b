"""Schema-driven fuzzing of the agent's published API (issue 15): every operation of its OpenAPI document,
through schemathesis's phases (the document's examples; coverage of each keyword of each field, its boundaries
and every way to break it; then random fuzzing), with the cases the schemas allow and cases they forbid, each
correctly signed and sent over mutual TLS to a real agent in front of the sandbox HIS. No answer may be a 5xx,
unsigned, or outside the published schema for its status; a case that breaks the schema must be refused; and no
journaled write may hold parameters its schema forbids.

``HB_FUZZ_EXAMPLES`` raises the number of random cases per operation (default 25); ``HB_FUZZ_RANDOM=1``
explores afresh instead of the reproducible default sequence.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from bridge import catalog, openapi, protocol
from bridge.config import load_config
from bridge.server import start_agent
from bridge.version import agent_version
from sandbox.cli import start_sandbox_his
from tests.support.fuzzrig import (
    CHECKS,
    NEGATIVE_CHECKS,
    ThreadedLoop,
    check_signed,
    component_validator,
    signed_request,
    without_signature_headers,
)
from tests.support.rig import bridge_config_toml

DOCUMENT = openapi.build(agent_version())
SCHEMA = schemathesis.openapi.from_dict(without_signature_headers(DOCUMENT))
SCHEMA.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
EXAMPLES = int(os.environ.get("HB_FUZZ_EXAMPLES", "25"))
VALIDATORS = {op.name: component_validator(DOCUMENT, op.input.__name__) for op in catalog.OPERATIONS.values()}


class AgentRig:
    def __init__(self, tmp: Path, certs) -> None:
        self.loop = ThreadedLoop()
        self.certs = certs
        self.journal = tmp / "journal.sqlite3"
        self.his = self.loop.run(start_sandbox_his(db_path=tmp / "his.sqlite3"))
        config = tmp / "bridge.toml"
        config.write_text(
            bridge_config_toml(certs, self.journal, self.his.base_url, dispatch={"sync_deadline_s": 2}),
            encoding="utf-8",
        )
        self.agent = self.loop.run(start_agent(load_config(config)))
        self.key = protocol.load_signing_key("platform", certs.platform_signing_key)
        self.bridge_key = protocol.load_verify_key("bridge-H001", certs.bridge_signing_pub)
        self.session = requests.Session()
        self.session.verify = str(certs.ca_cert)
        self.session.cert = (str(certs.client_cert), str(certs.client_key))
        self.reached: set[str] = set()
        """Write operations a case got journaled, so the last test can tell the fuzzing reached them."""

    def journaled(self, request_id: str | None = None) -> list[tuple[str, dict]]:
        query, args = "SELECT operation, params FROM entries", ()
        if request_id is not None:
            query, args = query + " WHERE request_id = ?", (request_id,)
        with sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True) as conn:
            return [(op, json.loads(params)) for op, params in conn.execute(query, args)]

    def close(self) -> None:
        self.session.close()
        self.loop.run(self.agent.stop())
        self.loop.run(self.his.close())
        self.loop.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory, dev_certs):
    running = AgentRig(tmp_path_factory.mktemp("agent-fuzz"), dev_certs)
    yield running
    running.close()


@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="HB_FUZZ_RANDOM" not in os.environ,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_signed_and_inside_the_published_schema(case, rig):
    prepared, nonce = signed_request(case, rig.agent.api_url, rig.key)
    response = rig.session.send(prepared, timeout=30)
    check_signed(response, nonce, rig.bridge_key)
    negative = case.meta is not None and case.meta.generation.mode is schemathesis.GenerationMode.NEGATIVE
    case.validate_response(response, checks=NEGATIVE_CHECKS if negative else CHECKS)
    operation = case.path.removeprefix("/v1/ops/")
    if operation in catalog.WRITE_OPERATIONS and response.status_code in (200, 202):
        for name, params in rig.journaled(response.json()["request_id"]):
            errors = [e.message for e in VALIDATORS[name].iter_errors(params)]
            assert not errors, (name, params, errors)
        rig.reached.add(operation)


def test_no_journaled_write_holds_what_its_schema_forbids(rig):
    """After the fuzzing above (same module rig), a last sweep: every write operation was reached, and everything
    journaled, replays included, fits its published input schema."""
    assert rig.reached == catalog.WRITE_OPERATIONS, "some writes were never journaled: the fuzzing proved nothing there"
    for operation, params in rig.journaled():
        errors = [e.message for e in VALIDATORS[operation].iter_errors(params)]
        assert not errors, (operation, params, errors)
