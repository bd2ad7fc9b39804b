"""Channel callbacks: verify, store, acknowledge — within the channel's deadline — and process later.

Nothing slow happens before the answer: the verified event is committed to the inbox (a duplicate is a no-op)
and the channel gets its acknowledgement; the callbacks worker applies it. The one exception: a callback signed
with a key not trusted yet makes the channel fetch its certificates once, so a certificate the channel switched
to before our scheduled refresh does not cost a refused callback.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import SERVICES
from gateway.channels.base import Acknowledgement, Channel, ChannelError, NotificationRejected
from gateway.services import log
from gateway.store import events


async def _learn_keys(channel: Channel, merchant_id: str) -> bool:
    """A callback signed by a key not trusted yet: the channel may have moved to a new certificate. Fetch its
    certificates once (rate-limited in the channel, so forged callbacks cannot make us hammer it)."""
    try:
        return await channel.refresh_trust()
    except ChannelError as e:
        log.warning("callback_key_refresh_failed", merchant=merchant_id, error=str(e))
        return False


def _answer(ack: Acknowledgement) -> web.Response:
    return web.Response(status=ack.status, headers=ack.headers, body=ack.body)


async def handle_notify(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    kind, merchant_id = request.match_info["channel"], request.match_info["merchant"]
    channel = svc.channels.get(merchant_id)
    merchant = svc.tenants.merchant(merchant_id)
    if channel is None or merchant is None or merchant.channel != kind:
        raise web.HTTPNotFound()
    body = await request.read()
    try:
        try:
            notification = channel.verify_notification(dict(request.headers), body)
        except NotificationRejected as e:
            if not channel.may_learn_keys(e.reason) or not await _learn_keys(channel, merchant_id):
                raise
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
