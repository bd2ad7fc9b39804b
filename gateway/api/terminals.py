"""Business API for callers that keep their own request ids, and for the hospitals' agents.

- ``GET /v1/requests/{request_id}``: the order or refund a caller created under its own request id. This is
  how an agent settles a forward whose answer it lost: it asks before it sends anything again.
- ``POST /v1/window-refunds``: a refund the HIS has already made at its window (agent apps only).
- ``GET /v1/transactions?date=…[&terminal_id=…]``: a terminal's (or the calling app's) payments and refunds
  of one day, with totals, for the window's end-of-shift count (日结).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from aiohttp import web

from bridge.errors import ApiError
from gateway.api.auth import APP, SERVICES
from gateway.api.orders import json_response, parse
from gateway.api.schemas import WindowRefund
from gateway.model import PAID_ORDER, RefundState
from gateway.representations import order_view, refund_view
from gateway.sagas import refund as refund_saga
from gateway.sagas import window_refund
from gateway.store import orders as order_store
from gateway.store import refunds as refund_store
from gateway.store.tables import orders, refunds

HOSPITAL_TZ = ZoneInfo("Asia/Shanghai")
MAX_DAY_ROWS = 5000
FIRST_DAY, LAST_DAY = dt.date(2000, 1, 1), dt.date(2999, 12, 31)
SETTLED_REFUNDS = (RefundState.succeeded.value, RefundState.completed.value)


async def by_request_id(request: web.Request) -> web.Response:
    svc, app = request.app[SERVICES], request[APP]
    request_id = request.match_info["request_id"]
    async with svc.db.read() as conn:
        order = (
            await conn.execute(sa.select(orders).where(orders.c.app_id == app.id, orders.c.request_id == request_id))
        ).first()
        row = None
        if order is None:
            stmt = sa.select(refunds).where(refunds.c.app_id == app.id, refunds.c.request_id == request_id)
            row = (await conn.execute(stmt)).first()
    if order is not None:
        rows = await refund_store.for_order(svc.db, order.id)
        return json_response(200, {"order": order_view(order), "refunds": [refund_view(r, order) for r in rows]})
    if row is not None:
        parent = await order_store.get(svc.db, row.order_id)
        return json_response(200, {"refund": refund_view(row, parent)})
    raise ApiError(404, "request_not_found", f"this app has created nothing under request_id {request_id[:64]!r}")


async def create_window_refund(request: web.Request) -> web.Response:
    svc, app = request.app[SERVICES], request[APP]
    if not app.is_agent:
        raise ApiError(403, "not_an_agent", "window refunds come from the hospital's agent app only")
    body = parse(request, WindowRefund)
    order = await order_store.by_out_trade_no(svc.db, body.out_trade_no)
    if order is None or order.hospital_id != app.hospital_id:
        raise ApiError(404, "order_not_found", f"no payment {body.out_trade_no} at this hospital")
    new = window_refund.NewWindowRefund(
        business_refund_no=body.business_refund_no,
        amount_fen=body.amount_fen,
        his_refund_no=body.his_refund_no,
        terminal_id=body.terminal_id,
        request_id=body.request_id,
        reason=body.reason,
    )
    try:
        row, created = await window_refund.request(svc, app, order, new)
    except refund_saga.NotRefundable as e:
        raise ApiError(409, "not_refundable", str(e)) from None
    except refund_saga.RefundConflict as e:
        raise ApiError(409, "refund_conflict", str(e)) from None
    order = await order_store.get(svc.db, order.id)
    return json_response(201 if created else 200, {"refund": refund_view(row, order)})


def _day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), HOSPITAL_TZ).astimezone(dt.UTC)
    return start, start + dt.timedelta(days=1)


async def transactions(request: web.Request) -> web.Response:
    svc, app = request.app[SERVICES], request[APP]
    try:
        day = dt.date.fromisoformat(request.query.get("date", ""))
    except ValueError:
        raise ApiError(400, "bad_query", "date=YYYY-MM-DD is required") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ApiError(400, "bad_query", f"date must lie between {FIRST_DAY} and {LAST_DAY}")
    terminal = request.query.get("terminal_id")
    if terminal is not None and not app.is_agent:
        raise ApiError(403, "not_an_agent", "only a hospital's agent app may list a terminal's transactions")
    start, end = _day_bounds(day)
    o, r = orders.c, refunds.c
    who_o = o.terminal_id == terminal if terminal is not None else o.app_id == app.id
    who_r = r.terminal_id == terminal if terminal is not None else r.app_id == app.id
    async with svc.db.read() as conn:
        order_rows = list(
            await conn.execute(
                sa.select(orders)
                .where(o.hospital_id == app.hospital_id, who_o, o.created_at >= start, o.created_at < end)
                .order_by(o.id)
                .limit(MAX_DAY_ROWS + 1)
            )
        )
        refund_rows = list(
            await conn.execute(
                sa.select(refunds, o.business_order_no, o.out_trade_no)
                .join(orders, o.id == r.order_id)
                .where(r.hospital_id == app.hospital_id, who_r, r.created_at >= start, r.created_at < end)
                .order_by(r.id)
                .limit(MAX_DAY_ROWS + 1)
            )
        )
    truncated = len(order_rows) > MAX_DAY_ROWS or len(refund_rows) > MAX_DAY_ROWS
    order_rows, refund_rows = order_rows[:MAX_DAY_ROWS], refund_rows[:MAX_DAY_ROWS]
    paid = [row for row in order_rows if row.status in [s.value for s in PAID_ORDER]]
    settled = [row for row in refund_rows if row.state in SETTLED_REFUNDS]
    by_channel: dict[str, dict[str, int]] = {}
    for row in paid:
        c = by_channel.setdefault(row.channel, {"paid_count": 0, "paid_fen": 0, "refund_count": 0, "refund_fen": 0})
        c["paid_count"] += 1
        c["paid_fen"] += int(row.paid_fen or 0)
    for row in settled:
        c = by_channel.setdefault(row.channel, {"paid_count": 0, "paid_fen": 0, "refund_count": 0, "refund_fen": 0})
        c["refund_count"] += 1
        c["refund_fen"] += int(row.amount_fen)
    body: dict[str, Any] = {
        "date": day.isoformat(),
        "terminal_id": terminal,
        "orders": [order_view(row, with_pay_params=False) for row in order_rows],
        "refunds": [refund_view(row, row) for row in refund_rows],
        "totals": {
            "paid_count": len(paid),
            "paid_fen": sum(int(row.paid_fen or 0) for row in paid),
            "refund_count": len(settled),
            "refund_fen": sum(int(row.amount_fen) for row in settled),
            "by_channel": by_channel,
        },
        "truncated": truncated,
    }
    body["totals"]["net_fen"] = body["totals"]["paid_fen"] - body["totals"]["refund_fen"]
    return json_response(200, body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/requests/{request_id}", by_request_id)
    app.router.add_post("/v1/window-refunds", create_window_refund)
    app.router.add_get("/v1/transactions", transactions)
