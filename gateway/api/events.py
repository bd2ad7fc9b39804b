"""Business API: the pull side of the notifications, for a business system that missed or cannot take pushes."""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import APP, SERVICES
from gateway.api.orders import json_response, query_flag, query_int
from gateway.store import outbox

MAX_LIMIT = 500
MAX_ID = 2**63 - 1


async def list_events(request: web.Request) -> web.Response:
    svc, app = request.app[SERVICES], request[APP]
    after = query_int(request, "after", 0, 0, MAX_ID)
    limit = query_int(request, "limit", 100, 1, MAX_LIMIT)
    undelivered = query_flag(request, "undelivered")
    rows = await outbox.for_app(svc.db, app.id, undelivered=undelivered, after_id=after, limit=limit)
    events = [
        {
            "id": r.id,
            "type": r.event_type,
            "created_at": r.created_at.isoformat(),
            "state": r.state,
            "attempts": r.attempts,
            "data": r.payload,
        }
        for r in rows
    ]
    return json_response(200, {"events": events, "next_after": events[-1]["id"] if events else after})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/events", list_events)
