"""Business API: orders and refunds, scoped to the calling app's hospital."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError

from bridge.errors import ApiError
from gateway.api.auth import APP, BODY, SERVICES
from gateway.api.schemas import CreateOrder, RequestRefund
from gateway.model import BusinessType, OrderOrigin, OrderStatus
from gateway.notify_guard import NotifyUrlRefused, app_hosts, check_url, networks
from gateway.representations import order_view, refund_view
from gateway.sagas import compensation, payment, refund
from gateway.services import UnknownMerchant
from gateway.store import locks
from gateway.store import orders as order_store
from gateway.store import refunds as refund_store

MAX_PAGE_SIZE = 200
MAX_PAGE = 1_000_000
M = TypeVar("M", bound=BaseModel)


def json_response(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body, ensure_ascii=False).encode(), content_type="application/json"
    )


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within its published range; anything else is a 400 that says so."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 20 or not low <= int(raw) <= high:
        raise ApiError(400, "bad_query", f"{name} must be an integer from {low} to {high}")
    return int(raw)


FLAGS = {"1": True, "true": True, "0": False, "false": False}


def query_flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw not in FLAGS:
        raise ApiError(400, "bad_query", f"{name} must be one of {', '.join(FLAGS)}")
    return FLAGS[raw]


def parse(request: web.Request, model: type[M]) -> M:
    try:
        data = json.loads(request[BODY] or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "body is nested too deeply to be any request's body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        details = [{"field": ".".join(str(p) for p in err["loc"]), "problem": err["msg"]} for err in e.errors()]
        raise ApiError(422, "schema_violation", f"{len(details)} invalid field(s)", details=details) from None


async def _order(request: web.Request) -> Any:
    svc, app = request.app[SERVICES], request[APP]
    order = await order_store.by_business_no(svc.db, app.hospital_id, request.match_info["business_order_no"])
    if order is None:
        raise ApiError(404, "order_not_found", "no such order for this hospital")
    return order


async def _reserve_slot(db: Any, hospital_id: str, body: CreateOrder) -> None:
    """A registration order for a slot the gateway holds becomes the one order that may pay for it."""
    if body.business_type != BusinessType.registration or body.lock_id is None or body.schedule_id is None:
        return
    try:
        await locks.reserve_for_order(
            db, hospital_id, body.lock_id, body.business_order_no, body.patient_id, body.schedule_id
        )
    except locks.LockUnavailable as e:
        raise ApiError(409, e.code, e.message) from None


async def create_order(request: web.Request) -> web.Response:
    svc, app = request.app[SERVICES], request[APP]
    body = parse(request, CreateOrder)
    if (body.terminal_id is not None or body.origin != OrderOrigin.app) and not app.is_agent:
        raise ApiError(403, "not_an_agent", "only a hospital's agent app may name a terminal or an origin")
    try:
        his_params = body.his_params()
    except ValueError as e:
        raise ApiError(422, "schema_violation", str(e)) from None
    if body.notify_url is not None:
        try:
            allow = networks(svc.cfg.notifications.allow_addresses)
            check_url(body.notify_url, app_hosts(app.notify_url, app.notify_hosts), allow)
        except NotifyUrlRefused as e:
            raise ApiError(422, "notify_url_refused", f"notify_url: {e}") from None
    await _reserve_slot(svc.db, app.hospital_id, body)
    new = payment.NewOrder(
        business_order_no=body.business_order_no,
        business_type=body.business_type,
        scene=body.scene,
        channel=body.channel,
        amount_fen=body.amount_fen,
        subject=body.subject,
        his_params=his_params,
        notify_url=body.notify_url,
        payer_id=body.payer_id,
        auth_code=body.auth_code,
        client_ip=body.client_ip or request.remote,
        expire_s=body.expire_s,
        request_id=body.request_id,
        terminal_id=body.terminal_id,
        origin=body.origin,
        his_commit=app.his_commit,
    )
    try:
        order, created = await payment.create(svc, app, new)
    except IntegrityError:
        raise ApiError(409, "request_conflict", f"request_id {body.request_id} was used for another order") from None
    except payment.NoMerchant as e:
        raise ApiError(422, "no_merchant", str(e)) from None
    except payment.OrderConflict as e:
        raise ApiError(409, "order_conflict", str(e)) from None
    except UnknownMerchant as e:
        raise ApiError(503, "channel_unavailable", str(e)) from None
    view = order_view(order)
    if order.status == OrderStatus.created and order.pay_params is None and order.last_error:
        raise ApiError(503, "channel_unavailable", order.last_error, order=view)
    return json_response(201 if created else 200, {"order": view})


async def get_order(request: web.Request) -> web.Response:
    order = await _order(request)
    rows = await refund_store.for_order(request.app[SERVICES].db, order.id)
    return json_response(200, {"order": order_view(order), "refunds": [refund_view(r, order) for r in rows]})


async def close_order(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    order = await _order(request)
    if order.status not in (OrderStatus.created, OrderStatus.paying, OrderStatus.closed, OrderStatus.failed):
        raise ApiError(409, "order_paid", f"the order is {order.status}; refund it instead", order=order_view(order))
    order = await compensation.request_close(svc, order)
    return json_response(200, {"order": order_view(order)})


async def list_orders(request: web.Request) -> web.Response:
    svc, app = request.app[SERVICES], request[APP]
    page = query_int(request, "page", 1, 1, MAX_PAGE)
    page_size = query_int(request, "page_size", 50, 1, MAX_PAGE_SIZE)
    status = request.query.get("status")
    if status is not None and status not in OrderStatus.__members__:
        raise ApiError(400, "bad_query", f"unknown status {status!r}")
    exceptions_only = query_flag(request, "exceptions")
    rows, total = await order_store.page(
        svc.db, app.hospital_id, page=page, page_size=page_size, status=status, exceptions_only=exceptions_only
    )
    views = [order_view(r, with_pay_params=False) for r in rows]
    if exceptions_only:
        found = await order_store.open_exceptions(svc.db, app.hospital_id, [r.out_trade_no for r in rows])
        for view in views:
            view["exceptions"] = found.get(view["out_trade_no"], [])
    return json_response(
        200,
        {
            "orders": views,
            "page": page,
            "page_size": page_size,
            "total": total,
        },
    )


async def request_refund(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    order = await _order(request)
    body = parse(request, RequestRefund)
    try:
        row, created = await refund.request(
            svc,
            order,
            refund.NewRefund(body.business_refund_no, body.amount_fen, body.reason, body.request_id, request[APP].id),
        )
    except IntegrityError:
        raise ApiError(409, "request_conflict", f"request_id {body.request_id} was used for another refund") from None
    except refund.NotRefundable as e:
        raise ApiError(409, "not_refundable", str(e)) from None
    except refund.RefundConflict as e:
        raise ApiError(409, "refund_conflict", str(e)) from None
    order = await order_store.get(svc.db, order.id)
    return json_response(201 if created else 200, {"refund": refund_view(row, order)})


async def get_refund(request: web.Request) -> web.Response:
    svc, app = request.app[SERVICES], request[APP]
    row = await refund_store.by_business_no(svc.db, app.hospital_id, request.match_info["business_refund_no"])
    if row is None:
        raise ApiError(404, "refund_not_found", "no such refund for this hospital")
    order = await order_store.get(svc.db, row.order_id)
    return json_response(200, {"refund": refund_view(row, order)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/orders", create_order)
    app.router.add_get("/v1/orders", list_orders)
    app.router.add_get("/v1/orders/{business_order_no}", get_order)
    app.router.add_post("/v1/orders/{business_order_no}/close", close_order)
    app.router.add_post("/v1/orders/{business_order_no}/refunds", request_refund)
    app.router.add_get("/v1/refunds/{business_refund_no}", get_refund)
