"""Which operation each business API route is: an app calls only the operations its tenant row allows
(``apps.operations``; the money operations when not set)."""

from __future__ import annotations

from aiohttp import web

ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/v1/orders"): "orders",
    ("GET", "/v1/orders"): "orders",
    ("GET", "/v1/orders/{business_order_no}"): "orders",
    ("POST", "/v1/orders/{business_order_no}/close"): "orders",
    ("POST", "/v1/orders/{business_order_no}/refunds"): "refunds",
    ("GET", "/v1/refunds/{business_refund_no}"): "refunds",
    ("GET", "/v1/events"): "events",
    ("POST", "/v1/his/patients/query"): "patient.query",
    ("POST", "/v1/his/bills/unpaid"): "bills.unpaid",
    ("POST", "/v1/his/registration-locks"): "registration.lock",
    ("GET", "/v1/his/registration-locks/{lock_no}"): "registration.lock",
    ("POST", "/v1/his/registration-locks/{lock_no}/unlock"): "registration.unlock",
}


def required(request: web.Request) -> str | None:
    """The operation this request is, or None for a route that needs no grant (an unknown path: a 404)."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return None
    return ROUTES.get((request.method, resource.canonical))
