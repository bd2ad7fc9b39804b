"""The intranet listener's HTTP API: a small JSON API for kiosks and cashier windows.

    sign answer (HMAC terminals) → errors → identify terminal (address, certificate or HMAC, nonce)
        → per-terminal concurrency → handler

``POST /v1/terminal/{operation}`` for ``pay.codepay``, ``pay.qr``, ``pay.query``, ``pay.close``, ``refund``,
``refund.query`` and ``transactions``; ``GET /v1/terminal/requests/{request_id}`` for the stored outcome of
any of this terminal's payments and refunds. Only these exist: the agent forwards nothing else to the cloud.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from bridge import protocol, terminal_protocol, tls
from bridge.egress.forwarder import CloudUnreachable
from bridge.egress.journal import EgressJournalUnavailable, NonceReplayed, RequestConflict
from bridge.errors import AUTH_STATUS, ApiError
from bridge.intranet import openapi
from bridge.intranet.config import IntranetTls, TerminalOperation
from bridge.intranet.schemas import INPUT
from bridge.intranet.service import OPERATIONS, WRITES, Intranet, http_status
from bridge.intranet.terminals import Terminal, TerminalRefused
from bridge.logs import get_logger
from bridge.version import agent_version

log = get_logger("bridge.intranet")

INTRANET = web.AppKey("intranet", Intranet)
TERMINAL = web.RequestKey("terminal", Terminal)
BODY = web.RequestKey("body", bytes)
NONCE = web.RequestKey("terminal_nonce", tuple)
OUTCOME = web.ResponseKey("outcome", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body, ensure_ascii=False).encode(), content_type="application/json"
    )


def _refusal(e: ApiError) -> web.Response:
    response = _json(e.status, e.to_body())
    response[OUTCOME] = e.code
    return response


@web.middleware
async def sign_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An HMAC terminal gets every answer signed with its key over its nonce, refusals included."""
    response = await handler(request)
    terminal = request.get(TERMINAL)
    nonce = request.headers.get(terminal_protocol.HEADER_NONCE, "")[:64]
    if terminal is not None and terminal.key is not None and isinstance(response, web.Response) and response.body:
        body = bytes(response.body)  # type: ignore[arg-type]
        response.headers.update(terminal_protocol.sign_response(terminal.key, response.status, nonce, body))
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    intranet = request.app[INTRANET]
    try:
        response = await handler(request)
    except ApiError as e:
        intranet.metrics.refusals.labels(e.code).inc()
        response = _refusal(e)
    except web.HTTPRequestEntityTooLarge as e:
        intranet.metrics.refusals.labels("body_too_large").inc()
        response = _refusal(ApiError(413, "body_too_large", e.text or "request body too large"))
    except web.HTTPNotFound:
        response = _refusal(ApiError(404, "not_found", f"no such resource {request.path}"))
    except web.HTTPMethodNotAllowed:
        response = _refusal(ApiError(405, "method_not_allowed", f"{request.method} not allowed here"))
    except EgressJournalUnavailable as e:
        log.error("egress_journal_unavailable", error=str(e))
        response = _refusal(
            ApiError(503, "journal_unavailable", "the agent cannot write its journal; nothing was accepted")
        )
    except Exception:
        log.exception("intranet_internal_error", path=request.path)
        response = _refusal(ApiError(500, "internal", "internal error; nothing was forwarded"))
    terminal = request.get(TERMINAL)
    if terminal is not None:
        operation = request.match_info.get("operation", "status")
        outcome = response.get(OUTCOME, str(response.status))
        label = operation if operation in OPERATIONS else "other"
        intranet.metrics.requests.labels(terminal.id, label, outcome).inc()
    return response


def auth_middleware_factory() -> Callable[..., Any]:
    slots: dict[str, asyncio.Semaphore] = {}

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        intranet = request.app[INTRANET]
        terminals = intranet.terminals
        if not terminals.any_allows(request.remote):
            raise TerminalRefused(403, "address_not_allowed", f"{request.remote} is not a terminal address")
        if request.path == "/openapi.json":
            return await handler(request)
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        identity = tls.peer_identity(ssl_object)
        claimed = terminal_protocol.claimed_terminal(request.headers)
        if claimed is not None:
            terminal = terminals.by_id.get(claimed)
        elif request.headers.get(terminal_protocol.HEADER_TERMINAL):
            raise TerminalRefused(401, "unknown_terminal", "X-HBT-Terminal is not a terminal id")
        elif identity is not None:
            terminal = terminals.by_certificate(identity)
        else:
            raise TerminalRefused(
                401, "unsigned", "name the terminal (X-HBT-Terminal) and sign the request, or present its certificate"
            )
        if terminal is None:
            who = claimed or (identity.cn if identity else None)
            raise TerminalRefused(401, "unknown_terminal", f"{who!r} is not a registered terminal")
        if not terminal.from_allowed_address(request.remote):
            raise TerminalRefused(
                403, "address_not_allowed", f"terminal {terminal.id} may not call from {request.remote}"
            )
        body = await request.read()
        if terminal.cfg.auth == "mtls":
            if not terminal.matches(identity):
                raise TerminalRefused(
                    401,
                    "client_certificate_required",
                    f"terminal {terminal.id} authenticates with its certificate from the hospital CA",
                )
            request[TERMINAL] = terminal
        else:
            assert terminal.key is not None
            try:
                verified = terminal_protocol.verify_request(
                    terminal.key,
                    request.method,
                    request.path_qs,
                    request.headers,
                    body,
                    window_s=intranet.cfg.timestamp_window_s,
                )
            except protocol.EnvelopeError as e:
                raise TerminalRefused(AUTH_STATUS.get(e.code, 401), e.code, e.message) from None
            request[TERMINAL] = terminal
            request[NONCE] = (terminal.id, verified.nonce, intranet.nonce_expiry(verified.timestamp))
        if not terminal.cfg.enabled:
            await _spend_nonce(request)
            raise TerminalRefused(403, "terminal_disabled", f"terminal {terminal.id} is disabled in the agent's config")
        request[BODY] = body
        sem = slots.setdefault(terminal.id, asyncio.Semaphore(intranet.cfg.per_terminal_concurrency))
        if sem.locked():
            await _spend_nonce(request)
            raise TerminalRefused(
                429,
                "too_many_requests",
                f"more than {intranet.cfg.per_terminal_concurrency} requests in flight from terminal {terminal.id}",
            )
        async with sem:
            return await handler(request)

    return auth_middleware


