"""The operations listener: plain HTTP for probes and Prometheus, kept apart from the signed API.

It carries no patient data and no write path, so it can be scraped without client certificates; bind it to
loopback or a monitoring network only.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge import openapi
from bridge.agent import Agent
from bridge.version import agent_version

OPS_AGENT = web.AppKey("ops_agent", Agent)


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
    return web.Response(body=generate_latest(agent.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_ops_app(agent: Agent) -> web.Application:
    app = web.Application()
    app[OPS_AGENT] = agent
    document = openapi.build(agent_version())

    async def openapi_json(_request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    return app
