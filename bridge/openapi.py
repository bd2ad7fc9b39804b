"""The OpenAPI document of the agent's API, generated from the catalog so it can never drift from it.

The document is the contract: request bodies are validated exactly as their schemas say (``bridge.catalog``),
and every answer the agent sends — results, refusals, errors — fits the response schema published for its
status. ``tests/bridge/test_agent_fuzz.py`` holds the agent to both.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from bridge import catalog
from bridge.intranet import openapi as terminal_openapi
from bridge.journal import State

REF = "#/components/schemas/{model}"

ENVELOPE_HEADERS = [
    {"name": name, "in": "header", "required": True, "schema": schema, "description": desc}
    for name, schema, desc in [
        (
            "X-HB-Key-Id",
            {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"},
            "Id of the platform key that signed the request; it must be bound to the client certificate presented.",
        ),
        (
            "X-HB-Timestamp",
            {"type": "string", "pattern": "^[0-9]{1,12}$"},
            "Unix seconds in ASCII digits; must be within the agent's window (default ±300 s).",
        ),
        ("X-HB-Nonce", {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"}, "Never reused."),
        (
            "X-HB-Signature",
            {"type": "string"},
            "base64 signature of 'HB1\\nMETHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nSHA256HEX(BODY)\\n'.",
        ),
    ]
]

RESPONSE_HEADERS = {
    "X-HB-Key-Id": {"description": "The agent's signing key id.", "schema": {"type": "string"}},
    "X-HB-Timestamp": {"description": "Unix seconds of the answer.", "schema": {"type": "string"}},
    "X-HB-Signature": {
        "description": "base64 signature of 'HB1-RESP\\nSTATUS\\nREQUEST_NONCE\\nTIMESTAMP\\nSHA256HEX(BODY)\\n'.",
        "schema": {"type": "string"},
    },
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A refusal or an error; ``code`` is stable and machine-readable.",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"description": "What exactly was wrong: the fields of a schema violation, for example."},
            },
        }
    },
}

HIS_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Why a call failed or is being retried: ``kind`` says whether the HIS may have applied it.",
    "required": ["code", "message"],
    "properties": {
        "kind": {"type": "string", "enum": ["retryable", "permanent", "in_doubt"]},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "while": {"type": "string", "description": "The call that failed, when it was not the write itself."},
    },
}

ERRORS = {
    "400": "Malformed JSON (not JSON, not an object, nested too deeply).",
    "401": "Unsigned, badly signed or stale request, or a key id not bound to the client certificate.",
    "403": "Client certificate identity not allowed.",
    "404": "No such operation or resource.",
    "405": "Method not allowed.",
    "409": "A replayed nonce.",
    "413": "Body too large.",
    "422": "The body does not fit the operation's schema; details name each field.",
    "429": "Too many concurrent requests from this client.",
    "500": "Internal error; nothing was accepted.",
    "502": "The HIS failed the read (retry later).",
    "503": "Not ready, journal unavailable, or HIS unavailable (reads).",
    "504": "The HIS did not answer the read in time.",
}


def _error_responses(statuses: list[str]) -> dict[str, Any]:
    return {
        status: {
            "description": ERRORS[status],
            "headers": RESPONSE_HEADERS,
            "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
        }
        for status in statuses
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _write_answer(operations: list[catalog.Operation]) -> dict[str, Any]:
    """The journal entry's answer. ``result`` is set once done, ``error`` otherwise (when there is one)."""
    results = [{"$ref": REF.format(model=op.output.__name__)} for op in operations]
    return {
        "type": "object",
        "required": ["status", "state", "request_id", "journal_id", "operation", "result", "error", "note"],
        "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": ["done", "failed", "pending"]},
            "state": {"type": "string", "enum": [s.value for s in State], "description": "the journal state"},
            "request_id": {"type": "string"},
            "journal_id": {"type": "integer"},
            "operation": {"type": "string", "enum": [op.name for op in operations]},
            "result": _nullable(results[0] if len(results) == 1 else {"anyOf": results}),
            "error": _nullable({"$ref": REF.format(model="HisError")}),
            "note": _nullable({"type": "string"}),
        },
    }


def _read_answer(op: catalog.Operation) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status", "operation", "result", "error"],
        "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": ["done", "failed"]},
            "operation": {"type": "string", "enum": [op.name]},
            "result": _nullable({"$ref": REF.format(model=op.output.__name__)}),
            "error": _nullable({"$ref": REF.format(model="HisError")}),
        },
    }


def _answer_name(op: catalog.Operation) -> str:
    return op.input.__name__.removesuffix("In") + "Answer"


def build(version: str) -> dict[str, Any]:
    models = []
    for op in catalog.OPERATIONS.values():
        models += [(op.input, "validation"), (op.output, "serialization")]
    _, defs = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = {**defs.get("$defs", {}), "Error": ERROR_SCHEMA, "HisError": HIS_ERROR_SCHEMA}
    writes = [op for op in catalog.OPERATIONS.values() if op.write]
    schemas["OperationStatus"] = _write_answer(writes)
    paths: dict[str, Any] = {}
    for op in catalog.OPERATIONS.values():
        answer = _answer_name(op)
        schemas[answer] = _write_answer([op]) if op.write else _read_answer(op)
        content = {"application/json": {"schema": {"$ref": REF.format(model=answer)}}}
        responses: dict[str, Any] = {
            "200": {
                "description": "The HIS answered (status done) or refused for good (status failed).",
                "headers": RESPONSE_HEADERS,
                "content": content,
            }
        }
        if op.write:
            responses["202"] = {
                "description": "Journaled; the HIS has not answered within the deadline. Poll "
                "GET /v1/operations/{request_id}.",
                "headers": RESPONSE_HEADERS,
                "content": content,
            }
            responses.update(_error_responses(["400", "401", "403", "404", "409", "413", "422", "429", "500", "503"]))
            responses["409"]["description"] = (
                "request_id already used for a different request (or by another client), or a replayed nonce."
            )
        else:
            responses.update(
                _error_responses(["400", "401", "403", "404", "409", "413", "422", "429", "500", "502", "503", "504"])
            )
        paths[f"/v1/ops/{op.name}"] = {
            "post": {
                "operationId": op.name.replace(".", "_"),
                "summary": op.summary,
                "tags": ["write" if op.write else "read"],
                "parameters": ENVELOPE_HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": REF.format(model=op.input.__name__)}}},
                },
                "responses": responses,
            }
        }
    status_responses = {
        "200": {
            "description": "The journal entry of one of the caller's writes.",
            "headers": RESPONSE_HEADERS,
            "content": {"application/json": {"schema": {"$ref": REF.format(model="OperationStatus")}}},
        },
        **_error_responses(["401", "403", "404", "409", "429", "500", "503"]),
    }
    status_responses["404"]["description"] = "No write of this client has this request id."
    paths["/v1/operations/{request_id}"] = {
        "get": {
            "operationId": "operation_status",
            "summary": "The current state and result of one of the caller's journaled writes.",
            "parameters": [
                {
                    "name": "request_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                },
                *ENVELOPE_HEADERS,
            ],
            "responses": status_responses,
        }
    }
    terminal_paths, terminal_schemas = terminal_openapi.paths_and_schemas()
    paths.update(terminal_paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "HIS Bridge agent",
            "version": version,
            "description": "Canonical HIS operations over mutual TLS with signed requests and responses; and, "
            "under /v1/terminal (the intranet listener), what kiosks and cashier windows call. Money is integer fen. "
            "Instants are RFC 3339 strings with their offset.",
        },
        "paths": paths,
        "components": {"schemas": {**schemas, **terminal_schemas}},
    }