async def _spend_nonce(request: web.Request) -> None:
    """A refused request still uses up its nonce, so that it cannot be replayed once the refusal no longer
    applies. Writes remember theirs in the same commit as their journal entry instead."""
    nonce = request.get(NONCE)
    if nonce is None:
        return
    if not await request.app[INTRANET].forwarder.journal.remember_nonce(*nonce):
        raise _replayed()


def _replayed() -> TerminalRefused:
    return TerminalRefused(409, "replayed_nonce", "this nonce was already used; sign every request afresh")


def _parse(request: web.Request, operation: TerminalOperation) -> Any:
    try:
        data = json.loads(request[BODY] or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TerminalRefused(400, "malformed_json", f"body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise TerminalRefused(400, "malformed_json", "body must be a JSON object")
    try:
        return INPUT[operation].model_validate(data)
    except ValidationError as e:
        details = [{"field": ".".join(str(p) for p in err["loc"]), "problem": err["msg"]} for err in e.errors()]
        raise ApiError(422, "schema_violation", f"{len(details)} invalid field(s)", details) from None


def _answer(answer: dict[str, Any]) -> web.Response:
    response = _json(http_status(answer), answer)
    response[OUTCOME] = str(answer.get("status") or "unknown")
    return response


async def handle_operation(request: web.Request) -> web.Response:
    intranet = request.app[INTRANET]
    terminal = request[TERMINAL]
    operation = OPERATIONS.get(request.match_info["operation"])
    if operation is None:
        await _spend_nonce(request)
        raise TerminalRefused(404, "unknown_operation", f"{request.match_info['operation'][:64]!r} is not an operation")
    if not terminal.may(operation):
        await _spend_nonce(request)
        raise TerminalRefused(
            403, "operation_not_allowed", f"terminal {terminal.id} ({terminal.cfg.kind}) may not call {operation}"
        )
    try:
        body = _parse(request, operation)
        if operation in WRITES:
            sub = intranet.submission(terminal, operation, body, request.remote, request.get(NONCE))
    except ApiError:
        await _spend_nonce(request)
        raise
    if operation in WRITES:
        try:
            accepted = await intranet.accept(sub)
        except NonceReplayed:
            raise _replayed() from None
        except RequestConflict as e:
            raise TerminalRefused(
                409,
                "request_conflict",
                f"request_id {e.existing.request_id} was used for a different {e.existing.operation} request",
            ) from None
        except TerminalRefused:
            await _spend_nonce(request)
            raise
        return _answer(await intranet.answer(accepted.entry, wait=True, just_forwarded=accepted.created))
    await _spend_nonce(request)
    if operation is TerminalOperation.transactions:
        try:
            return _json(200, await intranet.transactions(terminal, body.date))
        except CloudUnreachable as e:
            raise TerminalRefused(503, "cloud_unreachable", f"the payment platform cannot be reached: {e}") from None
    kind = "refund" if operation is TerminalOperation.refund_query else "pay"
    entry = await intranet.own_request(terminal, body.request_id, kind)
    if operation is TerminalOperation.pay_close:
        answer = await intranet.answer(entry, wait=False)
        if answer.get("status") not in ("waiting", "pending") or entry.state.value != "done":
            return _answer(answer)
        try:
            return _answer(await intranet.forwarder.close_payment(entry))
        except CloudUnreachable as e:
            raise TerminalRefused(503, "cloud_unreachable", f"the payment platform cannot be reached: {e}") from None
    return _answer(await intranet.answer(entry, wait=True))


async def handle_status(request: web.Request) -> web.Response:
    intranet = request.app[INTRANET]
    await _spend_nonce(request)
    entry = await intranet.own_request(request[TERMINAL], request.match_info["request_id"], None)
    return _answer(await intranet.answer(entry, wait=True))


def create_intranet_app(intranet: Intranet) -> web.Application:
    app = web.Application(
        client_max_size=intranet.cfg.max_body_bytes,
        middlewares=[sign_middleware, error_middleware, auth_middleware_factory()],
    )
    app[INTRANET] = intranet
    app.router.add_post("/v1/terminal/{operation}", handle_operation)
    app.router.add_get("/v1/terminal/requests/{request_id}", handle_status)
    document = openapi.document(agent_version())

    async def openapi_json(_request: web.Request) -> web.Response:
        return _json(200, document)

    app.router.add_get("/openapi.json", openapi_json)
    return app


def server_context(cfg: IntranetTls) -> ssl.SSLContext:
    """TLS for the intranet listener: the agent's LAN certificate, and — when the hospital has its own CA —
    client certificates from it requested but optional (HMAC terminals present none)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    if cfg.terminal_ca is not None:
        ctx.load_verify_locations(cafile=str(cfg.terminal_ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
