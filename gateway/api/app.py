"""The gateway's HTTP application: the business API under ``/v1`` and the channel callbacks under ``/notify``.

sign response (/v1) → errors → authenticate app (/v1) → handler
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bridge import protocol
from gateway.api import callbacks, events, orders
from gateway.api.auth import SERVICES, SIGNING_KEY, Handler, auth_middleware, sign_middleware
from gateway.api.errors import ApiError
from gateway.api.orders import json_response
from gateway.services import Services, log


def _error(e: ApiError) -> web.Response:
    return json_response(e.status, e.body())


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e)
    except web.HTTPRequestEntityTooLarge as e:
        return _error(ApiError(413, "body_too_large", e.text or "request body too large"))
    except web.HTTPNotFound:
        return _error(ApiError(404, "not_found", f"no such resource {request.path}"))
    except web.HTTPMethodNotAllowed:
        return _error(ApiError(405, "method_not_allowed", f"{request.method} not allowed here"))
    except Exception:
        log.exception("internal_error", path=request.path)
        return _error(ApiError(500, "internal", "internal error"))


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"ok": True, "instance": request.app[SERVICES].instance})


def create_app(svc: Services, signing_key: protocol.SigningKey, **kwargs: Any) -> web.Application:
    app = web.Application(
        client_max_size=svc.cfg.server.max_body_bytes,
        middlewares=[sign_middleware, error_middleware, auth_middleware],
        **kwargs,
    )
    app[SERVICES] = svc
    app[SIGNING_KEY] = signing_key
    orders.add_routes(app)
    events.add_routes(app)
    callbacks.add_routes(app)
    app.router.add_get("/healthz", healthz)
    return app
