#!/usr/bin/env python3
"""Benchmark of the outbound path: kiosks paying through the agent against the same kiosks calling the gateway
directly, in the same run, with the agent killed once mid-run.

Everything is a real process: the sandbox HIS, the sandbox channels (WeChat Pay v3), the gateway (PostgreSQL,
its mutual-TLS listener) and the agent (``his-bridge serve``, both listeners). Each terminal pays one 付款码
payment at a time, as a kiosk does:

- **direct**: the terminals sign as a hospital app and call the gateway's business API over mutual TLS;
- **egress**: the same terminals call the agent's intranet listener (HMAC, TLS); the agent journals each payment
  and forwards it to the gateway. Halfway through, the agent is SIGKILLed and started again; terminals that
  lost their answer send the same request again and ask until it is final, as the terminal API says.

Meanwhile the gateway commits every payment to the HIS through the agent's platform listener, and a platform
client reads from it, so both listeners are busy while the agent's RSS is sampled. At the end the channel
sandbox's ledger is compared with the answers: ``lost`` payments were answered ``paid`` but the channel has no
success for them; ``doubled`` requests were taken more than once. The last line is one JSON object.

    .venv/bin/python scripts/bench_egress.py                 # 400 payments per path, 8 terminals
    .venv/bin/python scripts/bench_egress.py --quick         # a smoke run

This is a benchmark, not a test: it reports figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
if str(REPO) not in sys.path:  # run as a file from anywhere: import the repo's packages
    sys.path.insert(0, str(REPO))

from benchkit import Children, free_port, log, machine, read_announcements, run_in_workdir  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from bridge import protocol, terminal_protocol, tls  # noqa: E402
from bridge.certs import make_dev_certs  # noqa: E402
from bridge.client import BridgeClient, BridgeError  # noqa: E402
from sandbox.kiosk import TerminalClient  # noqa: E402

BENCH_ROOT = REPO / "var" / "bench"
PROFILE = REPO / "config" / "profiles" / "sandbox-soap.toml"
MCHID, APPID, SERIAL = "1900000109", "wx5e1b2d3c4f5a6b7c", "3775B6A45ACD588826D15E583A95F5DD2B6E3D22"
AGENT_APP, DIRECT_APP = "agent-H001", "kiosk-direct"
AMOUNT_FEN = 100
FINAL = {"paid", "failed", "closed"}
AGAIN = {"not_ready", "journal_unavailable", "too_many_requests", "internal"}
RSS_INTERVAL_S = 0.05
PLATFORM_READ_PAUSE_S = 0.2
"""The platform's own reads during the egress phase (about 5/s besides its HIS commits): steady, not a flood."""
READY_TIMEOUT_S = 60


@dataclass
class Settings:
    payments: int
    terminals: int
    keep: bool
    read_pause_s: float = PLATFORM_READ_PAUSE_S


@dataclass
class Outcome:
    """One terminal request: when it was first sent, when its answer was final, and that answer."""

    terminal: str
    request_id: str
    started: float
    finished: float | None = None
    status: str | None = None
    out_trade_no: str | None = None
    attempts: int = 0


@dataclass
class PathRun:
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0

    def latencies_ms(self) -> list[float]:
        return sorted((o.finished - o.started) * 1000 for o in self.outcomes if o.finished is not None)

    def mean_ms(self) -> float:
        values = self.latencies_ms()
        return sum(values) / len(values) if values else 0.0

    def percentile(self, q: float) -> float:
        values = self.latencies_ms()
        return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else 0.0

    @property
    def per_s(self) -> float:
        done = sum(1 for o in self.outcomes if o.status in FINAL)
        return done / self.elapsed_s if self.elapsed_s else 0.0


