"""The gateway's HTTP application: the business API under ``/v1`` and the channel callbacks under ``/notify``.

sign response (/v1) → errors → authenticate app (/v1) → handler
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bridge import protocol
from bridge.errors import ApiError
from gateway.api import channel_callbacks, client_address, events, his, openapi, orders, terminals
from gateway.api.auth import SERVICES, SIGNING_KEY, Handler, auth_middleware, sign_middleware
from gateway.api.orders import json_response
from gateway.channels import metrics as channel_metrics
from gateway.console.app import create_console_app
from gateway.platform_metrics import PlatformMetrics
from gateway.services import Services, log
from gateway.sms import api as sms_api
from gateway.sms.service import SmsService

CHANNEL_KEYS = web.AppKey("channel_keys", CollectorRegistry)
PLATFORM_METRICS = web.AppKey("platform_metrics", PlatformMetrics)


def _error(e: ApiError) -> web.Response:
    return json_response(e.status, e.to_body())


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
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError) as e:
        # The store busy or briefly away (a lock wait, a full pool, a failover): nothing was committed, and the
        # same request sent again is safe (requests are idempotent by their numbers), so say so.
        log.warning("store_unavailable", path=request.path, error=str(e).splitlines()[0][:200])
        response = _error(
            ApiError(503, "store_unavailable", "the platform's database is busy; send the same request again")
        )
        response.headers["Retry-After"] = "1"
        return response
    except Exception:
        log.exception("internal_error", path=request.path)
        return _error(ApiError(500, "internal", "internal error"))


OPENAPI = web.AppKey("openapi", bytes)


async def openapi_json(request: web.Request) -> web.Response:
    """The business API's contract, for app developers and generated clients (public, unsigned)."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"ok": True, "instance": request.app[SERVICES].instance})


METRICS_TOKEN = web.AppKey("metrics_token", str)


def read_metrics_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").partition("\n")[0].strip()
    except OSError as e:
        raise ValueError(f"metrics.token_file {path}: {e.strerror}") from None
    if len(token) < 16:
        raise ValueError(f"metrics.token_file {path}: the token needs at least 16 characters")
    return token


def _metrics_allowed(request: web.Request) -> bool:
    cfg = request.app[SERVICES].cfg.metrics
    if client_address.within(client_address.parse_address(request.remote), client_address.networks(cfg.allow)):
        return True
    token = request.app.get(METRICS_TOKEN)
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    return token is not None and scheme.lower() == "bearer" and hmac.compare_digest(offered.encode(), token.encode())


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics, to the addresses in ``metrics.allow`` or a scraper with the bearer token only: the
    listener faces the internet, and the figures name hospitals."""
    if not _metrics_allowed(request):
        return _error(
            ApiError(403, "forbidden", "metrics are served only to metrics.allow addresses or with the bearer token")
        )
    svc = request.app[SERVICES]
    await svc.metrics.refresh(svc.db, svc.cfg.workers.his_stuck_after_s)
    platform = request.app[PLATFORM_METRICS]
    await platform.refresh(svc.db, svc.tenants.version)
    sms = request.app.get(sms_api.SMS)
    registries = [svc.metrics.registry, platform.registry, request.app[CHANNEL_KEYS]]
    registries += [sms.metrics.registry] if sms is not None else []
    body = b"".join(generate_latest(r) for r in registries)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(
    svc: Services, signing_key: protocol.SigningKey, *, sms: SmsService | None = None, **kwargs: Any
) -> web.Application:
    app = web.Application(
        client_max_size=svc.cfg.server.max_body_bytes,
        middlewares=[client_address.client_address_middleware, sign_middleware, error_middleware, auth_middleware],
        **kwargs,
    )
    app[SERVICES] = svc
    app[SIGNING_KEY] = signing_key
    app[CHANNEL_KEYS] = channel_metrics.registry(svc.channels)
    app[PLATFORM_METRICS] = PlatformMetrics()
    if svc.cfg.metrics.token_file is not None:
        app[METRICS_TOKEN] = read_metrics_token(svc.cfg.metrics.token_file)
    orders.add_routes(app)
    terminals.add_routes(app)
    events.add_routes(app)
    his.add_routes(app)
    channel_callbacks.add_routes(app)
    if sms is not None:
        sms_api.add_routes(app, sms)
    app[OPENAPI] = json.dumps(openapi.build(), ensure_ascii=False).encode()
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if svc.cfg.console.enabled:
        app.add_subapp("/console", create_console_app(svc))
    return app
