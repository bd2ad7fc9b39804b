"""Schema-driven fuzzing of our published APIs with schemathesis: the servers run on an event loop in a thread
of their own (schemathesis drives ``requests``, synchronously, from Hypothesis), and a hook signs each case as
the real caller would — the exact bytes sent, over its path and query — so the cases reach the handlers instead
of stopping at the signature check.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import jsonschema
import requests
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bridge import protocol

T = TypeVar("T")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
"""What every answer is held to: no 5xx, a documented status, the documented content type and headers, and a
body inside the published schema for its status."""
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]
"""And a case that breaks the schema is refused: the server validates what the document says, no less."""


class ThreadedLoop:
    """An event loop in a daemon thread, for servers that must keep serving while a synchronous test runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-servers", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def signed_request(case: Case, base_url: str, key: protocol.SigningKey) -> tuple[requests.PreparedRequest, str]:
    """The case as ``requests`` would send it, with the X-HB headers the generator made up replaced by a real
    signature over the exact body and path; returns the request and its nonce."""
    kwargs = case.as_transport_kwargs(base_url=base_url)
    headers = {k: v for k, v in kwargs["headers"].items() if not k.lower().startswith("x-hb-")}
    data = kwargs.get("data")
    if "json" in kwargs:
        data = json.dumps(kwargs["json"], ensure_ascii=False).encode()
    prepared = requests.Request(
        method=kwargs["method"],
        url=kwargs["url"],
        headers=headers,
        params=kwargs.get("params"),
        data=data,
    ).prepare()
    raw = prepared.body if isinstance(prepared.body, bytes) else (prepared.body or "").encode()
    signed = protocol.sign_request(key, prepared.method or "GET", prepared.path_url, raw)
    prepared.headers.update(signed)
    if raw:
        prepared.headers["Content-Type"] = "application/json"
    return prepared, signed[protocol.HEADER_NONCE]


def check_signed(response: requests.Response, nonce: str, key: protocol.VerifyKey) -> None:
    protocol.verify_response(key, response.status_code, nonce, response.headers, response.content)


def component_validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema of an OpenAPI 3.1 document, its references resolved inside it, with
    formats (date-time, date) checked."""
    resource = Resource.from_contents({"components": document["components"]}, default_specification=DRAFT202012)
    return jsonschema.Draft202012Validator(
        {"$ref": f"urn:api#/components/schemas/{name}"},
        registry=Registry().with_resource("urn:api", resource),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def without_signature_headers(document: dict[str, Any]) -> dict[str, Any]:
    """The document the cases are generated from: the X-HB headers left out, since the hook writes them (a
    mutated header would be signed over anyway, and the case would claim a violation it no longer carries)."""
    stripped = copy.deepcopy(document)
    for item in stripped["paths"].values():
        for operation in item.values():
            operation["parameters"] = [
                p
                for p in operation.get("parameters", [])
                if not (p["in"] == "header" and p["name"].lower().startswith("x-hb-"))
            ]
            operation.pop("security", None)
    return stripped
