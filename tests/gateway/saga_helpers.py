"""Shared steps of the saga tests: create an order through the API, pay it at the channel (the sandbox WeChat Pay
server, or the in-memory channel for the tests that isolate the gateway), let the callbacks arrive, run the
workers."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.runtime import RunningGateway
from tests.support.channelrig import SandboxAdmin
from tests.support.gateway_rig import MERCHANT, ApiClient, drain, make_due, order_body
from tests.support.memory_channel import MemoryChannel


async def deliver_callback(running: RunningGateway, headers: dict[str, str], body: bytes) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{running.url}/notify/wechat/{MERCHANT}", data=body, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


async def create(client: ApiClient, no: str, **kwargs: Any) -> dict[str, Any]:
    status, body = await client.call("POST", "/v1/orders", order_body(no, **kwargs))
    assert status == 201, body
    return body["order"]


async def get(client: ApiClient, no: str) -> dict[str, Any]:
    status, body = await client.call("GET", f"/v1/orders/{no}")
    assert status == 200, body
    return body


async def paid_order(
    running: RunningGateway, client: ApiClient, channel: MemoryChannel, no: str, **kwargs: Any
) -> dict[str, Any]:
    """An order paid at the channel, its callback delivered and processed (HIS commit included)."""
    order = await create(client, no, **kwargs)
    assert await deliver_callback(running, *channel.pay(order["out_trade_no"])) == 200
    await drain(running.gateway)
    return (await get(client, no))["order"]


async def settle(running: RunningGateway, admin: SandboxAdmin, *, due: bool = False, rounds: int = 20) -> None:
    """Run the gateway's workers and the sandbox channel until neither has anything left to do now: wait for the
    channel to be quiet (refunds in flight paid out, callbacks delivered), run the workers, and again while that
    started new work, until a pass over a quiet channel claims nothing. ``due`` first brings every scheduled step
    forward (instead of sleeping)."""
    if due:
        await make_due(running.svc.db)
    for _ in range(rounds):
        await admin.quiet()
        claimed = 0
        for worker in running.gateway.workers:
            if worker.name != "outbox":
                claimed += await worker.run_once()
        if not claimed:
            return
        await drain(running.gateway)
    raise AssertionError(f"gateway and sandbox channel still busy after {rounds} rounds")


async def sandbox_paid_order(
    running: RunningGateway, client: ApiClient, admin: SandboxAdmin, no: str, **kwargs: Any
) -> dict[str, Any]:
    """An order paid by the payer at the sandbox channel, its callback delivered and processed (HIS commit
    included)."""
    order = await create(client, no, **kwargs)
    await admin.pay(order["out_trade_no"])
    await settle(running, admin)
    return (await get(client, no))["order"]
