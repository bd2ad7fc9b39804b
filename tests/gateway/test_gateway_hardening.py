"""The gateway as an attacker found it (issue 15, items 1, 6, 7, 10): the caller's address believed only from a
trusted proxy (console pause, an order's client_ip, /metrics), /metrics opt-in by address or token on the
gateway and the agent, notify URLs that cannot reach into our own network, and refusals that are clean."""

from __future__ import annotations

import json
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge import protocol
from gateway.api.client_address import caller, networks
from gateway.notify_guard import forbidden_reason
from gateway.store import outbox
from tests.gateway.saga_helpers import paid_order
from tests.support.console_rig import ConsoleClient
from tests.support.gateway_rig import ApprovingHis, NotifyReceiver, drain, order_body

PROXY = {"trusted_proxies": ["127.0.0.1/32"]}


def _request(peer: str, headers: dict[str, str]) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (peer, 4711) if name == "peername" else default
    return make_mocked_request("GET", "/", headers=headers, transport=transport)


@pytest.mark.parametrize(
    ("peer", "headers", "header", "expected"),
    [
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, "x-forwarded-for", "203.0.113.9"),
        ("127.0.0.1", {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}, "x-forwarded-for", "203.0.113.9"),
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9, 127.0.0.1"}, "x-forwarded-for", "203.0.113.9"),
        ("127.0.0.1", {"X-Forwarded-For": "bogus, 203.0.113.9"}, "x-forwarded-for", "203.0.113.9"),
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9, bogus"}, "x-forwarded-for", "127.0.0.1"),
        ("198.51.100.4", {"X-Forwarded-For": "203.0.113.9"}, "x-forwarded-for", "198.51.100.4"),
        ("127.0.0.1", {"Forwarded": 'for=203.0.113.9, for="[2001:db8::7]:4711"'}, "forwarded", "2001:db8::7"),
        ("127.0.0.1", {"Forwarded": "for=203.0.113.9"}, "x-forwarded-for", "127.0.0.1"),
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, "forwarded", "127.0.0.1"),
    ],
)
def test_the_callers_address_is_read_from_the_right_and_only_from_trusted_proxies(peer, headers, header, expected):
    assert caller(_request(peer, headers), networks(["127.0.0.1/32"]), header)[0] == expected


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.100.100.200", True),
        ("::1", True),
        ("fd00:ec2::254", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("203.0.114.1", False),
        ("8.8.8.8", False),
    ],
)
def test_non_public_addresses_are_refused(address, refused):
    import ipaddress

    assert (forbidden_reason(ipaddress.ip_address(address), ()) is not None) is refused
    assert forbidden_reason(ipaddress.ip_address(address), networks(["0.0.0.0/0", "::/0"])) is None


# --- item 6: behind the proxy -----------------------------------------------------------------------------------


async def _console_client(running, forwarded_for: str | None) -> ConsoleClient:
    client = ConsoleClient(running.url)
    await client.session.close()
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    client.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers)
    return client


async def test_an_attacker_behind_the_proxy_does_not_lock_the_console_for_everyone(gateway_factory, sqlite_url):
    from gateway.console import auth

    running = await gateway_factory(sqlite_url, server=PROXY, console={"login_max_failures": 1})
    await auth.add_user(running.svc.db, "clerk1", "clerk", "correct horse battery")
    attacker = await _console_client(running, "203.0.113.9")
    patient = await _console_client(running, "198.51.100.20")
    try:
        for n in range(4):  # four times the per-name limit: the per-address limit
            assert await attacker.login(f"made-up-{n}", "wrong password!") == 401
        assert await attacker.login("made-up-x", "wrong password!") == 429
        assert await patient.login("clerk1", "correct horse battery") == 200
    finally:
        await attacker.close()
        await patient.close()


async def test_forwarded_headers_from_an_untrusted_peer_do_not_escape_the_pause(gateway_factory, sqlite_url):
    running = await gateway_factory(sqlite_url, console={"login_max_failures": 1})  # no trusted proxies
    clients = [await _console_client(running, f"203.0.113.{n}") for n in range(5)]
    try:
        statuses = [await c.login(f"made-up-{n}", "wrong password!") for n, c in enumerate(clients)]
        assert statuses == [401, 401, 401, 401, 429]  # all one address: the connection's
    finally:
        for c in clients:
            await c.close()


