"""The exception list with its filters and exports, one exception's three records side by side, and the forms
of the finance actions. The forms only show what the user's role allows; ``gateway.console.actions`` enforces
the same rules again on every POST."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.console import actions, export, i18n, queries
from gateway.console.auth import Role
from gateway.console.formatting import parse_yuan, today
from gateway.console.views import LANG, SERVICES, redirect, render, session_of
from gateway.console.views.summary import parse_day
from gateway.recon import exceptions as recon
from gateway.store.recon_tables import EXCEPTION_CLASSES, EXCEPTION_STATUSES

PAGE = 100
EXPORT_MAX = 100_000
TODO = ("open", "proposed", "approved")
STATUS_CHOICES = ("todo", "all", *EXCEPTION_STATUSES)
FLASHES = {
    "flash.proposed",
    "flash.approved",
    "flash.refunded",
    "flash.rejected",
    "flash.handled",
    "flash.reference",
    "flash.redriven",
}
ERROR_STATUS = {
    "error.forbidden": 403,
    "error.same_person": 403,
    "error.not_found": 404,
    "error.state": 409,
    "error.no_proposal": 409,
    "error.not_now": 409,
}


@dataclass(frozen=True)
class Filters:
    hospital: str = ""
    channel: str = ""
    cls: str = ""
    status: str = "todo"
    day_from: dt.date | None = None
    day_to: dt.date | None = None
    q: str = ""

    @classmethod
    def parse(cls, query: Any, hospitals: dict[str, str], channels: list[str]) -> Filters:
        day = parse_day(query.get("day"))
        status = query.get("status", "todo")
        return cls(
            hospital=query.get("hospital", "") if query.get("hospital") in hospitals else "",
            channel=query.get("channel", "") if query.get("channel") in channels else "",
            cls=query.get("class", "") if query.get("class") in EXCEPTION_CLASSES else "",
            status=status if status in STATUS_CHOICES else "todo",
            day_from=parse_day(query.get("from"), day),
            day_to=parse_day(query.get("to"), day),
            q=query.get("q", "").strip()[:64],
        )

    def recon_args(self) -> dict[str, Any]:
        statuses: tuple[str, ...] | None = {"todo": TODO, "all": None}.get(self.status, (self.status,))
        return {
            "hospital": self.hospital or None,
            "channel": self.channel or None,
            "classes": [self.cls] if self.cls else None,
            "statuses": statuses,
            "day_from": self.day_from,
            "day_to": self.day_to,
            "search": self.q or None,
        }

    def query(self) -> dict[str, Any]:
        """As URL parameters, for the export links and the pages."""
        return {
            "hospital": self.hospital,
            "channel": self.channel,
            "class": self.cls,
            "status": self.status,
            "from": self.day_from.isoformat() if self.day_from else "",
            "to": self.day_to.isoformat() if self.day_to else "",
            "q": self.q,
        }


async def _filters(request: web.Request) -> tuple[Filters, dict[str, str], list[str]]:
    svc = request.app[SERVICES]
    hospitals = await queries.hospital_names(svc.db)
    channels = await queries.channel_names(svc.db)
    return Filters.parse(request.query, hospitals, channels), hospitals, channels


async def list_page(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    filters, hospitals, channels = await _filters(request)
    try:
        page = max(1, int(request.query.get("page", "1")))
    except ValueError:
        page = 1
    args = filters.recon_args()
    total = await recon.count_exceptions(svc.db, **args)
    rows = await recon.list_exceptions(svc.db, limit=PAGE, offset=(page - 1) * PAGE, **args)
    return render(
        request,
        "exceptions.html",
        rows=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE)),
        filters=filters,
        query=filters.query(),
        hospitals=hospitals,
        channels=channels,
        classes=EXCEPTION_CLASSES,
        statuses=STATUS_CHOICES,
        today=today(),
    )


async def _all_rows(request: web.Request) -> tuple[Filters, list[dict[str, Any]], dict[str, str]]:
    svc = request.app[SERVICES]
    filters, hospitals, _ = await _filters(request)
    rows: list[dict[str, Any]] = []
    while len(rows) < EXPORT_MAX:
        batch = await recon.list_exceptions(svc.db, limit=1000, offset=len(rows), **filters.recon_args())
        rows.extend(batch)
        if len(batch) < 1000:
            break
    return filters, rows, hospitals


def _attachment(body: bytes, content_type: str, name: str) -> web.Response:
    return web.Response(
        body=body, headers={"Content-Type": content_type, "Content-Disposition": f'attachment; filename="{name}"'}
    )


async def export_csv(request: web.Request) -> web.StreamResponse:
    session_of(request)
    filters, rows, hospitals = await _all_rows(request)
    body = export.to_csv(rows, i18n.translator(request[LANG]), hospitals)
    return _attachment(body, "text/csv; charset=utf-8", export.filename(filters.day_from, filters.day_to, "csv"))


async def export_xlsx(request: web.Request) -> web.StreamResponse:
    session_of(request)
    filters, rows, hospitals = await _all_rows(request)
    body = export.to_xlsx(rows, i18n.translator(request[LANG]), hospitals)
    return _attachment(body, export.XLSX_TYPE, export.filename(filters.day_from, filters.day_to, "xlsx"))


def _exception_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound() from None


async def _detail(request: web.Request, *, status: int = 200, error: str | None = None, **params: Any) -> web.Response:
    svc = request.app[SERVICES]
    user = session_of(request).user
    exception_id = _exception_id(request)
    await actions.settle(svc)
    exc = await recon.get_exception(svc.db, exception_id)
    if exc is None:
        return render(request, "error.html", status=404, message="error.not_found")
    async with svc.db.read() as conn:
        options = await actions.remedies(conn, exc)
        redrive = await actions.redrive_target(conn, exc)
    proposals = await actions.proposals_for(svc, exception_id)
    pending = next((p for p in proposals if p.state == "proposed"), None)
    hospitals = await queries.hospital_names(svc.db)
    if "now" in params:
        params["now"] = i18n.translator(request[LANG])(f"status.{params['now']}")
    is_open = exc["status"] == "open"
    return render(
        request,
        "exception.html",
        status=status,
        exc=exc,
        hospital_name=hospitals.get(exc["hospital_id"], exc["hospital_id"]),
        remedies=options,
        target=next((r for r in options if r.action == actions.REFUND), None),
        redrive=redrive,
        related=await recon.related(svc.db, exc),
        proposals=proposals,
        pending=pending,
        history=await queries.history(svc.db, exception_id),
        may_propose=user.can(Role.clerk) and is_open,
        may_decide=user.can(Role.approver) and pending is not None and exc["status"] == "proposed",
        own_proposal=pending is not None and pending.proposed_by == user.username,
        may_handle=user.can(Role.clerk) and is_open,
        may_redrive=user.can(Role.clerk) and redrive is not None and exc["status"] not in ("handled", "closed"),
        may_reference=user.can(Role.clerk) and exc["status"] != "closed",
        may_act=user.can(Role.clerk),
        error=error,
        error_params=params,
        done=request.query.get("done") if request.query.get("done") in FLASHES else None,
        form=dict(await request.post()) if request.method == "POST" else {},
    )


async def detail_page(request: web.Request) -> web.StreamResponse:
    return await _detail(request)


async def _act(request: web.Request, kind: str) -> web.StreamResponse:
    svc = request.app[SERVICES]
    user = session_of(request).user
    exception_id = _exception_id(request)
    form = await request.post()

    def field(name: str, limit: int = 2000) -> str:
        return str(form.get(name, ""))[:limit]

    try:
        if kind == "propose":
            action = field("action", 32) or actions.REFUND
            if action not in (actions.REFUND, actions.PAY_REFUND, actions.CANCEL_HIS_REFUND):
                raise actions.ActionError("error.bad_action")
            amount = None
            if action == actions.REFUND:
                try:
                    amount = parse_yuan(field("amount", 32))
                except (ValueError, TypeError):
                    raise actions.ActionError("error.bad_amount") from None
            await actions.propose(svc, user, exception_id, action, amount, field("reason", 200))
            done = "flash.proposed"
        elif kind == "approve":
            refund = await actions.approve(svc, user, exception_id, field("note"))
            done = "flash.refunded" if refund is not None and refund.state in actions.REFUND_DONE else "flash.approved"
        elif kind == "reject":
            await actions.reject_refund(svc, user, exception_id, field("note"))
            done = "flash.rejected"
        elif kind == "handle":
            await actions.mark_handled(svc, user, exception_id, field("note"))
            done = "flash.handled"
        elif kind == "redrive":
            await actions.redrive(svc, user, exception_id, field("note"))
            done = "flash.redriven"
        else:
            await actions.attach_reference(svc, user, exception_id, field("reference", 128))
            done = "flash.reference"
    except actions.ActionError as e:
        return await _detail(request, status=ERROR_STATUS.get(e.key, 400), error=e.key, **e.params)
    except recon.StaleStatus:
        exc = await recon.get_exception(svc.db, exception_id)
        return await _detail(request, status=409, error="error.state", now=(exc or {}).get("status", ""))
    return redirect(f"/exceptions/{exception_id}", done=done)


def _action(kind: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _act(request, kind)

    return handler


def add_routes(app: web.Application) -> None:
    app.router.add_get("/exceptions", list_page)
    app.router.add_get("/exceptions.csv", export_csv)
    app.router.add_get("/exceptions.xlsx", export_xlsx)
    app.router.add_get(r"/exceptions/{id:\d+}", detail_page)
    for kind in ("propose", "approve", "reject", "handle", "reference", "redrive"):
        app.router.add_post(rf"/exceptions/{{id:\d+}}/{kind}", _action(kind))
