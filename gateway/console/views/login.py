"""Signing in and out. The session cookie is HttpOnly and SameSite=Strict, Secure when the gateway is reached
over HTTPS, and scoped to the console's path; the login form has its own CSRF token (double submit)."""

from __future__ import annotations

from aiohttp import web

from gateway.console import auth, csrf, sessions
from gateway.console.views import BASE, SERVICES, SESSION, redirect, render

MAX_FIELD = 256


def _secure(request: web.Request) -> bool:
    return request.app[SERVICES].cfg.server.public_url.startswith("https://") or request.secure


def _next(target: str | None) -> str:
    """Only a path inside the console: an open redirect would let a link send a user elsewhere after sign-in."""
    if target and target.startswith(BASE + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return BASE + "/"


def _form(request: web.Request, *, status: int = 200, error: str | None = None, username: str = "") -> web.Response:
    token = request.cookies.get(csrf.PRE_COOKIE) or csrf.new_token()
    response = render(
        request,
        "login.html",
        status=status,
        error=error,
        username=username,
        next=_next(request.query.get("next")),
        expired=request.query.get("expired") == "1",
        csrf_token=token,
    )
    response.set_cookie(
        csrf.PRE_COOKIE, token, path=BASE, httponly=True, samesite="Strict", secure=_secure(request), max_age=3600
    )
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    if request.get(SESSION) is not None:
        return redirect(_next(request.query.get("next")))
    return _form(request)


async def login_submit(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    form = await request.post()
    username = str(form.get("username", ""))[:MAX_FIELD].strip()
    password = str(form.get("password", ""))[:MAX_FIELD]
    if not csrf.valid(request.cookies.get(csrf.PRE_COOKIE), str(form.get(csrf.FIELD, ""))):
        return _form(request, status=403, error="error.csrf", username=username)
    cfg = svc.cfg.console
    try:
        user = await auth.login(
            svc.db,
            username,
            password,
            request.remote or "",
            max_failures=cfg.login_max_failures,
            window_s=cfg.login_window_s,
        )
    except auth.LoginThrottled:
        return _form(request, status=429, error="login.throttled", username=username)
    if user is None:
        return _form(request, status=401, error="login.failed", username=username)
    token, _ = await sessions.create(svc.db, user, max_s=cfg.session_max_s)
    response = redirect(_next(str(form.get("next", ""))))
    response.set_cookie(
        sessions.COOKIE,
        token,
        path=BASE,
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
        max_age=cfg.session_max_s,
    )
    response.del_cookie(csrf.PRE_COOKIE, path=BASE)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    session = request.get(SESSION)
    if session is not None:
        await sessions.end(request.app[SERVICES].db, session.id)
    response = redirect("/login")
    response.del_cookie(sessions.COOKIE, path=BASE)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
