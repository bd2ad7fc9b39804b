"""Authentication of hospital apps: the bridge's signed envelope, each app with its own key.

The key id names the app; its public key comes from the registry in the database, so every instance knows
every app. A nonce is remembered in the database until its timestamp window has passed, which makes a
replay fail on any instance and after a restart. Answers are signed by the gateway over the request's nonce.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from bridge import protocol
from bridge.errors import ApiError, auth_error
from gateway.api import permissions
from gateway.model import utcnow
from gateway.services import Services, log
from gateway.store import nonces, registry

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICES = web.AppKey("services", Services)
SIGNING_KEY = web.AppKey("signing_key", protocol.SigningKey)
APP = web.RequestKey("app", registry.App)
BODY = web.RequestKey("body", bytes)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    svc = request.app[SERVICES]
    window = svc.cfg.signing.timestamp_window_s
    client_cn = peer_cn(request)  # before the body is read: a caller that hangs up takes its transport with it
    body = await request.read()
    key_id = request.headers.get(protocol.HEADER_KEY_ID, "")
    app = await registry.load_app(svc.db, key_id) if protocol.KEY_ID_RE.match(key_id) else None
    try:
        verified = _verify(app, request, body, window)
    except protocol.EnvelopeError as e:
        log.info("api_auth_refused", code=e.code, key_id=key_id[:64])
        raise auth_error(e.code, e.message) from None
    assert app is not None
    if app.client_cert_cn is not None and client_cn != app.client_cert_cn:
        log.info("api_client_cert_refused", app=app.id, cn=client_cn)
        raise ApiError(
            403, "client_not_allowed", f"app {app.id} calls over mutual TLS with its own client certificate only"
        )
    operation = permissions.required(request)
    if operation is not None and operation not in app.operations:
        log.info("api_operation_refused", app=app.id, operation=operation)
        raise ApiError(
            403, "operation_not_allowed", f"app {app.id} may not call {operation}; its hospital's platform grants it"
        )
    expires = dt.datetime.fromtimestamp(verified.timestamp + window + 60, dt.UTC)
    if not await nonces.remember(svc.db, app.id, verified.nonce, expires):
        raise auth_error("replayed_nonce", "this nonce was already used; sign every request afresh")
    request[APP] = app
    request[BODY] = body
    return await handler(request)


def _verify(app: registry.App | None, request: web.Request, body: bytes, window: int) -> protocol.VerifiedRequest:
    """Verify against the app's keys valid now, newest first. A signature that only a retired (or not yet valid)
    key of the app verifies, or a valid one from a disabled app, is refused saying so: only the key's holder
    can learn it."""

    def check(key: protocol.VerifyKey) -> protocol.VerifiedRequest:
        return protocol.verify_request(
            {key.key_id: key}, request.method, request.path_qs, request.headers, body, window_s=window
        )

    if app is None:
        return protocol.verify_request({}, request.method, request.path_qs, request.headers, body, window_s=window)
    now = utcnow()
    error: protocol.EnvelopeError | None = None
    for key in app.verify_keys(now):
        try:
            verified = check(key)
        except protocol.EnvelopeError as e:
            if e.code != "bad_signature":
                raise
            error = e
            continue
        if not app.enabled:
            raise protocol.EnvelopeError("app_disabled", f"app {app.id} is disabled (or its hospital is)")
        return verified
    for other in app.other_keys(now):
        try:
            check(other.verify_key(app.id))
        except protocol.EnvelopeError:
            continue
        when = (
            f"retired at {other.retire_at.isoformat()}"
            if other.retire_at and other.retire_at <= now
            else (f"valid from {other.valid_from.isoformat() if other.valid_from else '?'}")
        )
        raise protocol.EnvelopeError(
            "key_not_valid", f"signed with app {app.id}'s key {other.name}, {when}: sign with its current key"
        )
    raise error or protocol.EnvelopeError("bad_signature", "signature does not match the request")


def peer_cn(request: web.Request) -> str | None:
    """The subject CN of the client certificate this request came with (the mutual-TLS listener), if any."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return _cn_of(der) if der else None


@functools.lru_cache(maxsize=64)
def _cn_of(der: bytes) -> str | None:
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


@web.middleware
async def sign_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sign every API answer over the request's nonce, refusals included."""
    response = await handler(request)
    if request.path.startswith("/v1/") and isinstance(response, web.Response) and response.body is not None:
        nonce = request.headers.get(protocol.HEADER_NONCE, "")[:64]
        body = bytes(response.body)  # type: ignore[arg-type]
        response.headers.update(protocol.sign_response(request.app[SIGNING_KEY], response.status, nonce, body))
    return response
