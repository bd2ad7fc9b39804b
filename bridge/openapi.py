"""The OpenAPI document of the agent's API, generated from the catalog so it can never drift from it."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from bridge import catalog
from bridge.intranet import openapi as terminal_openapi

ENVELOPE_HEADERS = [
    {"name": name, "in": "header", "required": True, "schema": {"type": "string"}, "description": desc}
    for name, desc in [
        ("X-HB-Key-Id", "Id of the platform key that signed the request."),
        ("X-HB-Timestamp", "Unix seconds; must be within the agent's window (default ±300 s)."),
        ("X-HB-Nonce", "16-64 characters of [A-Za-z0-9_-], never reused."),
        (
            "X-HB-Signature",
            "base64 signature of 'HB1\\nMETHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nSHA256HEX(BODY)\\n'.",
        ),
    ]
]

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
        }
    },
}

RESULT_STATES = ["done", "failed", "pending"]


def build(version: str) -> dict[str, Any]:
    models = []
    for op in catalog.OPERATIONS.values():
        models += [(op.input, "validation"), (op.output, "serialization")]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {}
    for op in catalog.OPERATIONS.values():
        result = {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": RESULT_STATES},
                "state": {"type": "string", "description": "the journal state, for writes"},
                "request_id": {"type": "string"},
                "journal_id": {"type": "integer"},
                "result": {"$ref": f"#/components/schemas/{op.output.__name__}"},
                "error": {"type": "object"},
            },
        }
        responses: dict[str, Any] = {
            "200": {
                "description": "The HIS answered (status done) or refused for good (status failed).",
                "content": {"application/json": {"schema": result}},
            },
            "400": {
                "description": "Malformed JSON.",
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            },
            "401": {"description": "Unsigned, badly signed or stale request."},
            "403": {"description": "Client certificate identity not allowed."},
            "413": {"description": "Body too large."},
            "422": {
                "description": "Schema violation.",
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            },
            "429": {"description": "Too many concurrent requests from this client."},
            "503": {"description": "Not ready, journal unavailable, or HIS unavailable (reads)."},
        }
        if op.write:
            responses["202"] = {
                "description": "Journaled; the HIS has not answered within the deadline. Poll "
                "GET /v1/operations/{request_id}.",
                "content": {"application/json": {"schema": result}},
            }
            responses["409"] = {"description": "request_id reused for a different request, or replayed nonce."}
        paths[f"/v1/ops/{op.name}"] = {
            "post": {
                "operationId": op.name.replace(".", "_"),
                "summary": op.summary,
                "tags": ["write" if op.write else "read"],
                "parameters": ENVELOPE_HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.input.__name__}"}}},
                },
                "responses": responses,
            }
        }
    paths["/v1/operations/{request_id}"] = {
        "get": {
            "operationId": "operation_status",
            "summary": "The current state and result of a journaled write.",
            "parameters": [
                {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}},
                *ENVELOPE_HEADERS,
            ],
            "responses": {
                "200": {"description": "The journal entry."},
                "404": {"description": "Unknown id."},
            },
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
            "under /v1/terminal (the intranet listener), what kiosks and cashier windows call. Money is integer fen.",
        },
        "paths": paths,
        "components": {"schemas": {**defs.get("$defs", {}), **terminal_schemas}},
    }
