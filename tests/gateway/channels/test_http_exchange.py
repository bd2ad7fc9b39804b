"""The channels' HTTP exchange reads a whole answer, however many network reads it takes. Found by
``his-sandbox day``: a day of 2000 orders made a WeChat trade bill larger than one read, the exchange kept only
the first chunk, and reconciliation failed with "bill is not gzip"."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.channels.base import ChannelError
from gateway.channels.http import exchange, new_session

BODY = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def bill(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(BODY)
        await response.prepare(request)
        for start in range(0, len(BODY), 50_000):  # in many writes, as a large file arrives
            await response.write(BODY[start : start + 50_000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/bill", bill)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/bill"
    await runner.cleanup()


async def test_a_large_answer_is_read_whole(server: str) -> None:
    session = new_session(5, 30)
    try:
        reply = await exchange(session, "GET", server)
    finally:
        await session.close()
    assert reply.status == 200
    assert len(reply.body) == len(BODY) and reply.body == BODY


async def test_an_answer_over_the_limit_is_refused(server: str) -> None:
    session = new_session(5, 30)
    try:
        with pytest.raises(ChannelError) as refused:
            await exchange(session, "GET", server, max_bytes=1024 * 1024)
    finally:
        await session.close()
    assert refused.value.code == "TOO_LARGE"
