"""Notifications to business systems: signed, retried on the configured schedule, given up after it (still
pullable), and delivered again on an operator's resend."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys

import pytest

from gateway.config import NOTIFY_SCHEDULE_S
from gateway.store import outbox
from tests.gateway.saga_helpers import paid_order
from tests.support.gateway_rig import ApprovingHis, NotifyReceiver, drain, make_due

pytestmark = pytest.mark.system


@pytest.fixture
async def receiver(keys):
    r = await NotifyReceiver(keys.gateway.public()).start()
    yield r
    await r.close()


def test_the_default_schedule_spans_a_day():
    assert len(NOTIFY_SCHEDULE_S) == 15
    assert 23 * 3600 < sum(NOTIFY_SCHEDULE_S) < 25 * 3600


async def test_a_completed_order_is_pushed_signed(gateway_factory, api_factory, channel, receiver, sqlite_url):
    running = await gateway_factory(sqlite_url, channel=channel, his=ApprovingHis(), notify_url=receiver.url)
    client = api_factory(running)
    await paid_order(running, client, channel, "OB-1")
    await drain(running.gateway, skip=())
    assert len(receiver.received) == 1 and receiver.bad_signatures == 0
    _, pulled = await client.call("GET", "/v1/events?undelivered=1")
    assert pulled["events"] == []


async def test_failed_deliveries_follow_the_schedule_then_stop(
    gateway_factory, api_factory, channel, receiver, sqlite_url, tmp_path
):
    running = await gateway_factory(
        sqlite_url, channel=channel, his=ApprovingHis(), notify_url=receiver.url,
        notifications_cfg={"schedule_s": [15, 180]},
    )  # fmt: skip
    client = api_factory(running)
    await paid_order(running, client, channel, "OB-2")
    receiver.fail_status = 503
    db = running.svc.db
    await drain(running.gateway, skip=())
    (notice,) = await outbox.by_subject(db, (await _order_no(client, "OB-2")))
    assert notice.state == "pending" and notice.attempts == 1 and notice.last_status == 503
    assert notice.due_at > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
    await make_due(db)
    await drain(running.gateway, skip=())
    notice = await outbox.get(db, notice.id)
    assert notice.attempts == 2 and notice.due_at > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    await make_due(db)
    await drain(running.gateway, skip=())
    notice = await outbox.get(db, notice.id)
    assert notice.state == "dead" and notice.due_at is None and notice.attempts == 3
    _, pulled = await client.call("GET", "/v1/events?undelivered=1")
    assert [e["id"] for e in pulled["events"]] == [notice.id]

    receiver.fail_status = None
    config = tmp_path / "gateway.toml"
    config.write_text(_toml(running))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "-c", str(config), "notifications", "resend", str(notice.id),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert f"notification {notice.id}" in out.decode()
    await drain(running.gateway, skip=())
    notice = await outbox.get(db, notice.id)
    assert notice.state == "delivered" and receiver.received == [notice.id]


async def _order_no(client, no: str) -> str:
    _, body = await client.call("GET", f"/v1/orders/{no}")
    return body["order"]["out_trade_no"]


def _toml(running) -> str:
    cfg = running.svc.cfg
    app = cfg.hospitals[0].apps[0]
    url = running.svc.db.url
    return f"""
[database]
url = "{url}"
[signing]
key = "{cfg.signing.key}"
[[hospitals]]
id = "{cfg.hospitals[0].id}"
[[hospitals.apps]]
app_id = "{app.app_id}"
public_key = "{app.public_key}"
notify_url = "{app.notify_url}"
[[merchants]]
id = "wx1"
channel = "wechat"
hospital = "{cfg.hospitals[0].id}"
"""