class RssSampler:
    """Peak RSS of whichever agent process is running (it is replaced once), sampled on a thread."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            if self.pid is None:
                continue
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, psutil.Process(self.pid).memory_info().rss)
                self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def auth_code() -> str:
    """A WeChat 付款码 the sandbox does not know: its default payer pays at once."""
    return "13" + "".join(secrets.choice("0123456789") for _ in range(16))


def payment(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "business_type": "prepay",
        "amount_fen": AMOUNT_FEN,
        "subject": "住院预交金",
        "patient_id": "P0003",
        "inpatient_no": "Z0001",
        "auth_code": auth_code(),
    }


def _rsa_pair(private: Path, public: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, spki))


@dataclass
class Setup:
    work: Path
    certs: Any
    terminal_keys: dict[str, bytes]
    direct_key: protocol.SigningKey
    gateway_key: protocol.VerifyKey
    ports: dict[str, int]


def write_keys(work: Path, terminals: int) -> Setup:
    certs = make_dev_certs(work / "certs")
    keys = work / "keys"
    keys.mkdir()
    gateway, agent_app, direct = (protocol.generate_ed25519(n) for n in ("gateway", AGENT_APP, DIRECT_APP))
    for name, key in (("gateway", gateway), ("agent-app", agent_app), ("direct-app", direct)):
        (keys / f"{name}.pem").write_bytes(protocol.private_pem(key))
        (keys / f"{name}.pem").chmod(0o600)
        (keys / f"{name}.pub").write_bytes(key.public().public_pem())
    terminal_keys = {}
    for i in range(terminals):
        tid = f"KIOSK-{i + 1:02d}"
        raw = terminal_protocol.new_key()
        (keys / f"{tid}.key").write_text(raw + "\n")
        (keys / f"{tid}.key").chmod(0o600)
        terminal_keys[tid] = bytes.fromhex(raw)
    _rsa_pair(keys / "apiclient_key.pem", keys / "apiclient_pub.pem")
    (keys / "apiv3.key").write_text(secrets.token_hex(16) + "\n")
    (keys / "apiv3.key").chmod(0o600)
    ports = {name: free_port() for name in ("agent_api", "agent_ops", "intranet", "gateway", "gateway_mtls")}
    return Setup(work, certs, terminal_keys, direct, gateway.public(), ports)


def agent_toml(s: Setup, his_url: str) -> Path:
    c, k, p = s.certs, s.work / "keys", s.ports
    terminals = "".join(
        f"""
[[intranet.terminals]]
id = "{tid}"
kind = "kiosk"
operations = ["pay.codepay", "pay.query"]
auth = "hmac"
key_file = "{k / f"{tid}.key"}"
addresses = ["127.0.0.1"]
max_payment_fen = 100000
max_daily_fen = 10000000000
"""
        for tid in s.terminal_keys
    )
    text = f"""hospital = "H001"
[server]
listen = "127.0.0.1:{p["agent_api"]}"
ops_listen = "127.0.0.1:{p["agent_ops"]}"
[tls]
cert = "{c.server_cert}"
key = "{c.server_key}"
client_ca = "{c.ca_cert}"
allowed_clients = [{{ cn = "platform-gateway" }}]
[signing]
key_id = "bridge-H001"
key = "{c.bridge_signing_key}"
clients = [{{ key_id = "platform", public_key = "{c.platform_signing_pub}" }}]
[journal]
path = "{s.work / "journal.sqlite3"}"
[his]
profile = "{PROFILE}"
overrides = {{ "soap.base_url" = "{his_url}" }}
[logging]
level = "warning"
[intranet]
listen = "127.0.0.1:{p["intranet"]}"
answer_deadline_s = 10
per_terminal_concurrency = 4
[intranet.tls]
cert = "{c.intranet_server_cert}"
key = "{c.intranet_server_key}"
terminal_ca = "{c.hospital_ca_cert}"
{terminals}
[egress]
gateway_url = "https://127.0.0.1:{p["gateway_mtls"]}"
ca = "{c.ca_cert}"
client_cert = "{c.egress_client_cert}"
client_key = "{c.egress_client_key}"
gateway_public_key = "{k / "gateway.pub"}"
journal = "{s.work / "egress.sqlite3"}"
retry_base_s = 0.2
retry_max_s = 2
link_retry_s = 0.5
[[egress.apps]]
app_id = "{AGENT_APP}"
signing_key = "{k / "agent-app.pem"}"
"""
    path = s.work / "agent.toml"
    path.write_text(text)
    return path


def gateway_toml(s: Setup, db_url: str, wechat_url: str, channel_state: Path) -> Path:
    c, k, p = s.certs, s.work / "keys", s.ports
    key_id = (channel_state / "wechatpay_public_key_id.txt").read_text().strip()
    text = f"""[server]
