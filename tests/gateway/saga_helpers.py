"""Shared steps of the saga tests: create an order through the API, pay it at the channel, deliver the
callback, run the workers."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.runtime import RunningGateway
from tests.support.gateway_rig import MERCHANT, ApiClient, drain, order_body
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