async def _signed(running, keys, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    signed = protocol.sign_request(keys.app, method, path, body)
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            running.url + path,
            data=body,
            headers={**signed, "Content-Type": "application/json", **(headers or {})},
        ) as resp,
    ):
        raw = await resp.read()
        protocol.verify_response(keys.gateway.public(), resp.status, signed[protocol.HEADER_NONCE], resp.headers, raw)
        return resp.status, json.loads(raw)


async def test_an_orders_client_ip_is_the_callers_behind_the_proxy(gateway_factory, sqlite_url, keys, channel):
    seen: list[str | None] = []
    create = channel.create

    async def recording(request):
        seen.append(request.client_ip)
        return await create(request)

    channel.create = recording
    running = await gateway_factory(sqlite_url, channel=channel, server=PROXY)
    body = json.dumps(order_body("CIP-1")).encode()
    status, _ = await _signed(running, keys, "POST", "/v1/orders", body, {"X-Forwarded-For": "203.0.113.9"})
    assert status == 201 and seen == ["203.0.113.9"]


async def _metrics(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics", headers=headers or {}) as resp:
        return resp.status


async def test_gateway_metrics_are_off_until_an_address_or_a_token_is_allowed(gateway_factory, sqlite_url, tmp_path):
    closed = await gateway_factory(sqlite_url, metrics={})
    assert await _metrics(closed.url) == 403
    token = tmp_path / "metrics.token"
    token.write_text("s3cret-scraper-token-0001\n")
    opened = await gateway_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'two.sqlite3'}",
        server=PROXY,
        metrics={"allow": ["10.0.0.30/32"], "token_file": str(token)},
    )
    assert await _metrics(opened.url) == 403  # the proxy's own address is not the scraper's
    assert await _metrics(opened.url, {"X-Forwarded-For": "203.0.113.9"}) == 403
    assert await _metrics(opened.url, {"X-Forwarded-For": "10.0.0.30"}) == 200
    assert await _metrics(opened.url, {"Authorization": "Bearer s3cret-scraper-token-0001"}) == 200
    assert await _metrics(opened.url, {"Authorization": "Bearer s3cret-scraper-token-0002"}) == 403


async def test_agent_metrics_answer_only_allowed_addresses_or_the_token(bridge_factory, tmp_path):
    token = tmp_path / "ops.token"
    token.write_text("agent-scraper-token-0001\n")
    bridge = await bridge_factory(server={"metrics_allow": ["10.9.9.9/32"], "metrics_token_file": str(token)})
    assert await _metrics(bridge.ops_url) == 403
    assert await _metrics(bridge.ops_url, {"Authorization": "Bearer agent-scraper-token-0001"}) == 200
    async with aiohttp.ClientSession() as session, session.get(bridge.ops_url + "/healthz") as resp:
        assert resp.status == 200
    default = await bridge_factory(journal=tmp_path / "default.sqlite3")
    assert await _metrics(default.ops_url) == 200  # loopback is allowed by default


# --- item 7: notify URLs ---------------------------------------------------------------------------------------


@pytest.fixture
async def receiver(keys):
    r = await NotifyReceiver(keys.gateway.public()).start()
    yield r
    await r.close()


