"""The sandbox-only admin API (JSON, same port): fault rules, the application log, health."""

from __future__ import annotations

import json

from aiohttp import web

from sandbox.his.faults import FaultBook, FaultRule, FaultRuleError
from sandbox.his.mllp import MLLP_OPERATIONS
from sandbox.his.state import SOAP_OPERATIONS, HisError, HisState

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


async def remove_fault(request: web.Request) -> web.Response:
    removed = request.app[FAULTS_KEY].remove(int(request.match_info["id"]))
    return web.json_response({"removed": removed}, status=200 if removed else 404)


async def applications(request: web.Request) -> web.Response:
    return web.json_response({"applications": request.app[STATE_KEY].applications()})


async def add_fixtures(request: web.Request) -> web.Response:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"body must be JSON: {exc}")
    kinds = ("patients", "schedules", "bills", "inpatients")
    if not isinstance(data, dict) or set(data) - set(kinds):
        return _error(400, f"body must be an object with lists under any of: {', '.join(kinds)}")
    if not all(isinstance(data.get(k, []), list) and all(isinstance(r, dict) for r in data.get(k, [])) for k in kinds):
        return _error(400, "each of patients, schedules, bills, inpatients must be a list of objects")
    try:
        added = request.app[STATE_KEY].add_fixtures(**{k: data.get(k, []) for k in kinds})
    except HisError as exc:
        return _error(400, exc.message)
    return web.json_response({"added": added}, status=201)


async def ledger(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].ledger())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def setup_admin(app: web.Application) -> None:
    """Mount the admin routes; ``app`` must hold ``STATE_KEY`` and ``FAULTS_KEY``."""
    app.router.add_get("/_admin/faults", list_faults)
    app.router.add_post("/_admin/faults", add_fault)
    app.router.add_delete("/_admin/faults", clear_faults)
    app.router.add_delete(r"/_admin/faults/{id:\d+}", remove_fault)
    app.router.add_get("/_admin/applications", applications)
    app.router.add_post("/_admin/fixtures", add_fixtures)
    app.router.add_get("/_admin/ledger", ledger)
    app.router.add_get("/_admin/healthz", healthz)
