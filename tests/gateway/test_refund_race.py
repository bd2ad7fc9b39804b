"""Fifty partial refunds of one order at once: their sum never exceeds the payment, on SQLite (one instance,
``BEGIN IMMEDIATE``) and on PostgreSQL (two instances, ``SELECT … FOR UPDATE``). The HIS here approves every
refund in full, so the gateway's own reservation is the only guard being tested."""

from __future__ import annotations

import asyncio

from tests.gateway.saga_helpers import get, paid_order
from tests.support.gateway_rig import ApprovingHis

PAID_FEN = 1000
EACH_FEN = 30
CONCURRENT = 50


async def test_concurrent_partial_refunds_never_exceed_the_payment(gateway_factory, api_factory, channel, db_url):
    await _race(gateway_factory, api_factory, channel, db_url, instances=1)


async def test_concurrent_partial_refunds_on_two_instances_sharing_postgresql(
    gateway_factory, api_factory, channel, pg_url
):
    await _race(gateway_factory, api_factory, channel, pg_url, instances=2)


async def _race(gateway_factory, api_factory, channel, db_url: str, *, instances: int) -> None:
    his = ApprovingHis()
    first = await gateway_factory(db_url, channel=channel, his=his)
    gateways = [first] + [await gateway_factory(db_url, channel=channel, his=his) for _ in range(instances - 1)]
    clients = [api_factory(g) for g in gateways]
    order = await paid_order(first, clients[0], channel, "RACE-1", amount_fen=PAID_FEN)
    assert order["status"] == "completed"

    async def refund(i: int) -> dict:
        status, body = await clients[i % len(clients)].call(
            "POST", "/v1/orders/RACE-1/refunds", {"business_refund_no": f"RACE-1-{i:02d}", "amount_fen": EACH_FEN}
        )
        assert status == 201, body
        return body["refund"]

    results = await asyncio.gather(*(refund(i) for i in range(CONCURRENT)))
    states = [r["state"] for r in results]
    assert set(states) <= {"completed", "rejected"}
    assert states.count("completed") == PAID_FEN // EACH_FEN
    view = await get(clients[0], "RACE-1")
    assert view["order"]["refunded_fen"] == sum(r["amount_fen"] for r in view["refunds"] if r["state"] == "completed")
    assert view["order"]["refunded_fen"] <= PAID_FEN
    assert channel.refunded_fen(order["out_trade_no"]) == view["order"]["refunded_fen"]
