"""The business API's OpenAPI 3.1 document, served at ``GET /openapi.json``.

Generated from the models that validate requests (``gateway.api.schemas``) and the models of the answers
(``gateway.api.answers``), so it cannot drift from what the gateway does; the fuzzing tests send it every case
the schemas allow and hold every answer to it. Schemas are named components and carry examples, so a client
can be generated from it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.api import answers, his, his_answers, schemas
from gateway.api.events import MAX_ID, MAX_LIMIT
from gateway.api.orders import FLAGS, MAX_PAGE, MAX_PAGE_SIZE
from gateway.model import OrderStatus
from gateway.sms import api as sms_api

REF = "#/components/schemas/{model}"

SIGNING = """Every request is signed by the calling app, exactly like a call to the bridge agent:

    X-HB-Key-Id:    the app id
    X-HB-Timestamp: Unix seconds, ASCII digits, within ±timestamp_window_s (default 300) of the gateway's clock
    X-HB-Nonce:     16-64 characters of [A-Za-z0-9_-], never used before by this app
    X-HB-Signature: base64 Ed25519 (or RSA PKCS#1 v1.5 SHA-256, ≥ 2048 bits) signature of
                    "HB1\\n" METHOD "\\n" PATH?QUERY "\\n" TIMESTAMP "\\n" NONCE "\\n" hex(SHA-256(body)) "\\n"

Every answer under /v1, refusals included, is signed by the gateway's key over the request's nonce:

    X-HB-Key-Id, X-HB-Timestamp, and X-HB-Signature of
    "HB1-RESP\\n" STATUS "\\n" REQUEST_NONCE "\\n" TIMESTAMP "\\n" hex(SHA-256(body)) "\\n"

Verify it before trusting an answer. Notifications pushed to an app's notify URL are signed the same way as a
request (X-HB-Event-Id carries the event id). Money is integer fen everywhere."""

KEY_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
FLAG = {"type": "string", "enum": list(FLAGS)}
CODE = r"^[A-Za-z0-9_.:/-]+$"

SIGNED_HEADERS = [
    {"name": "X-HB-Key-Id", "in": "header", "required": True, "schema": {"type": "string", "pattern": KEY_ID}},
    {
        "name": "X-HB-Timestamp",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
    },
    {
        "name": "X-HB-Nonce",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
    },
    {"name": "X-HB-Signature", "in": "header", "required": True, "schema": {"type": "string"}},
]

ANSWER_HEADERS = {
    name: {"description": description, "schema": {"type": "string"}}
    for name, description in (
        ("X-HB-Key-Id", "The gateway's signing key id."),
        ("X-HB-Timestamp", "Unix seconds of the answer."),
        ("X-HB-Signature", "The gateway's signature of the answer over the request's nonce."),
    )
}

ERRORS = {
    "400": "Malformed JSON or a bad query parameter (bad_query).",
    "401": "Unsigned, badly signed, stale, or an unknown app (unsigned, bad_signature, bad_timestamp, ...); "
    "signed with one of the app's keys that is retired or not valid yet (key_not_valid).",
    "403": "This app may not do this: the operation is not allowed to it (operation_not_allowed), it or its "
    "hospital is disabled (app_disabled), agent apps only (not_an_agent), or not over its own client "
    "certificate (client_not_allowed).",
    "404": "No such order or refund for this hospital (order_not_found, refund_not_found, not_found).",
    "405": "Method not allowed.",
    "409": "A replayed nonce; or the conflict the operation names.",
    "413": "Body too large.",
    "429": "Too many requests.",
    "422": "The body does not fit the schema (schema_violation, with details), or a refused notify_url.",
    "500": "Internal error.",
    "503": "A channel could not be reached (channel_unavailable): send the same request again.",
}


def _path_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": CODE},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": ANSWER_HEADERS,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
    }


def _operation(
    operation_id: str,
    summary: str,
    answers_by_status: dict[str, tuple[type[BaseModel], str]],
    errors: list[str],
    *,
    body: type[BaseModel] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    conflicts: str | None = None,
) -> dict[str, Any]:
    responses = {status: _json(model, text) for status, (model, text) in answers_by_status.items()}
    for status in ["400", "401", "403", "405", "413", "500", *errors]:
        description = ERRORS[status]
        if status == "409" and conflicts:
            description = f"{conflicts}; or a replayed nonce (replayed_nonce)."
        responses[status] = _json(answers.Error, description)
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "security": [{"HB1": []}],
        "parameters": [*(parameters or []), *SIGNED_HEADERS],
        "responses": dict(sorted(responses.items())),
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=body.__name__)}}},
        }
    return operation


HIS_ERRORS = {
    "404": "No such slot hold for this hospital (lock_not_found).",
    "422": "The body does not fit the schema (schema_violation, with details); or the HIS refused (his_refused, "
    "with his_error; a refused hold with its lock).",
    "503": "The hospital's HIS cannot be reached now (his_unavailable): ask again.",
}


def _his_operation(
    operation_id: str, summary: str, answer: tuple[type[BaseModel], str], **kwargs: Any
) -> dict[str, Any]:
    extra: dict[str, tuple[type[BaseModel], str]] = kwargs.pop("more", {})
    errors: list[str] = kwargs.pop("errors", ["409", "422", "503"])
    operation = _operation(operation_id, summary, {"200": answer, **extra}, errors, **kwargs)
    for status in ("404", "422", "503"):
        if status in operation["responses"]:
            operation["responses"][status] = _json(answers.Error, HIS_ERRORS[status])
    return operation


def _his_paths() -> dict[str, Any]:
    lock_no = _path_param("lock_no")
    lock = his_answers.LockAnswer
    return {
        "/v1/his/patients/query": {
            "post": _his_operation(
                "query_patient",
                "Find a patient in the HIS by card, ID card or phone (operation patient.query; cached briefly where "
                "the hospital allows).",
                (his_answers.PatientAnswer, "The HIS's answer; found is false when it has no such patient."),
                body=his.PatientQuery,
            )
        },
        "/v1/his/bills/unpaid": {
            "post": _his_operation(
                "unpaid_bills",
                "A patient's unpaid outpatient bills, to pay with a charge order (operation bills.unpaid).",
                (his_answers.BillsAnswer, "The HIS's answer."),
                body=his.BillsQuery,
            )
        },
        "/v1/his/registration-locks": {
            "post": _his_operation(
                "lock_slot",
                "Hold a registration slot while the patient pays (operation registration.lock; idempotent on "
                "lock_no). Give its lock_id to the registration order; if that order closes unpaid, the slot is "
                "released.",
                (lock, "The same hold again, as it stands."),
                more={
                    "201": (lock, "Held by the HIS."),
                    "202": (lock, "Sent; the HIS has not answered yet: ask again."),
                },
                body=his.LockRequest,
                errors=["409", "422", "503"],
                conflicts="lock_no used for another patient or schedule (lock_conflict)",
            )
        },
        "/v1/his/registration-locks/{lock_no}": {
            "get": _his_operation(
                "get_slot",
                "A slot hold as it stands (one still locking is asked about again).",
                (lock, "The hold."),
                parameters=[lock_no],
                errors=["404", "409", "503"],
            )
        },
        "/v1/his/registration-locks/{lock_no}/unlock": {
            "post": _his_operation(
                "unlock_slot",
                "Let a held slot go (operation registration.unlock). Refused while an order may still pay for it.",
                (lock, "Released (or already released)."),
                more={"202": (lock, "Releasing; the HIS has not confirmed yet.")},
                parameters=[lock_no],
                errors=["404", "409", "503"],
                conflicts="an order may still pay for the slot, or paid for it (lock_in_use, with the lock)",
            )
        },
    }


SMS_ERRORS = {
    "403": "Solve the captcha first (captcha_required, with captcha: provider, challenge_id, params), then send "
    "the request again with captcha; or requests from this client are not accepted (sms_refused). As for every "
    "endpoint: the operation is not allowed to the app, or the app is disabled.",
    "404": "SMS codes are not enabled on this gateway (not_found).",
    "429": "Too many code requests from this client (sms_rate_limited): try again later.",
    "503": "Codes cannot be sent now (sms_unavailable): try again later.",
}


def _sms_operation(operation_id: str, summary: str, answer: tuple[type[BaseModel], str], body: type[BaseModel]) -> Any:
    operation = _operation(operation_id, summary, {"200": answer}, ["404", "409", "422", "429", "503"], body=body)
    for status, text in SMS_ERRORS.items():
        if status in operation["responses"]:
            operation["responses"][status] = _json(answers.Error, text)
    return dict(operation, responses=dict(sorted(operation["responses"].items())))


def _sms_paths() -> dict[str, Any]:
    return {
        "/v1/sms/otp": {
            "post": _sms_operation(
                "request_sms_code",
                "Send a verification code to a patient's phone for login, binding a medical card or paying. Pass "
                "what the app knows of the browser (client) and of the person (identity): the defences against "
                "SMS pumping weigh them. The answer is the same whether a code went out or not.",
                (sms_api.OtpSent, "Accepted."),
                sms_api.OtpBody,
            )
        },
        "/v1/sms/verify": {
            "post": _sms_operation(
                "verify_sms_code",
                "Check a code the patient typed; a code verifies once.",
                (sms_api.Verified, "Whether the code was right."),
                sms_api.VerifyBody,
            )
        },
    }


def build(version: str = "1") -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [
        (schemas.CreateOrder, "validation"),
        (schemas.RequestRefund, "validation"),
        (schemas.WindowRefund, "validation"),
        *(
            (m, "serialization")
            for m in (
                answers.OrderAnswer,
                answers.OrderWithRefunds,
                answers.OrderPage,
                answers.RefundAnswer,
                answers.EventPage,
                answers.ByRequestId,
                answers.Transactions,
                answers.Error,
                his_answers.PatientAnswer,
                his_answers.BillsAnswer,
                his_answers.LockAnswer,
            )
        ),
        (his.PatientQuery, "validation"),
        (his.BillsQuery, "validation"),
        (his.LockRequest, "validation"),
        (sms_api.OtpBody, "validation"),
        (sms_api.VerifyBody, "validation"),
        (sms_api.OtpSent, "serialization"),
        (sms_api.Verified, "serialization"),
    ]
    _, defs = models_json_schema(models, ref_template=REF)
    order_no = _path_param("business_order_no")
    paths = {
        "/v1/orders": {
            "post": _operation(
                "create_order",
                "Create an order (idempotent on business_order_no) and get what the front end pays with.",
                {
                    "201": (answers.OrderAnswer, "Created."),
                    "200": (answers.OrderAnswer, "The same request again: the order as it stands."),
                },
                ["403", "409", "422", "503"],
                body=schemas.CreateOrder,
                conflicts="business_order_no used with other content (order_conflict)",
            ),
            "get": _operation(
                "list_orders",
                "This hospital's orders, newest first.",
                {"200": (answers.OrderPage, "One page.")},
                ["409"],
                parameters=[
                    _query("page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "1-based page number"),
                    _query("page_size", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}, "orders a page"),
                    _query("status", {"type": "string", "enum": [s.value for s in OrderStatus]}, "only this status"),
                    _query("exceptions", FLAG, "only orders with an exception"),
                ],
            ),
        },
        "/v1/orders/{business_order_no}": {
            "get": _operation(
                "get_order",
                "One order and its refunds.",
                {"200": (answers.OrderWithRefunds, "The order.")},
                ["404", "409"],
                parameters=[order_no],
            )
        },
        "/v1/orders/{business_order_no}/close": {
            "post": _operation(
                "close_order",
                "Close an unpaid order, at the channel first; if the channel says it was paid, it is paid.",
                {"200": (answers.OrderAnswer, "The order as it stands now.")},
                ["404", "409"],
                parameters=[order_no],
                conflicts="the order is paid: refund it instead (order_paid, with the order)",
            )
        },
        "/v1/orders/{business_order_no}/refunds": {
            "post": _operation(
                "request_refund",
                "Refund part or all of a paid order (idempotent on business_refund_no).",
                {
                    "201": (answers.RefundAnswer, "Requested."),
                    "200": (answers.RefundAnswer, "The same request again: the refund as it stands."),
                },
                ["404", "409", "422"],
                body=schemas.RequestRefund,
                parameters=[order_no],
                conflicts="more than the order still covers (not_refundable), or business_refund_no reused "
                "(refund_conflict)",
            )
        },
        "/v1/refunds/{business_refund_no}": {
            "get": _operation(
                "get_refund",
                "One refund.",
                {"200": (answers.RefundAnswer, "The refund.")},
                ["404", "409"],
                parameters=[_path_param("business_refund_no")],
            )
        },
        "/v1/requests/{request_id}": {
            "get": _operation(
                "by_request_id",
                "What this app created under its own request id: how a caller settles a request whose answer it lost.",
                {"200": (answers.ByRequestId, "The order with its refunds, or the refund.")},
                ["404", "409"],
                parameters=[_path_param("request_id")],
            )
        },
        "/v1/window-refunds": {
            "post": _operation(
                "create_window_refund",
                "A refund the HIS already made at its cashier window (the hospital's agent app only): no HIS step "
                "is sent, and it is capped by what the payment still covers.",
                {
                    "201": (answers.RefundAnswer, "Requested."),
                    "200": (answers.RefundAnswer, "The same request again: the refund as it stands."),
                },
                ["403", "404", "409", "422"],
                body=schemas.WindowRefund,
                conflicts="more than the payment still covers (not_refundable), or business_refund_no reused "
                "(refund_conflict)",
            )
        },
        "/v1/transactions": {
            "get": _operation(
                "transactions",
                "A terminal's (agent apps) or the calling app's payments and refunds of one day, with totals.",
                {"200": (answers.Transactions, "The day.")},
                ["403", "409"],
                parameters=[
                    {
                        "name": "date",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "format": "date"},
                        "description": "the day, YYYY-MM-DD (Asia/Shanghai)",
                    },
                    _query(
                        "terminal_id",
                        {"type": "string", "minLength": 1, "maxLength": 64, "pattern": CODE},
                        "one terminal's (agent apps only)",
                    ),
                ],
            )
        },
        "/v1/events": {
            "get": _operation(
                "list_events",
                "The pull side of the notifications, oldest first.",
                {"200": (answers.EventPage, "Events after ?after=.")},
                ["409"],
                parameters=[
                    _query(
                        "after", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "next_after of the last page"
                    ),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "events a page"),
                    _query("undelivered", FLAG, "only those not delivered"),
                ],
            )
        },
    }
    paths.update(_his_paths())
    paths.update(_sms_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "HIS Bridge gateway business API", "version": version, "description": SIGNING},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "HB1": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-HB-Key-Id",
                    "description": "The app id; the request must also carry X-HB-Timestamp, X-HB-Nonce and "
                    "X-HB-Signature as the document's description says.",
                }
            },
        },
    }
