"""How a call fault plays out on the wire, the same for both channel servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from sandbox.channels.faults import CallFault, FaultBook, Rule

TIMEOUT_DEFAULT_S = 30.0


def drop_connection(request: web.Request) -> None:
    """Close the socket with no answer at all, so the client cannot tell whether the call was applied."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError


async def with_faults(
    request: web.Request,
    faults: FaultBook,
    name: str,
    apply: Callable[[], Awaitable[web.StreamResponse]],
    error: Callable[[Rule], web.StreamResponse],
    corrupt: Callable[[web.StreamResponse, Rule], web.StreamResponse],
) -> web.StreamResponse:
    """Run ``apply`` under the first call rule matching ``name``; ``error`` renders the channel's error answer and
    ``corrupt`` spoils a good one (bad signature, tampered file)."""
    rule = faults.take("call", name)
    if rule is None:
        return await apply()
    if rule.latency_ms and rule.mode != CallFault.timeout:
        await asyncio.sleep(rule.latency_ms / 1000)
    if rule.mode == CallFault.error:
        return error(rule)
    if rule.mode == CallFault.timeout:
        await asyncio.sleep(rule.latency_ms / 1000 if rule.latency_ms else TIMEOUT_DEFAULT_S)
        drop_connection(request)
    response = await apply()
    if rule.mode == CallFault.drop_after:
        drop_connection(request)
    if rule.mode in (CallFault.bad_signature, CallFault.tamper):
        return corrupt(response, rule)
    return response
