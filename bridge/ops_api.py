"""The operations listener: plain HTTP for probes and Prometheus, kept apart from the signed API.

It carries no patient data and no write path, so it can be scraped without client certificates; bind it to
loopback or a monitoring network only. ``/metrics`` answers only ``server.metrics_allow`` addresses (loopback
by default) or a scraper presenting ``server.metrics_token_file``'s bearer token.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge import openapi
from bridge.agent import Agent
from bridge.errors import ApiError
from bridge.version import agent_version

OPS_AGENT = web.AppKey("ops_agent", Agent)
METRICS_TOKEN = web.AppKey("metrics_token", str)


def read_token(path: Path) -> str:
    token = path.read_text(encoding="utf-8").partition("\n")[0].strip()
    if len(token) < 16:
        raise ValueError(f"server.metrics_token_file {path}: the token needs at least 16 characters")
    return token


def _scraper_allowed(request: web.Request) -> bool:
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        address = None
    allow = request.app[OPS_AGENT].cfg.server.metrics_allow
    if address is not None and any(address in ipaddress.ip_network(n, strict=False) for n in allow):
        return True
    token = request.app.get(METRICS_TOKEN)
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    return token is not None and scheme.lower() == "bearer" and hmac.compare_digest(offered.encode(), token.encode())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """503 while recovering, and while the journal cannot commit (writes are refused then)."""
    agent = request.app[OPS_AGENT]
    body = {
        "ready": agent.serving,
        "recovered": agent.ready,
        "journal_writable": agent.journal.failing is None,
        "journal_error": agent.journal.failing,
        "breaker_open": agent.dispatcher.breaker_open,
    }
    if agent.intranet is not None:
        body["intranet_listening"] = agent.intranet.listening
        body["egress_link_up"] = not agent.intranet.forwarder.link_down
    return web.json_response(body, status=200 if agent.serving else 503)


async def metrics(request: web.Request) -> web.Response:
    agent = request.app[OPS_AGENT]
    if not _scraper_allowed(request):
        refusal = ApiError(403, "forbidden", "metrics: not a server.metrics_allow address, no bearer token")
        return web.json_response(refusal.to_body(), status=refusal.status)
    return web.Response(body=generate_latest(agent.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_ops_app(agent: Agent) -> web.Application:
    app = web.Application()
    app[OPS_AGENT] = agent
    if agent.cfg.server.metrics_token_file is not None:
        app[METRICS_TOKEN] = read_token(agent.cfg.server.metrics_token_file)
    document = openapi.build(agent_version())

    async def openapi_json(_request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    return app
