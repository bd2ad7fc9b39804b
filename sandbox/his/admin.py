"""The sandbox-only admin API (JSON, same port): fault rules, the application log, health; and the HIS's own
cashier window, which books a refund itself (窗口退费) before asking for the money back through the agent."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aiohttp import web

from bridge import clock
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


async def _json_body(request: web.Request) -> dict[str, Any]:
    data = await request.json()
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


async def window_refund(request: web.Request) -> web.Response:
    """The window books a refund in the HIS under its own refund number: ``{trade_no, refund_no, amount_fen}``."""
    try:
        data = await _json_body(request)
        answer = request.app[STATE_KEY].apply_refund(
            str(data["trade_no"]), str(data["refund_no"]), data["amount_fen"], data.get("reason")
        )
    except HisError as exc:
        return web.json_response({"error": exc.message, "code": exc.code}, status=409)
    except (KeyError, ValueError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"trade_no, refund_no and amount_fen are required: {exc}")
    return web.json_response(answer, status=201)


async def window_refund_paid(request: web.Request) -> web.Response:
    """The money went back: the window records the channel's refund serial, ``{trade_no, amount_fen,
    channel_refund_no[, refunded_at]}``."""
    try:
        data = await _json_body(request)
        stamp = data.get("refunded_at")
        when = dt.datetime.fromisoformat(str(stamp)) if stamp else clock.utcnow()
        answer = request.app[STATE_KEY].writeback_refund(
            str(data["trade_no"]),
            request.match_info["refund_no"],
            data["amount_fen"],
            str(data["channel_refund_no"]),
            when,
        )
    except HisError as exc:
        return web.json_response({"error": exc.message, "code": exc.code}, status=409)
    except (KeyError, ValueError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"trade_no, amount_fen and channel_refund_no are required: {exc}")
    return web.json_response(answer)


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
    app.router.add_post("/_admin/window/refunds", window_refund)
    app.router.add_post("/_admin/window/refunds/{refund_no}/paid", window_refund_paid)