@pytest.mark.parametrize(
    ("notify_url", "problem"),
    [
        ("http://evil.example/steal", "host 'evil.example' is not one this app's notifications may go to"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local"),
        ("http://[::1]:8600/v1/orders", "::1 is a loopback"),
        ("http://user:pw@hooks.example-hospital.cn/n", "user name or password"),
    ],
)
async def test_an_order_cannot_name_a_notify_url_outside_its_apps_hosts(
    gateway_factory, sqlite_url, keys, notify_url, problem
):
    running = await gateway_factory(
        sqlite_url,
        app={"notify_hosts": ["hooks.example-hospital.cn", "169.254.169.254", "::1"]},
        notifications_cfg={"allow_addresses": []},
    )
    body = json.dumps(order_body("SSRF-1", notify_url=notify_url)).encode()
    status, answer = await _signed(running, keys, "POST", "/v1/orders", body)
    assert (status, answer["error"]["code"]) == (422, "notify_url_refused")
    assert problem in answer["error"]["message"]


async def test_a_name_that_resolves_to_loopback_is_never_posted_to(
    gateway_factory, api_factory, channel, receiver, sqlite_url
):
    running = await gateway_factory(
        sqlite_url,
        channel=channel,
        his=ApprovingHis(),
        app={"notify_hosts": ["localhost"]},
        notifications_cfg={"allow_addresses": []},
    )
    url = receiver.url.replace("127.0.0.1", "localhost")
    await paid_order(running, api_factory(running), channel, "SSRF-2", notify_url=url)
    await drain(running.gateway, skip=())
    (notice,) = [n for n in await outbox.for_app(running.svc.db, "kiosk-1")]
    assert notice.state == "pending" and notice.attempts == 1
    assert "refused: localhost resolves to" in notice.last_error and "loopback" in notice.last_error
    assert receiver.received == []


class Redirector:
    """A business system that answers every notification with a redirect to ``target``."""

    def __init__(self, status: int = 307) -> None:
        self.status, self.target, self.hits = status, "", 0

    async def start(self) -> Redirector:
        async def handle(_request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(status=self.status, headers={"Location": self.target})

        app = web.Application()
        app.router.add_post("/moved", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/moved"
        return self

    async def close(self) -> None:
        await self._runner.cleanup()


async def test_a_redirect_is_checked_like_the_first_url(gateway_factory, api_factory, channel, keys, sqlite_url):
    inside = await NotifyReceiver(keys.gateway.public()).start()
    redirector = await Redirector().start()
    hits: list[str] = []

    async def hidden_handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    hidden_app = web.Application()
    hidden_app.router.add_post("/internal", hidden_handler)
    hidden = web.AppRunner(hidden_app, access_log=None)
    await hidden.setup()
    await web.TCPSite(hidden, "127.0.0.2", 0).start()
    hidden_url = f"http://127.0.0.2:{hidden.addresses[0][1]}/internal"
    try:
        running = await gateway_factory(
            sqlite_url,
            channel=channel,
            his=ApprovingHis(),
            notify_url=redirector.url,
            app={"notify_hosts": ["127.0.0.2"]},
            notifications_cfg={"allow_addresses": ["127.0.0.1/32"]},
        )
        client = api_factory(running)
        redirector.target = hidden_url
        await paid_order(running, client, channel, "SSRF-3")
        await drain(running.gateway, skip=())
        (notice,) = await outbox.for_app(running.svc.db, "kiosk-1")
        assert redirector.hits == 1 and hits == []
        assert "refused: 127.0.0.2 is a loopback address" in notice.last_error

        redirector.target = inside.url  # an allowed host and address: followed, and signed for its own path
        await outbox.resend(running.svc.db, notice.id)
        await drain(running.gateway, skip=())
        assert inside.received == [notice.id] and inside.bad_signatures == 0
        assert (await outbox.get(running.svc.db, notice.id)).state == "delivered"
    finally:
        await hidden.cleanup()
        await redirector.close()
        await inside.close()


# --- items 1 and 10 on the gateway ---------------------------------------------------------------------------


async def test_a_unicode_digit_timestamp_and_a_deep_body_are_clean_refusals(gateway_factory, sqlite_url, keys):
    running = await gateway_factory(sqlite_url)
    body = json.dumps(order_body("TS-1")).encode()
    signed = protocol.sign_request(keys.app, "POST", "/v1/orders", body)
    signed[protocol.HEADER_TIMESTAMP] = "1²"
    async with (
        aiohttp.ClientSession() as session,
        session.post(running.url + "/v1/orders", data=body, headers=signed) as resp,
    ):
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "bad_timestamp"
    deep = b"[" * 5000 + b"]" * 5000
    status, answer = await _signed(running, keys, "POST", "/v1/orders", deep)
    assert (status, answer["error"]["code"]) == (400, "malformed_json")
