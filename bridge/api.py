"""The signed API on the mutual-TLS listener: the request path as a pipeline of small middlewares.

    sign response → errors → client identity → concurrency limit → authenticate → handler

Only catalog operations exist here: the agent is never a general proxy into the intranet.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from bridge import catalog, openapi, protocol, tls
from bridge.agent import Agent, agent_lifetime
from bridge.dispatcher import HisUnavailable, ReadFailed
from bridge.errors import ApiError, auth_error
from bridge.journal import Entry, JournalUnavailable, NonceReplayed, RequestConflict, State
from bridge.logs import get_logger
from bridge.version import agent_version

log = get_logger("bridge.api")

AGENT = web.AppKey("agent", Agent)
CLIENT_ID = web.RequestKey("client_id", str)
CLIENT = web.RequestKey("client", tls.AllowedClient)
BODY = web.RequestKey("body", bytes)
NONCE = web.RequestKey("nonce", tuple)
ERROR_CODE = web.ResponseKey("error_code", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body, ensure_ascii=False).encode(), content_type="application/json"
    )


def _operation_label(request: web.Request) -> str:
    name = request.match_info.get("operation")
    if name in catalog.OPERATIONS:
        return name
    return "status" if "request_id" in request.match_info else "other"


def _error(e: ApiError) -> web.Response:
    response = _json(e.status, e.to_body())
    response[ERROR_CODE] = e.code
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error with a stable code, and count every answer by that code."""
    agent = request.app[AGENT]
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as e:
        response = _error(e)
    except web.HTTPRequestEntityTooLarge as e:
        response = _error(ApiError(413, "body_too_large", e.text or "request body too large"))
    except web.HTTPNotFound:
        response = _error(ApiError(404, "not_found", f"no such resource {request.path}"))
    except web.HTTPMethodNotAllowed:
        response = _error(ApiError(405, "method_not_allowed", f"{request.method} not allowed here"))
    except JournalUnavailable as e:
        log.error("journal_unavailable", error=str(e))
        response = _error(
            ApiError(
                503,
                "journal_unavailable",
                "the agent cannot write its journal (disk full or I/O error); nothing was accepted, retry later",
                {"reason": agent.journal.failing or str(e)},
            )
        )
    except Exception:
        log.exception("internal_error", path=request.path)
        response = _error(ApiError(500, "internal", "internal error; nothing was accepted"))
    op = _operation_label(request)
    agent.metrics.requests.labels(op, str(response.get(ERROR_CODE, response.status))).inc()
    agent.metrics.request_seconds.labels(op).observe(time.perf_counter() - started)
    return response


@web.middleware
async def sign_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sign every answer over the request's nonce, errors included, so the caller can trust even a refusal."""
    response = await handler(request)
    if isinstance(response, web.Response) and response.body is not None:
        nonce = request.headers.get(protocol.HEADER_NONCE, "")[:64]
        body = bytes(response.body)  # type: ignore[arg-type]
        response.headers.update(protocol.sign_response(request.app[AGENT].signing_key, response.status, nonce, body))
    return response


def identity_middleware_factory() -> Callable[..., Any]:
    slots: dict[str, asyncio.Semaphore] = {}

    @web.middleware
    async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        agent = request.app[AGENT]
        identity = tls.peer_identity(request.transport.get_extra_info("ssl_object") if request.transport else None)
        allowed = agent.identity_policy.match(identity) if identity is not None else None
        if identity is None or allowed is None:
            agent.metrics.auth_failures.labels("client_not_allowed").inc()
            who = identity.cn if identity else None
            raise ApiError(403, "client_not_allowed", f"client certificate {who!r} is not an allowed identity")
        request[CLIENT_ID] = identity.client_id
        request[CLIENT] = allowed
        sem = slots.setdefault(identity.client_id, asyncio.Semaphore(agent.cfg.server.per_client_concurrency))
        if sem.locked():
            raise ApiError(
                429,
                "too_many_requests",
                f"more than {agent.cfg.server.per_client_concurrency} concurrent requests from this client",
            )
        async with sem:
            return await handler(request)

    return identity_middleware


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    agent = request.app[AGENT]
    if request.path == "/openapi.json":
        return await handler(request)
    if not agent.ready:
        raise ApiError(503, "not_ready", "the agent is recovering its journal")
    body = await request.read()
    key_id = request.headers.get(protocol.HEADER_KEY_ID, "")
    if key_id in agent.client_keys and not request[CLIENT].may_sign_with(key_id):
        agent.metrics.auth_failures.labels("key_not_bound").inc()
        raise ApiError(
            401, "key_not_bound", f"key id {key_id!r} is not bound to the client certificate {request[CLIENT_ID]!r}"
        )
    try:
        verified = protocol.verify_request(
            agent.client_keys,
            request.method,
            request.path_qs,
            request.headers,
            body,
            window_s=agent.cfg.signing.timestamp_window_s,
        )
    except protocol.EnvelopeError as e:
        agent.metrics.auth_failures.labels(e.code).inc()
        raise auth_error(e.code, e.message) from None
    nonce = (verified.key_id, verified.nonce, verified.timestamp + agent.cfg.signing.timestamp_window_s + 60)
    request[BODY] = body
    request[NONCE] = nonce
    if _is_write(request):
        return await handler(request)  # the nonce is remembered in the same commit as the journal entry
    await _remember_nonce(request)
    return await handler(request)


