"""The OpenAPI description of the terminal API, generated from its schemas; also merged into the agent's own
document (``bridge.openapi``) so an implementer finds both directions in one place."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from bridge.intranet.schemas import INPUT, SUMMARY

HMAC_HEADERS = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": desc}
    for name, desc in [
        ("X-HBT-Terminal", "The terminal id (HMAC terminals; certificate terminals are known by their certificate)."),
        ("X-HBT-Timestamp", "Unix seconds, within the agent's window (default ±300 s)."),
        ("X-HBT-Nonce", "16-64 characters of [A-Za-z0-9_-], never reused."),
        (
            "X-HBT-Signature",
            "lowercase hex HMAC-SHA256 with the terminal's key of "
            "'HBT1\\nMETHOD\\nPATH?QUERY\\nTERMINAL\\nTIMESTAMP\\nNONCE\\nSHA256HEX(BODY)\\n'.",
        ),
    ]
]

ANSWER = {
    "type": "object",
    "description": "Signed for HMAC terminals: X-HBT-Timestamp and X-HBT-Signature, the HMAC of "
    "'HBT1-RESP\\nSTATUS\\nREQUEST_NONCE\\nTIMESTAMP\\nSHA256HEX(BODY)\\n'.",
    "properties": {
        "request_id": {"type": "string"},
        "operation": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["paid", "waiting", "pending", "closed", "failed", "succeeded", "processing", "queued", "rejected"],
        },
        "out_trade_no": {"type": "string"},
        "amount_fen": {"type": "integer"},
        "paid_fen": {"type": ["integer", "null"]},
        "qr_code": {"type": ["string", "null"], "description": "pay.qr while waiting: the code to show"},
        "error": {
            "type": ["object", "null"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}
    },
}
REFUSALS = {
    "400": "malformed_json",
    "401": "unknown_terminal, unsigned, bad_signature, bad_nonce, bad_timestamp, stale_timestamp, "
    "client_certificate_required",
    "403": "address_not_allowed, terminal_disabled, operation_not_allowed",
    "404": "unknown_operation, not_found",
    "409": "replayed_nonce, request_conflict",
    "413": "body_too_large",
    "422": "schema_violation, over_payment_limit, over_refund_limit, over_daily_limit",
    "429": "too_many_requests",
    "503": "cloud_unreachable (a payment refused at once: nothing was charged), journal_unavailable",
}


def paths_and_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    _, defs = models_json_schema(
        [(model, "validation") for model in INPUT.values()], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, Any] = {}
    for operation, model in INPUT.items():
        responses: dict[str, Any] = {
            "200": {"description": "A definite outcome.", "content": {"application/json": {"schema": ANSWER}}},
            "202": {
                "description": "Not final yet (pending, queued, processing): ask again with the same request id.",
                "content": {"application/json": {"schema": ANSWER}},
            },
        }
        for status, codes in REFUSALS.items():
            responses[status] = {"description": codes, "content": {"application/json": {"schema": ERROR}}}
        paths[f"/v1/terminal/{operation.value}"] = {
            "post": {
                "operationId": "terminal_" + operation.value.replace(".", "_"),
                "summary": SUMMARY[operation],
                "tags": ["terminal"],
                "parameters": HMAC_HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
                },
                "responses": responses,
            }
        }
    paths["/v1/terminal/requests/{request_id}"] = {
        "get": {
            "operationId": "terminal_request_status",
            "summary": "The outcome of one of this terminal's payments or refunds, by its request id.",
            "tags": ["terminal"],
            "parameters": [
                {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}},
                *HMAC_HEADERS,
            ],
            "responses": {
                "200": {"description": "Final.", "content": {"application/json": {"schema": ANSWER}}},
                "202": {"description": "Not final yet.", "content": {"application/json": {"schema": ANSWER}}},
                "404": {"description": "not_found"},
            },
        }
    }
    return paths, defs.get("$defs", {})


def document(version: str) -> dict[str, Any]:
    paths, schemas = paths_and_schemas()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "HIS Bridge agent — terminal API (intranet listener)",
            "version": version,
            "description": "Kiosks and cashier windows pay and refund through the agent. Money is integer fen. "
            "Each request is authenticated by the terminal's certificate from the hospital CA or by its HMAC key.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
