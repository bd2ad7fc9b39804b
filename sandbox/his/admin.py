"""The sandbox-only admin API (JSON, same port): fault rules, the application log, health."""

from __future__ import annotations

import json

from aiohttp import web

from sandbox.his.faults import FaultBook, FaultRule, FaultRuleError
from sandbox.his.mllp import MLLP_OPERATIONS
from sandbox.his.state import SOAP_OPERATIONS, HisState

STATE_KEY = web.AppKey("his_state", HisState)
FAULTS_KEY = web.AppKey("his_faults", FaultBook)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": [rule.to_json() for rule in request.app[FAULTS_KEY].rules()]})


async def add_fault(request: web.Request) -> web.Response:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"body must be JSON: {exc}")
    try:
        rule = FaultRule.from_json(data, [*SOAP_OPERATIONS, *MLLP_OPERATIONS])
    except FaultRuleError as exc:
        return _error(400, str(exc))
    request.app[FAULTS_KEY].add(rule)
    return web.json_response(rule.to_json(), status=201)


async def clear_faults(request: web.Request) -> web.Response:
    return web.json_response({"cleared": request.app[FAULTS_KEY].clear()})


async def applications(request: web.Request) -> web.Response:
    return web.json_response({"applications": request.app[STATE_KEY].applications()})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def setup_admin(app: web.Application) -> None:
    """Mount the admin routes; ``app`` must hold ``STATE_KEY`` and ``FAULTS_KEY``."""
    app.router.add_get("/_admin/faults", list_faults)
    app.router.add_post("/_admin/faults", add_fault)
    app.router.add_delete("/_admin/faults", clear_faults)
    app.router.add_get("/_admin/applications", applications)
    app.router.add_get("/_admin/healthz", healthz)
