"""A store that is busy or briefly away is a 503 the app may retry, not a 500 it cannot tell from a bug (found by
the simulated day: the SQLite gateway's pool waits answered 500 ``internal``)."""

from __future__ import annotations

import sqlalchemy.exc
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import error_middleware


async def _client(exc: Exception) -> TestClient:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/v1/orders", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_a_locked_database_answers_503_with_retry_after() -> None:
    locked = sqlalchemy.exc.OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))
    client = await _client(locked)
    try:
        resp = await client.post("/v1/orders", json={})
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        body = await resp.json()
        assert body["error"]["code"] == "store_unavailable"
        assert "send the same request again" in body["error"]["message"]
        assert "database is locked" not in await resp.text()  # nothing of the store's internals leaks
    finally:
        await client.close()


async def test_a_full_pool_answers_503_and_a_bug_still_answers_500() -> None:
    client = await _client(sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"))
    try:
        assert (await client.post("/v1/orders", json={})).status == 503
    finally:
        await client.close()
    client = await _client(KeyError("bug"))
    try:
        resp = await client.post("/v1/orders", json={})
        assert resp.status == 500 and (await resp.json())["error"]["code"] == "internal"
    finally:
        await client.close()
