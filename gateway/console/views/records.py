"""Any record of the three ledgers: look a payment or refund number up in the HIS's kept daily detail, the
gateway's own rows and the kept channel statements, side by side — whether or not it is an exception."""

from __future__ import annotations

from aiohttp import web

from gateway.console import queries
from gateway.console.views import SERVICES, render, session_of
from gateway.console.views.summary import parse_day
from gateway.recon import ledgers

NUMBER_MAX = 64


async def records_page(request: web.Request) -> web.StreamResponse:
    session_of(request)
    svc = request.app[SERVICES]
    hospitals = await queries.hospital_names(svc.db)
    hospital = request.query.get("hospital", "")
    if hospital not in hospitals:
        hospital = next(iter(hospitals), "")
    number = request.query.get("q", "").strip()[:NUMBER_MAX]
    day = parse_day(request.query.get("day"))
    found = await ledgers.lookup(svc.db, hospital, number, day) if number and hospital else None
    return render(request, "records.html", hospitals=hospitals, hospital=hospital, number=number, day=day, found=found)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/records", records_page)
