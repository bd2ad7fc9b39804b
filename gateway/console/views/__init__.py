"""What every console page shares: the keys the application and the request carry, and rendering a template
with the user's language, session and CSRF token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from gateway.console import csrf, i18n
from gateway.console.sessions import Session
from gateway.services import Services

BASE = "/console"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICES = web.AppKey("console_services", Services)
ENV = web.AppKey("console_jinja", jinja2.Environment)
SESSION = web.RequestKey[Session | None]("console_session")
LANG = web.RequestKey("console_lang", str)


def session_of(request: web.Request) -> Session:
    session = request.get(SESSION)
    if session is None:
        raise web.HTTPUnauthorized()
    return session


def url(path: str, **query: Any) -> str:
    """A console URL; query parameters that are None or empty are left out."""
    params = {k: v for k, v in query.items() if v not in (None, "")}
    return BASE + path + ("?" + urlencode(params, doseq=True) if params else "")


def redirect(path: str, **query: Any) -> web.Response:
    """A 303 after a POST (or to the sign-in page): the browser follows with a GET."""
    location = path if path.startswith(BASE) else BASE + path
    params = {k: v for k, v in query.items() if v not in (None, "")}
    if params:
        location += "?" + urlencode(params)
    return web.Response(status=303, headers={"Location": location})


def _lang_switch(request: web.Request, lang: str) -> str:
    other = "en" if lang == "zh" else "zh"
    query = {k: v for k, v in request.query.items() if k not in ("lang", "done")}
    query["lang"] = other
    return request.path + "?" + urlencode(query)


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    lang = request.get(LANG, i18n.DEFAULT_LANG)
    session = request.get(SESSION)
    env = request.app[ENV]
    html = env.get_template(template).render(
        _=i18n.translator(lang),
        lang=lang,
        base=BASE,
        url=url,
        user=session.user if session is not None else None,
        csrf_field=csrf.FIELD,
        csrf_token=session.csrf_token if session is not None else context.pop("csrf_token", ""),
        lang_switch=_lang_switch(request, lang),
        path=request.path,
        **context,
    )
    return web.Response(status=status, text=html, content_type="text/html", charset="utf-8")