listen = "127.0.0.1:{p["gateway"]}"
public_url = "http://127.0.0.1:{p["gateway"]}"
[server.mtls]
listen = "127.0.0.1:{p["gateway_mtls"]}"
cert = "{c.gateway_server_cert}"
key = "{c.gateway_server_key}"
client_ca = "{c.ca_cert}"
[database]
url = "{db_url}"
pool_size = 20
[signing]
key = "{k / "gateway.pem"}"
[workers]
poll_interval_s = 0.1
pending_query_after_s = 5
[recon]
enabled = false
[console]
enabled = false
[logging]
level = "warning"
[[hospitals]]
id = "H001"
[hospitals.bridge]
url = "https://127.0.0.1:{p["agent_api"]}"
ca = "{c.ca_cert}"
client_cert = "{c.client_cert}"
client_key = "{c.client_key}"
signing_key = "{c.platform_signing_key}"
bridge_key_id = "bridge-H001"
bridge_public_key = "{c.bridge_signing_pub}"
timeout_s = 10
[[hospitals.apps]]
app_id = "{AGENT_APP}"
public_key = "{k / "agent-app.pub"}"
kind = "agent"
client_cert_cn = "his-bridge-H001-egress"
[[hospitals.apps]]
app_id = "{DIRECT_APP}"
public_key = "{k / "direct-app.pub"}"
[[merchants]]
id = "wx-h001"
channel = "wechat"
hospital = "H001"
mchid = "{MCHID}"
appid = "{APPID}"
merchant_serial_no = "{SERIAL}"
private_key_file = "{k / "apiclient_key.pem"}"
apiv3_key = {{ file = "{k / "apiv3.key"}" }}
public_key_file = "{channel_state / "wechatpay_public_key.pem"}"
public_key_id = "{key_id}"
base_url = "{wechat_url}"
"""
    path = s.work / "gateway.toml"
    path.write_text(text)
    return path


async def wait_http(url: str, proc: Any, what: str, *, ssl_ctx: Any = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx or False)) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready within {READY_TIMEOUT_S} s")


class DirectTerminal:
    """A kiosk that could reach the internet: it signs as a hospital app and calls the gateway itself."""

    def __init__(self, s: Setup, url: str) -> None:
        ctx = tls.client_context(s.certs.ca_cert, s.certs.egress_client_cert, s.certs.egress_client_key)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=100))
        self.url = url
        self.key = s.direct_key
        self.gateway_key = s.gateway_key

    async def close(self) -> None:
        await self.session.close()

    async def pay(self, terminal: str, body: dict[str, Any]) -> tuple[str, str | None]:
        order = {
            "business_order_no": f"{terminal}:{body['request_id']}",
            "business_type": "prepay",
            "scene": "codepay",
            "channel": "wechat",
            "amount_fen": body["amount_fen"],
            "subject": body["subject"],
            "patient_id": body["patient_id"],
            "inpatient_no": body["inpatient_no"],
            "auth_code": body["auth_code"],
        }
        raw = json.dumps(order, ensure_ascii=False).encode()
        headers = protocol.sign_request(self.key, "POST", "/v1/orders", raw)
        async with self.session.post(
            self.url + "/v1/orders", data=raw, headers={**headers, "Content-Type": "application/json"}
        ) as resp:
            data = await resp.read()
            protocol.verify_response(self.gateway_key, resp.status, headers[protocol.HEADER_NONCE], resp.headers, data)
        view = json.loads(data).get("order") or {}
        status = {"paid": "paid", "completed": "paid", "his_rejected": "paid", "closed": "closed"}.get(
            str(view.get("status")), "failed" if view.get("status") == "failed" else "pending"
        )
        return status, view.get("out_trade_no")


async def run_direct(s: Setup, settings: Settings, url: str, prefix: str = "DIRECT") -> PathRun:
    client = DirectTerminal(s, url)
    run = PathRun()
    per_terminal = settings.payments // settings.terminals

    async def terminal(tid: str) -> None:
        for n in range(per_terminal):
            outcome = Outcome(tid, f"{prefix}{n:06d}", time.perf_counter(), attempts=1)
            run.outcomes.append(outcome)
            outcome.status, outcome.out_trade_no = await client.pay(tid, payment(outcome.request_id))
            outcome.finished = time.perf_counter()

    started = time.perf_counter()
    try:
        await asyncio.gather(*(terminal(tid) for tid in s.terminal_keys))
    finally:
        await client.close()
    run.elapsed_s = time.perf_counter() - started
    return run


async def run_egress(
    s: Setup,
    settings: Settings,
    restart: Any,
    rss: RssSampler,
    platform_load: asyncio.Event,
    *,
    kill: bool = True,
    prefix: str = "EGRESS",
) -> tuple[PathRun, float]:
    ctx = ssl.create_default_context(cafile=str(s.certs.hospital_ca_cert))
    url = f"https://127.0.0.1:{s.ports['intranet']}"
    clients = {t: TerminalClient(url, t, key, ssl_context=ctx, timeout_s=60) for t, key in s.terminal_keys.items()}
    run = PathRun()
    per_terminal = settings.payments // settings.terminals
    kill_after = settings.payments // 2
    killed = asyncio.Event()
    restart_s = 0.0
    agent_up = asyncio.Event()
    agent_up.set()

    async def settle(client: TerminalClient, outcome: Outcome, body: dict[str, Any]) -> None:
        answer: dict[str, Any] = {}
        while answer.get("status") not in FINAL:
            await agent_up.wait()
            outcome.attempts += 1
            try:
                if answer:
                    await asyncio.sleep(0.05)
                    _, answer = await client.call("pay.query", {"request_id": body["request_id"]})
                else:
                    _, answer = await client.call("pay.codepay", body)
            except (aiohttp.ClientError, TimeoutError):
                answer = {}
                await asyncio.sleep(0.05)
                continue
            code = (answer.get("error") or {}).get("code")
            if "status" not in answer and code in AGAIN:
                answer = {}  # refused before it was journaled (the agent was starting): send it again
            elif "status" not in answer:
                answer = {"status": f"refused:{code}"}
                break
        outcome.status, outcome.out_trade_no = answer["status"], answer.get("out_trade_no")

    async def terminal(tid: str) -> None:
        client = clients[tid]
        for n in range(per_terminal):
            outcome = Outcome(tid, f"{prefix}{n:06d}", time.perf_counter())
            run.outcomes.append(outcome)
            await settle(client, outcome, payment(outcome.request_id))
            outcome.finished = time.perf_counter()
            if kill and not killed.is_set() and sum(1 for o in run.outcomes if o.finished) >= kill_after:
                killed.set()

    async def killer() -> None:
        nonlocal restart_s
        await killed.wait()
        agent_up.clear()
        began = time.perf_counter()
        await restart(rss)
        restart_s = time.perf_counter() - began
        agent_up.set()

    platform_load.set()
    started = time.perf_counter()
    kill_task = asyncio.create_task(killer())
    try:
        await asyncio.gather(*(terminal(tid) for tid in s.terminal_keys))
    finally:
        platform_load.clear()
        if not killed.is_set():
            kill_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await kill_task
        for client in clients.values():
            await client.close()
    run.elapsed_s = time.perf_counter() - started
    return run, restart_s


async def platform_reader(s: Setup, busy: asyncio.Event, stop: asyncio.Event, pause_s: float) -> int:
    """The cloud platform reading from the agent while terminals pay: its other listener is busy too."""
    client = BridgeClient(
        f"https://127.0.0.1:{s.ports['agent_api']}",
        signing_key=protocol.load_signing_key("platform", s.certs.platform_signing_key),
        bridge_key=protocol.load_verify_key("bridge-H001", s.certs.bridge_signing_pub),
        ssl_context=tls.client_context(s.certs.ca_cert, s.certs.client_cert, s.certs.client_key),
        retries=0,
        timeout_s=10,
    )
    reads = 0
    async with client:
        while not stop.is_set():
            if not busy.is_set():
                await asyncio.sleep(0.05)
                continue
            with contextlib.suppress(BridgeError):
                await client.call("bills.unpaid", {"patient_id": "P0001"})
                reads += 1
            await asyncio.sleep(pause_s)
    return reads


async def forward_mean_ms(ops_url: str) -> float:
    """The agent's own view: how long its calls to the gateway took on average (since its restart)."""
    async with aiohttp.ClientSession() as session, session.get(ops_url + "/metrics") as resp:
        text = await resp.text()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith('hisbridge_egress_forward_duration_seconds_sum{operation="pay.codepay"}'):
            total = float(line.rsplit(" ", 1)[1])
        if line.startswith('hisbridge_egress_forward_duration_seconds_count{operation="pay.codepay"}'):
            count = float(line.rsplit(" ", 1)[1])
    return total / count * 1000 if count else 0.0


