"""Alipay in public-key-certificate mode end to end: the gateway's Alipay channel (app certificate, Alipay
certificate, root bundle from the config) against the sandbox Alipay in certificate mode, whose notifications call
the gateway; the real bridge agent over the sandbox HIS. A payment, then Alipay replaces its certificate, then a
partial refund and the rest: every answer after the switch is verified with the certificate fetched by its SN,
the notifications still verify, and the day reconciles with no exception."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.recon import run_reconciliation
from gateway.recon.normalize import shanghai_today
from sandbox.channels import start_sandbox_channels
from sandbox.channels.alipay import AlipayCertificates
from tests.gateway.saga_helpers import get
from tests.support.channelrig import (
    ALIPAY_SELLER_ID,
    alipay_cert_config,
    alipay_settings,
    first_answers,
    write_alipay_cert_trust,
)
from tests.support.gateway_rig import HOSPITAL, MERCHANT, eventually, order_body
from tests.support.rig import free_port


@pytest.fixture
async def cert_sandbox(tmp_path):
    channels = await start_sandbox_channels(
        alipay=alipay_settings(AlipayCertificates.generate(ALIPAY_SELLER_ID)), db_path=tmp_path / "ch.sqlite3"
    )
    yield channels
    await channels.close()


async def _admin(sandbox, path: str, body: dict | None = None) -> dict:
    async with aiohttp.ClientSession() as http, http.post(sandbox.admin_url + path, json=body) as resp:
        data = await resp.json()
        assert resp.status < 300, data
        return data


async def test_alipay_certificate_mode_day(gateway_factory, api_factory, his_link, his, cert_sandbox, tmp_path, db_url):
    trust = write_alipay_cert_trust(cert_sandbox, tmp_path / "alipay")
    settings = alipay_cert_config(cert_sandbox, trust).model_dump(mode="json", exclude={"channel"})
    running = await gateway_factory(
        db_url, his=his_link, run_workers=True, port=free_port(), merchant_settings=settings, channel_name="alipay",
        workers={"retry_base_s": 0.2, "his_poll_s": 0.2, "pending_query_after_s": 3600},
    )  # fmt: skip
    client = api_factory(running)
    status, body = await client.call("POST", "/v1/orders", order_body("ACM-1", amount_fen=5000, channel="alipay"))
    assert status == 201, body
    out_trade_no = body["order"]["out_trade_no"]
    await _admin(cert_sandbox, "/payer/scan", {"channel": "alipay", "out_trade_no": out_trade_no})
    await _admin(cert_sandbox, "/payer/pay", {"channel": "alipay", "out_trade_no": out_trade_no})

    async def completed() -> bool:
        return (await get(client, "ACM-1"))["order"]["status"] == "completed"

    await eventually(completed, what="paid in certificate mode and recorded by the HIS")
    rotated = await _admin(cert_sandbox, "/alipay/certificates/rotate")

    for refund_no, amount in (("ACM-1-r1", 1200), ("ACM-1-r2", 3800)):
        status, body = await client.call(
            "POST", "/v1/orders/ACM-1/refunds", {"business_refund_no": refund_no, "amount_fen": amount}
        )
        assert status == 201, body

        async def written_back(no: str = refund_no) -> bool:
            return (await client.call("GET", f"/v1/refunds/{no}"))[1]["refund"]["state"] == "completed"

        await eventually(written_back, what=f"refund {refund_no} paid back and written to the HIS")

    kept = await running.svc.channels[MERCHANT].state.certificates()  # type: ignore[attr-defined]
    assert [c.serial for c in kept] == [rotated["alipay_cert_sn"]], "the new certificate, fetched once, shared"
    assert (await get(client, "ACM-1"))["order"]["refunded_fen"] == 5000

    deliveries = await first_answers(cert_sandbox, "alipay", 3)  # the payment's and both refunds'
    assert all((d["status"], d["attempts"]) == ("delivered", 1) for d in deliveries), deliveries  # verified at once

    summary = await run_reconciliation(
        running.svc.db, running.gateway.cfg, HOSPITAL, shanghai_today(), channels=running.svc.channels, his=his_link
    )
    assert summary.exceptions == {} and summary.counts["matched"] == 3
