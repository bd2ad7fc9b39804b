"""The console's aiohttp application, mounted by the gateway at ``/console``.

    language (``?lang=`` / cookie) → session (cookie) → sign-in required → CSRF on every POST → view

Everything the console answers is HTML (or an export) and goes through one middleware, so an error becomes
a page in the user's language and never the business API's JSON. Pages carry a strict Content-Security-Policy:
the console loads nothing but its own stylesheet and script.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import jinja2
from aiohttp import web

from gateway.console import actions, csrf, i18n, sessions
from gateway.console.formatting import cell, local_time, yuan
from gateway.console.views import BASE, ENV, LANG, SERVICES, SESSION, Handler, redirect, render
from gateway.console.views import exceptions as exception_views
from gateway.console.views import login as login_views
from gateway.console.views import records as record_views
from gateway.console.views import summary as summary_views
from gateway.console.views import tenants as tenant_views
from gateway.services import Services, log

HERE = Path(__file__).resolve().parent
PUBLIC = ("/login", "/static/")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yuan"] = yuan
    env.filters["local_time"] = local_time
    env.filters["cell"] = cell
    return env


def _local_path(request: web.Request) -> str:
    return request.path[len(BASE) :] or "/"


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    svc = request.app[SERVICES]
    lang = i18n.pick(request.query.get("lang"), request.cookies.get(i18n.COOKIE))
    request[LANG] = lang
    path = _local_path(request)
    try:
        session = await sessions.load(
            svc.db, request.cookies.get(sessions.COOKIE, ""), idle_s=svc.cfg.console.session_idle_s
        )
        request[SESSION] = session
        if session is None and not path.startswith(PUBLIC):
            target = request.path_qs if request.method == "GET" else BASE + "/"
            return redirect(f"{BASE}/login", next=target, expired="1" if sessions.COOKIE in request.cookies else None)
        if request.method == "POST" and not path.startswith("/login"):
            form = await request.post()
            if session is None or not csrf.valid(session.csrf_token, str(form.get(csrf.FIELD, ""))):
                return render(request, "error.html", status=403, message="error.csrf")
        response = await handler(request)
    except web.HTTPException as e:
        if e.status == 404:
            response = render(request, "error.html", status=404, message="error.not_found")
        elif e.status == 405:
            response = render(request, "error.html", status=405, message="error.not_found")
        else:
            response = web.Response(status=e.status, text=e.text or "", headers=e.headers)
    except Exception:
        log.exception("console_error", path=request.path)
        response = render(request, "error.html", status=500, message="error.internal")
    if "lang" in request.query and request.query["lang"] in i18n.LANGS:
        response.set_cookie(i18n.COOKIE, lang, path=BASE, max_age=365 * 86400, samesite="Strict", httponly=True)
    response.headers.update(SECURITY_HEADERS)
    if not path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _settler(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(actions.settle_forever(app[SERVICES]), name="console-settle")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_console_app(svc: Services, *, settle_in_background: bool = True) -> web.Application:
    app = web.Application(middlewares=[console_middleware])
    app[SERVICES] = svc
    app[ENV] = _environment()
    login_views.add_routes(app)
    summary_views.add_routes(app)
    exception_views.add_routes(app)
    record_views.add_routes(app)
    tenant_views.add_routes(app)
    app.router.add_static("/static/", HERE / "static")
    if settle_in_background:
        app.cleanup_ctx.append(_settler)
    return app


def console_url(public_url: str) -> str:
    return public_url.rstrip("/") + BASE + "/"