def _is_write(request: web.Request) -> bool:
    return request.method == "POST" and request.match_info.get("operation") in catalog.WRITE_OPERATIONS


async def _remember_nonce(request: web.Request) -> None:
    agent = request.app[AGENT]
    if not await agent.journal.remember_nonce(*request[NONCE]):
        raise _replayed(agent)


def _replayed(agent: Agent) -> ApiError:
    agent.metrics.auth_failures.labels("replayed_nonce").inc()
    return ApiError(409, "replayed_nonce", "this nonce was already used; sign every attempt afresh")


def _parse(request: web.Request, op: catalog.Operation) -> catalog.Strict:
    try:
        data = json.loads(request[BODY])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "body is nested too deeply to be any operation's input") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "body must be a JSON object")
    try:
        return op.input.model_validate(data)
    except ValidationError as e:
        details = [{"field": ".".join(str(p) for p in err["loc"]), "problem": err["msg"]} for err in e.errors()]
        raise ApiError(422, "schema_violation", f"{op.name}: {len(details)} invalid field(s)", details) from None


def _write_answer(entry: Entry) -> web.Response:
    status = {State.done: "done", State.failed: "failed"}.get(entry.state, "pending")
    body = {
        "status": status,
        "state": entry.state.value,
        "request_id": entry.request_id,
        "journal_id": entry.seq,
        "operation": entry.operation,
        "result": entry.result if entry.state is State.done else None,
        "error": entry.error if entry.state is not State.done else None,
        "note": entry.note,
    }
    return _json(200 if status != "pending" else 202, body)


async def handle_operation(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    name = request.match_info["operation"]
    op = catalog.get(name)
    if op is None:
        raise ApiError(404, "unknown_operation", f"{name[:64]!r} is not a catalog operation")
    try:
        params = _parse(request, op)
    except Exception:
        if op.write:
            await _remember_nonce(request)  # a refused write still spends its nonce, whatever refused it
        raise
    params_json = params.model_dump(mode="json")
    if not op.write:
        try:
            result = await agent.dispatcher.read(name, params_json)
        except HisUnavailable as e:
            raise ApiError(503, "his_unavailable", str(e)) from None
        except ReadFailed as e:
            if e.error.get("kind") == "permanent":
                return _json(200, {"status": "failed", "operation": name, "result": None, "error": e.error})
            code = "his_timeout" if e.error.get("code") == "his_timeout" else "his_error"
            raise ApiError(504 if code == "his_timeout" else 502, code, e.error.get("message", ""), e.error) from None
        return _json(200, {"status": "done", "operation": name, "result": result, "error": None})

    digest = hashlib.sha256(
        json.dumps([name, params_json], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    try:
        entry, created = await agent.journal.accept(
            request_id=params.request_id,  # type: ignore[attr-defined]
            client_id=request[CLIENT_ID],
            operation=name,
            business_key=params.trade_no,  # type: ignore[attr-defined]
            body_sha256=digest,
            params=params_json,
            nonce=request[NONCE],
        )
    except NonceReplayed:
        raise _replayed(agent) from None
    except RequestConflict as e:
        if e.entry.client_id != request[CLIENT_ID]:
            raise ApiError(409, "request_conflict", f"request_id {e.entry.request_id} is already in use") from None
        raise ApiError(
            409,
            "request_conflict",
            f"request_id {e.entry.request_id} was used for a different {e.entry.operation} request",
            {"journal_id": e.entry.seq},
        ) from None
    if created:
        agent.dispatcher.submit(entry)
    if entry.state in (State.done, State.failed):
        return _write_answer(entry)
    finished = await agent.dispatcher.wait(entry.seq, agent.cfg.dispatch.sync_deadline_s)
    if finished is None:
        finished = await agent.journal.get_seq(entry.seq) or entry
    return _write_answer(finished)


async def handle_status(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    request_id = request.match_info["request_id"]
    entry = await agent.journal.get(request_id)
    if entry is None or entry.client_id != request[CLIENT_ID]:  # another client's write does not exist for this one
        raise ApiError(404, "not_found", f"no journal entry for request_id {request_id[:64]!r}")
    return _write_answer(entry)


def create_api_app(agent: Agent) -> web.Application:
    app = web.Application(
        client_max_size=agent.cfg.server.max_body_bytes,
        middlewares=[sign_middleware, error_middleware, identity_middleware_factory(), auth_middleware],
    )
    app[AGENT] = agent

    async def lifetime(_app: web.Application) -> Any:
        async with agent_lifetime(agent):
            yield

    app.cleanup_ctx.append(lifetime)
    app.router.add_post("/v1/ops/{operation}", handle_operation)
    app.router.add_get("/v1/operations/{request_id}", handle_status)
    document = openapi.build(agent_version())

    async def openapi_json(_request: web.Request) -> web.Response:
        return _json(200, document)

    app.router.add_get("/openapi.json", openapi_json)
    return app
