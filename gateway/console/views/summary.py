"""The day at a glance: per hospital, the latest reconciliation run's totals on each side and its counts per
class, the same day per channel, and the last 30 days as a chart. The day defaults to yesterday (T+1)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from gateway.console import i18n, queries
from gateway.console.chart import DayPoint, daily_chart
from gateway.console.formatting import today
from gateway.console.views import LANG, SERVICES, render
from gateway.recon import exceptions as recon
from gateway.store.recon_tables import GATEWAY_CLASSES, RECON_CLASSES

CHART_DAYS = 30


def parse_day(text: str | None, default: dt.date | None = None) -> dt.date | None:
    if not text:
        return default
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return default


async def summary_page(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    t = i18n.translator(request[LANG])
    day = parse_day(request.query.get("day"), today() - dt.timedelta(days=1))
    assert day is not None
    names = await queries.hospital_names(svc.db)
    chosen = request.query.get("hospital", "")
    ids = [chosen] if chosen in names else list(names)
    cards: list[dict[str, Any]] = []
    for hospital in ids:
        day_summary = await recon.summary(svc.db, hospital, day)
        totals = await recon.daily_totals(svc.db, hospital, CHART_DAYS, today=day + dt.timedelta(days=1))
        points = [DayPoint(d["day"], max(0, d["channel_fen"]), sum(d[c] for c in RECON_CLASSES)) for d in totals]
        cards.append(
            {
                "id": hospital,
                "name": names[hospital],
                "run": day_summary["run"],
                "exceptions": day_summary["exceptions"],
                "open": day_summary["open"],
                "channels": await queries.channel_days(svc.db, hospital, day),
                "chart": daily_chart(
                    points,
                    title=f"{names[hospital]} — {t('summary.chart_title')}",
                    amount_label=t("summary.chart_amount"),
                    exceptions_label=t("summary.chart_exceptions"),
                ),
            }
        )
    return render(
        request,
        "summary.html",
        day=day,
        hospitals=names,
        hospital=chosen,
        cards=cards,
        classes=RECON_CLASSES,
        gateway_classes=GATEWAY_CLASSES,
        prev_day=day - dt.timedelta(days=1),
        next_day=day + dt.timedelta(days=1),
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", summary_page)