async def channel_ledger(admin_url: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as session, session.get(admin_url + "/trades?channel=wechat") as resp:
        trades = (await resp.json())["trades"]
    return {t["out_trade_no"]: t["state"] for t in trades}


async def orders_by_request(db_url: str) -> dict[str, list[str]]:
    import sqlalchemy as sa

    from gateway.store.db import Database
    from gateway.store.tables import orders

    db = Database(db_url)
    try:
        async with db.read() as conn:
            rows = await conn.execute(sa.select(orders.c.business_order_no, orders.c.out_trade_no))
            out: dict[str, list[str]] = {}
            for row in rows:
                out.setdefault(row.business_order_no, []).append(row.out_trade_no)
            return out
    finally:
        await db.close()


async def run(settings: Settings, children: Children, work: Path) -> dict[str, Any]:
    s = write_keys(work, settings.terminals)
    py = sys.executable
    his = children.start(
        [py, "-m", "sandbox.cli", "his", "--listen", "127.0.0.1:0", "--db", str(work / "his.sqlite3")],
        work / "his.log",
        stdout_pipe=True,
    )
    his_url = read_announcements(his, ["sandbox HIS listening on"])["sandbox HIS listening on"].rsplit("/his/", 1)[0]
    state = work / "channels"
    channels = children.start(
        [
            py, "-m", "sandbox.cli", "channels", "--listen", "127.0.0.1:0", "--state-dir", str(state),
            "--db", str(state / "ledger.sqlite3"), "--signing-mode", "public_key", "--wechat-mchid", MCHID,
            "--wechat-appid", APPID, "--wechat-merchant-serial", SERIAL,
            "--wechat-merchant-key", str(work / "keys" / "apiclient_pub.pem"),
            "--wechat-apiv3-key-file", str(work / "keys" / "apiv3.key"),
        ],
        work / "channels.log",
        stdout_pipe=True,
    )  # fmt: skip
    admin_url = read_announcements(channels, ["admin API at"])["admin API at"]
    wechat_url = admin_url.removesuffix("/_admin")
    pg = children.postgres()
    db_url = f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/postgres"
    gateway = children.start(
        [py, "-m", "gateway.cli", "-c", str(gateway_toml(s, db_url, wechat_url, state)), "serve"],
        work / "gateway.log",
    )
    await wait_http(f"http://127.0.0.1:{s.ports['gateway']}/healthz", gateway, "the gateway")
    agent_cfg = agent_toml(s, his_url)

    def start_agent() -> Any:
        return children.start([py, "-m", "bridge.cli", "serve", "--config", str(agent_cfg)], work / "agent.log")

    agent = start_agent()
    await wait_http(f"http://127.0.0.1:{s.ports['agent_ops']}/readyz", agent, "the agent")

    async def restart(rss: RssSampler) -> None:
        nonlocal agent
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        log("agent SIGKILLed mid-run; starting it again")
        agent = start_agent()
        rss.pid = agent.pid
        await wait_http(f"http://127.0.0.1:{s.ports['agent_ops']}/readyz", agent, "the agent")

    direct_url = f"https://127.0.0.1:{s.ports['gateway_mtls']}"
    warm = Settings(max(settings.terminals, settings.payments // 10), settings.terminals, settings.keep, 1.0)
    log(f"warm-up: {warm.payments} payments each way, not measured")
    warmups = [*(await run_direct(s, warm, direct_url, "WARMD")).outcomes]
    idle = asyncio.Event()
    with RssSampler() as unused:
        warmups += (await run_egress(s, warm, restart, unused, idle, kill=False, prefix="WARME"))[0].outcomes
    log(f"direct: {settings.payments} payments from {settings.terminals} terminals to the gateway")
    direct = await run_direct(s, settings, direct_url)
    log("egress: the same through the agent, killed once halfway")
    stop, busy = asyncio.Event(), asyncio.Event()
    reader = asyncio.create_task(platform_reader(s, busy, stop, settings.read_pause_s))
    with RssSampler() as rss:
        rss.pid = agent.pid
        egress, restart_s = await run_egress(s, settings, restart, rss, busy)
    stop.set()
    reads = await reader
    forward_ms = await forward_mean_ms(f"http://127.0.0.1:{s.ports['agent_ops']}")

    ledger = await channel_ledger(admin_url)
    by_request = await orders_by_request(db_url.replace("+asyncpg", ""))
    taken = {no for no, state in ledger.items() if state in ("SUCCESS", "REFUND")}
    outcomes = [*warmups, *direct.outcomes, *egress.outcomes]
    lost = sum(1 for o in outcomes if o.status == "paid" and o.out_trade_no not in taken)
    doubled = sum(1 for trades in by_request.values() if len(taken & set(trades)) > 1)
    answered_paid = {o.out_trade_no for o in outcomes if o.status == "paid"}
    taken_not_answered = len(taken - answered_paid)
    unanswered = sum(1 for o in outcomes if o.status not in FINAL)
    if unanswered:
        log(f"not final: {sorted({str(o.status) for o in outcomes if o.status not in FINAL})}")

    ratio = egress.per_s / direct.per_s if direct.per_s else 0.0
    figures = {
        "direct_payments_per_s": round(direct.per_s, 1),
        "egress_payments_per_s": round(egress.per_s, 1),
        "egress_vs_direct_throughput": round(ratio, 3),
        "direct_p50_ms": round(direct.percentile(0.5), 1),
        "egress_p50_ms": round(egress.percentile(0.5), 1),
        "egress_added_p50_ms": round(egress.percentile(0.5) - direct.percentile(0.5), 1),
        "direct_mean_ms": round(direct.mean_ms(), 1),
        "egress_mean_ms": round(egress.mean_ms(), 1),
        "agent_to_gateway_mean_ms": round(forward_ms, 1),
        "direct_p99_ms": round(direct.percentile(0.99), 1),
        "egress_p99_ms": round(egress.percentile(0.99), 1),
        "agent_restart_s": round(restart_s, 2),
        "agent_peak_rss_mb": round(rss.peak / 2**20, 1),
        "platform_reads_during_egress": reads,
        "lost": lost,
        "doubled": doubled,
        "taken_not_answered_paid": taken_not_answered,
        "unanswered": unanswered,
        "payments_per_path": settings.payments,
        "terminals": settings.terminals,
        "machine": machine(["aiohttp", "cryptography", "sqlalchemy"]),
    }
    print(
        f"direct  {direct.per_s:7.1f} payments/s  p50 {direct.percentile(0.5):7.1f} ms  p99 "
        f"{direct.percentile(0.99):7.1f} ms\n"
        f"egress  {egress.per_s:7.1f} payments/s  p50 {egress.percentile(0.5):7.1f} ms  p99 "
        f"{egress.percentile(0.99):7.1f} ms  (agent killed once, back in {restart_s:.1f} s)\n"
        f"means: direct {direct.mean_ms():.1f} ms, egress {egress.mean_ms():.1f} ms, of which the agent waited for the"
        f" gateway {forward_ms:.1f} ms\n"
        f"ratio {ratio:.2f}; agent peak RSS {rss.peak / 2**20:.1f} MB ({rss.samples} samples, {reads} platform reads"
        f" meanwhile); lost {lost}, doubled {doubled}, taken but not answered paid {taken_not_answered},"
        f" unanswered {unanswered}",
        flush=True,
    )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (40 payments per path, 4 terminals)")
    parser.add_argument("--payments", type=int, help="payments per path (default 400)")
    parser.add_argument("--terminals", type=int, help="terminals paying at once, one payment each (default 8)")
    parser.add_argument(
        "--platform-read-pause",
        type=float,
        default=PLATFORM_READ_PAUSE_S,
        metavar="S",
        help=f"pause between the platform's reads from the agent while terminals pay (default {PLATFORM_READ_PAUSE_S})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, journals) afterwards")
    args = parser.parse_args(argv)
    terminals = args.terminals or (4 if args.quick else 8)
    payments = args.payments or (40 if args.quick else 400)
    settings = Settings(
        max(terminals, payments - payments % terminals), terminals, args.keep, max(0.0, args.platform_read_pause)
    )
    return run_in_workdir("egress-", settings.keep, lambda children, work: run(settings, children, work), BENCH_ROOT)


if __name__ == "__main__":
    sys.exit(main())
