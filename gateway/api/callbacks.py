"""Channel callbacks: verify, store, acknowledge — within the channel's deadline — and process later.

Nothing slow happens before the answer: the verified event is committed to the inbox (a duplicate is a no-op)
and the channel gets its acknowledgement; the callbacks worker applies it.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import SERVICES
from gateway.channels.base import Acknowledgement, NotificationRejected
from gateway.services import log
from gateway.store import events


def _answer(ack: Acknowledgement) -> web.Response:
    return web.Response(status=ack.status, headers=ack.headers, body=ack.body)


async def handle_notify(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    kind, merchant_id = request.match_info["channel"], request.match_info["merchant"]
    channel = svc.channels.get(merchant_id)
    merchant = next((m for m in svc.cfg.merchants if m.id == merchant_id), None)
    if channel is None or merchant is None or merchant.channel != kind:
        raise web.HTTPNotFound()
    body = await request.read()
    try:
        notification = channel.verify_notification(dict(request.headers), body)
    except NotificationRejected as e:
        log.warning("callback_rejected", merchant=merchant_id, reason=e.reason, message=e.message)
        return _answer(channel.acknowledge(False))
    try:
        _, first = await events.record(svc.db, merchant_id, notification)
    except Exception:
        log.exception("callback_not_stored", merchant=merchant_id)
        return _answer(channel.acknowledge(False))
    if first:
        svc.wake_events.set()
    return _answer(channel.acknowledge(True))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/notify/{channel}/{merchant}", handle_notify)
