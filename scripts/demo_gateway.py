"""The gateway half of the demo.

Next to the demo's sandbox HIS and bridge agent it starts the sandbox payment channels and ``his-gateway`` as real
processes, configured from the shipped example the way an implementer would configure them, with keys made for
this run only. The demo then plays the hospital app (signed business API calls, a notify endpoint of its own) and
the payer (the channel sandbox's admin API), and ends by holding the three ledgers side by side: the HIS's, the
channel's and the gateway's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import subprocess
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import demo_kiosk
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from demo_support import BIN, REPO, Processes, bridge_client, free_port, say, shown, step, until, yuan

from bridge import protocol
from bridge.certs import DevCerts
from bridge.client import BridgeClient
from gateway.client import GatewayClient, GatewayError, Notification

HIS_TZ = ZoneInfo("Asia/Shanghai")
APP_ID = "kiosk-1"
PATIENT_CARD = "C0002"
"""The gateway half pays another patient's bills than the bridge half, which has already paid 张三's."""
ALIPAY_APP_ID = "2021000000000001"
ALIPAY_SELLER_ID = "2088000000000001"
UNIONPAY_MER_ID = "777290058160001"
CHANNEL_NAMES = {"wechat": "WeChat Pay Native", "alipay": "Alipay precreate", "unionpay": "UnionPay QR (云闪付)"}


# --- keys and config --------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        protocol.write_private(path, data)  # 0600 from creation, never loosened in between
    else:
        path.write_bytes(data)
    return path


def _rsa_pair(private: Path, public: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(private, pem, private=True)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    _write(public, key.public_key().public_bytes(serialization.Encoding.PEM, spki))


@dataclass(frozen=True)
class DemoKeys:
    """Fresh keys for this run, at the paths the example config names (relative to the config's folder)."""

    gateway: protocol.SigningKey
    app: protocol.SigningKey


def make_keys(work: Path) -> DemoKeys:
    keys = work / "keys"
    existing = keys / "gateway-signing.pem"  # made with the agent's egress config when the kiosk step runs
    if existing.exists():
        gateway = protocol.load_signing_key("gateway", existing)
    else:
        gateway = protocol.generate_ed25519("gateway")
        _write(existing, protocol.private_pem(gateway), private=True)
    app = protocol.generate_ed25519(APP_ID)
    _write(keys / f"{APP_ID}.pem", protocol.private_pem(app), private=True)
    _write(keys / f"{APP_ID}.pub", app.public().public_pem())
    _rsa_pair(keys / "wechat" / "apiclient_key.pem", keys / "wechat" / "apiclient_pub.pem")
    _write(keys / "wechat" / "apiv3.key", secrets.token_hex(16).encode() + b"\n", private=True)
    _rsa_pair(keys / "alipay" / "app_private_key.pem", keys / "alipay" / "app_public_key.pem")
    return DemoKeys(gateway, app)


def _example() -> tuple[str, dict[str, Any]]:
    text = (REPO / "config" / "gateway.example.toml").read_text(encoding="utf-8")
    wechat = next(m for m in tomllib.loads(text)["merchants"] if m["channel"] == "wechat")
    return text, wechat


def _replace(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise SystemExit(f"config/gateway.example.toml no longer has {old!r} once: update scripts/demo_gateway.py")
    return text.replace(old, new)


@dataclass(frozen=True)
class SandboxChannels:
    wechat_url: str
    alipay_url: str
    unionpay_url: str
    unionpay_file_url: str
    admin_url: str
    state: Path


def start_channels(procs: Processes, work: Path) -> SandboxChannels:
    """``his-sandbox channels`` as the WeChat Pay merchant of the example config, an Alipay app and a UnionPay
    merchant, trusting the public halves of this run's merchant keys; it makes its own platform keys in its state
    folder, and issues the UnionPay merchant's signing certificate there, as UnionPay does on enrolment."""
    _, wechat = _example()
    keys, state = work / "keys", work / "channels"
    proc = procs.start(
        "channels",
        [
            str(BIN / "his-sandbox"), "channels", "--listen", "127.0.0.1:0", "--state-dir", str(state),
            "--db", str(state / "ledger.sqlite3"), "--signing-mode", "public_key",
            "--wechat-mchid", wechat["mchid"], "--wechat-appid", wechat["appid"],
            "--wechat-merchant-serial", wechat["merchant_serial_no"],
            "--wechat-merchant-key", str(keys / "wechat" / "apiclient_pub.pem"),
            "--wechat-apiv3-key-file", str(keys / "wechat" / "apiv3.key"),
            "--alipay-app-id", ALIPAY_APP_ID, "--alipay-app-public-key", str(keys / "alipay" / "app_public_key.pem"),
            "--alipay-seller-id", ALIPAY_SELLER_ID, "--unionpay-mer-id", UNIONPAY_MER_ID,
        ],
        read_stdout=True,
    )  # fmt: skip
    urls = procs.announcements(
        "channels",
        proc,
        r"WeChat Pay v3 sandbox at (\S+)",
        r"Alipay sandbox gateway at (\S+)",
        r"UnionPay sandbox at (\S+)",
        r"UnionPay sandbox at \S+ \(files at (\S+)\)",
        r"admin API at (\S+)",
    )
    return SandboxChannels(*urls, state=state)


def write_gateway_config(
    work: Path, port: int, agent_url: str, notify_url: str, channels: SandboxChannels, extra: str = ""
) -> Path:
    """The shipped example, pointed at this run: its port, a SQLite file beside it, the demo's agent (mTLS client
    certificate and platform signing key from the dev certs), the demo as the app, the sandbox channels."""
    text, _ = _example()
    public_key_id = (channels.state / "wechatpay_public_key_id.txt").read_text().strip()
    edits = [
        ('listen = "127.0.0.1:8600"', f'listen = "127.0.0.1:{port}"'),
        ('public_url = "https://pay.example-hospital.cn"', f'public_url = "http://127.0.0.1:{port}"'),
        ('url = "sqlite:///var/gateway.sqlite3"', 'url = "sqlite:///gateway.sqlite3"'),
        ("poll_interval_s = 1\n", "poll_interval_s = 0.2".ljust(51) + "# the demo: quicker steps\n"),
        (
            "suspense_days = 3 ",
            "suspense_days = 0".ljust(51) + "# the demo reconciles its own day at once: flag without waiting\n#",
        ),
        ('url = "https://10.1.2.3:8443"', f'url = "{agent_url}"'),
        ('signing_key = "keys/platform-signing.pem"', 'signing_key = "certs/platform-signing.pem"'),
        ('bridge_public_key = "keys/bridge-H001.pub"', 'bridge_public_key = "certs/bridge-signing.pub"'),
        ('notify_url = "https://his-apps.example-hospital.cn/pay/notify"', f'notify_url = "{notify_url}"'),
        (
            '"patient.query", "bills.unpaid"]',
            '"patient.query", "bills.unpaid", "registration.lock", "registration.unlock"]',
        ),
        (
            '# allow_addresses = ["10.20.0.0/16"]',
            'allow_addresses = ["127.0.0.0/8"]'.ljust(51) + "# the demo's app listens on loopback",
        ),
        ('apiv3_key = { env = "WECHAT_APIV3_KEY" }', 'apiv3_key = { file = "keys/wechat/apiv3.key" }'),
        ('public_key_file = "keys/wechat/pub_key.pem"', 'public_key_file = "channels/wechatpay_public_key.pem"'),
        (
            'public_key_id = "PUB_KEY_ID_0000000000000001"',
            f'public_key_id = "{public_key_id}"\nbase_url = "{channels.wechat_url}"',
        ),
    ]
    for old, new in edits:
        text = _replace(text, old, new)
    text += (
        f"""
[[merchants]]                                      # added by the demo: an Alipay app on the sandbox channels
id = "ali-h001"
channel = "alipay"
hospital = "H001"
app_id = "{ALIPAY_APP_ID}"
app_private_key_file = "keys/alipay/app_private_key.pem"
alipay_public_key_file = "channels/alipay_public_key.pem"
seller_id = "{ALIPAY_SELLER_ID}"
gateway_url = "{channels.alipay_url}"

[[merchants]]                                      # added by the demo: a UnionPay merchant on the sandbox channels
id = "up-h001"
channel = "unionpay"
hospital = "H001"
mer_id = "{UNIONPAY_MER_ID}"
root_cert_file = "channels/unionpay_root.cer"
middle_cert_file = "channels/unionpay_middle.cer"
base_url = "{channels.unionpay_url}"
file_url = "{channels.unionpay_file_url}"

[[merchants.merchant_keys]]                        # its signing certificate, as UnionPay issued it
id = "sign-2026"
private_key_file = "channels/unionpay_merchant_sign.pfx"
password = {{ file = "channels/unionpay_merchant_sign.pw" }}
"""
        + extra
    )
    config = work / "gateway.toml"
    protocol.write_private(config, text.encode("utf-8"))
    return config


# --- the hospital app and the payer -----------------------------------------------------------------------------


class NotifyReceiver:
    """The hospital app's notify endpoint: takes only what the gateway signed (``GatewayClient``), and keeps
    events by id, since a redelivered event is the same event."""

    def __init__(self, app: GatewayClient) -> None:
        self.app = app
        self.events: dict[int, Notification] = {}
        self.refused = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> NotifyReceiver:
        app = web.Application()
        app.router.add_post("/pay/notify", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/pay/notify"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = self.app.verify_notification(request.method, request.path_qs, request.headers, body)
        except protocol.EnvelopeError:
            self.refused += 1
            return web.Response(status=401)
        self.events.setdefault(event.id, event)
        return web.Response(text="ok")


class ChannelAdmin:
    """The channel sandbox's admin API: the payer's side of a trade, and a look into the channel's ledger."""

    def __init__(self, admin_url: str, session: aiohttp.ClientSession) -> None:
        self.admin_url = admin_url
        self.session = session

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self.session.request(method, self.admin_url + path, json=body) as resp:
            answer: dict[str, Any] = await resp.json()
            if resp.status >= 400:
                raise SystemExit(f"channel sandbox {method} {path}: HTTP {resp.status} {answer}")
            return answer

    async def pay(self, channel: str, out_trade_no: str) -> dict[str, Any]:
        if channel == "alipay":
            await self._json("POST", "/payer/scan", {"channel": channel, "out_trade_no": out_trade_no})
        return await self._json("POST", "/payer/pay", {"channel": channel, "out_trade_no": out_trade_no})

    async def ledger(self, channel: str, out_trade_no: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        trades = (await self._json("GET", f"/trades?channel={channel}"))["trades"]
        refunds = (await self._json("GET", f"/refunds?channel={channel}"))["refunds"]
        trade = next(t for t in trades if t["out_trade_no"] == out_trade_no)
        return trade, [r for r in refunds if r["out_trade_no"] == out_trade_no]


# --- the run ----------------------------------------------------------------------------------------------------


@dataclass
class Trail:
    """The states a polled order or refund was seen in, for a one-line account of its path."""

    seen: list[str] = field(default_factory=list)

    def note(self, state: str) -> str:
        if not self.seen or self.seen[-1] != state:
            self.seen.append(state)
        return state

    def __str__(self) -> str:
        return " → ".join(self.seen)


async def start_gateway(procs: Processes, config: Path, url: str) -> None:
    proc = procs.start("gateway", [str(BIN / "his-gateway"), "-c", str(config), "serve"])

    async def healthy() -> bool:
        procs.check("gateway", proc)
        try:
            async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await until(healthy, bool, "the gateway to answer /healthz")


async def refund(app: GatewayClient, order_no: str, refund_no: str, amount_fen: int, reason: str) -> dict[str, Any]:
    """Ask for a refund and follow it to the end: HIS refund.apply → channel refund → HIS refund.writeback."""
    trail = Trail()
    trail.note((await app.refund(order_no, refund_no, amount_fen, reason))["state"])

    async def current() -> dict[str, Any]:
        row: dict[str, Any] = await app.get_refund(refund_no)
        trail.note(row["state"])
        return row

    row = await until(current, lambda r: r["state"] in ("completed", "rejected", "failed"), f"refund {refund_no}")
    if row["state"] != "completed":
        raise SystemExit(f"refund {refund_no} ended {row['state']}: {row['last_error'] or row['exception_detail']}")
    his = row["his"]
    say(
        f"{refund_no} {yuan(amount_fen)} yuan: HIS refund.apply {his['refund_id']} → channel refund "
        f"{row['channel_refund_no']} → refund.writeback {his['receipt_no']}  [{trail}]"
    )
    return row


async def run(
    work: Path,
    certs: DevCerts,
    agent_url: str,
    procs: Processes,
    channel: str = "wechat",
    kiosk: demo_kiosk.KioskSetup | None = None,
) -> None:
    """The gateway half: a payment, a partial and a full refund, gateway → channel → bridge → sandbox HIS; then,
    with ``kiosk``, a kiosk payment and a window refund through the agent, intranet → cloud."""
    keys = make_keys(work)
    step("his-sandbox channels — WeChat Pay v3, Alipay and UnionPay sandboxes trusting this run's merchant keys")
    channels = await asyncio.to_thread(start_channels, procs, work)
    say(
        f"WeChat Pay {channels.wechat_url}, Alipay {channels.alipay_url}, UnionPay {channels.unionpay_url}, "
        f"admin API {channels.admin_url}"
    )

    port = free_port()
    app = GatewayClient(gateway_url_of(port), app_key=keys.app, gateway_key=keys.gateway.public())
    async with NotifyReceiver(app) as receiver, aiohttp.ClientSession() as admin_session:
        gateway_url = gateway_url_of(port)
        extra = demo_kiosk.gateway_toml(kiosk) if kiosk is not None else ""
        config = write_gateway_config(work, port, agent_url, receiver.url, channels, extra)
        step(f"his-gateway -c {shown(config)} serve — the cloud gateway, configured from gateway.example.toml")
        await start_gateway(procs, config, gateway_url)
        say(f"gateway: {gateway_url}; hospital H001's bridge: {agent_url}; app {APP_ID} notified at {receiver.url}")

        try:
            async with bridge_client(certs, agent_url) as his:
                await _pay_and_refund(app, ChannelAdmin(channels.admin_url, admin_session), his, receiver, channel)
            if kiosk is not None:
                await demo_kiosk.run(kiosk, procs, channels.admin_url, channel)
        except GatewayError as e:
            raise SystemExit(
                f"the gateway refused the demo app: {e} {json.dumps(e.body, ensure_ascii=False)}"
            ) from None
        finally:
            await app.close()
        await reconcile_today(config)
        await show_keys(config)
        await console_login(config, gateway_url, work)


def gateway_url_of(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def gateway_cli(config: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``his-gateway`` as an operator would; its output, or the demo stops naming the command."""
    argv = [str(BIN / "his-gateway"), "-c", str(config), *args]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[1:])} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


async def reconcile_today(config: Path) -> None:
    """T+1 reconciliation, run at once on the day the demo just made: HIS (through the bridge), gateway, and
    the channel's statement must tie out."""
    day = dt.datetime.now(HIS_TZ).date().isoformat()
    step(f"his-gateway recon run --hospital H001 --date {day} — HIS, platform and channel statement tie out")
    summary = json.loads(
        await asyncio.to_thread(gateway_cli, config, "recon", "run", "--hospital", "H001", "--date", day, "--json")
    )
    counts = summary["counts"]
    sides = ", ".join(f"{side} {counts.get(side + '_count', 0)}" for side in ("his", "platform", "channel"))
    classes = {name: n for name, n in sorted(counts.items()) if not name.endswith("_count") and n}
    say(
        f"run v{summary['version']} {summary['status']}: records {sides}; "
        + ", ".join(f"{k} {v}" for k, v in classes.items())
    )
    if summary["status"] != "done":
        raise SystemExit(f"reconciliation {summary['status']}: {summary.get('error')}")
    flagged = sum(n for name, n in classes.items() if name != "matched")
    say(f"the gateway's payment and refunds matched; {flagged} exception(s) for finance: the bridge-only steps above")
    say("wrote a registration, a charge and a refund into the HIS with no channel money behind them — exactly what")
    say("reconciliation exists to catch (short: HIS records without money; long: a HIS refund never paid out)")


async def show_keys(config: Path) -> None:
    """What an operator checks before a key lapses: every merchant's keys, judged."""
    step("his-gateway channels keys --check — every merchant key and channel certificate, and how long each lasts")
    argv = [str(BIN / "his-gateway"), "-c", str(config), "channels", "keys", "--check"]
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if not line.startswith("      fix:"):
            say(line)
    if done.returncode == 2:
        raise SystemExit(f"channels keys --check found a key problem:\n{done.stdout}{done.stderr}")


async def console_login(config: Path, gateway_url: str, work: Path) -> None:
    """A finance login that works, so a newcomer can open the console on the day just reconciled."""
    step("his-gateway users add — a finance console login")
    password = secrets.token_urlsafe(12)
    await asyncio.to_thread(
        gateway_cli,
        config,
        "users",
        "add",
        "--username",
        "finance",
        "--role",
        "admin",
        env={"HIS_CONSOLE_PASSWORD": password},
    )
    say(f"finance console: {gateway_url}/console/  login: finance / {password}")
    say(f"(later: his-gateway -c {shown(config)} serve, then open the same address)")


async def _pay_and_refund(
    app: GatewayClient, payer: ChannelAdmin, his: BridgeClient, receiver: NotifyReceiver, channel: str
) -> None:
    run_id = uuid.uuid4().hex[:8].upper()
    order_no = f"MZ-{run_id}"
    started = dt.datetime.now(HIS_TZ).date()

    step("POST /v1/his/patients/query, /v1/his/bills/unpaid — as the app: the patient and the unpaid bills, asked "
         "of the HIS through the gateway and the agent")  # fmt: skip
    patient = (await app.query_patient(card_no=PATIENT_CARD))["patient"]
    bills = await app.unpaid_bills(patient["patient_id"])
    total = sum(b["amount_fen"] for b in bills)
    say(f"{patient['name']} ({patient['patient_id']}): {', '.join(b['bill_no'] for b in bills)}, {yuan(total)} yuan")
    step(f"POST /v1/orders — as the app: a {CHANNEL_NAMES[channel]} QR code for {patient['name']}'s {len(bills)} bills")
    order = await app.create_order(
        business_order_no=order_no,
        business_type="charge",
        scene="native",
        channel=channel,
        amount_fen=total,
        subject="门诊缴费",
        patient_id=patient["patient_id"],
        bill_nos=[b["bill_no"] for b in bills],
    )
    out_trade_no = order["out_trade_no"]
    qr = next(iter((order["pay_params"] or {}).values()), None)
    say(f"order {order_no} ({out_trade_no}) {order['status']}, {yuan(total)} yuan, QR code {qr}")

    step("the payer scans and pays — the channel sandbox's payer endpoint; its callback reaches the gateway")
    trade = await payer.pay(channel, out_trade_no)
    say(f"{channel}: trade {out_trade_no} {trade['state']}, channel trade no {trade['trade_no']}")
    trail = Trail()

    async def current() -> dict[str, Any]:
        view: dict[str, Any] = (await app.get_order(order_no))["order"]
        trail.note(view["status"])
        return view

    order = await until(current, lambda o: o["status"] not in ("created", "paying", "paid"), "the HIS commit")
    if order["status"] != "completed":
        raise SystemExit(f"order {order_no} ended {order['status']}: {order['his']['error'] or order['exception']}")
    say(
        f"payment done: {order_no} paid {yuan(order['paid_fen'])} yuan, HIS charge.commit receipt "
        f"{order['his']['receipt_no']}  [{trail}]"
    )

    part = bills[0]["amount_fen"] if len(bills) > 1 else total // 2
    step(f"POST /v1/orders/{order_no}/refunds — medical insurance covers {yuan(part)} yuan: a partial refund")
    first = await refund(app, order_no, f"{order_no}-R1", part, "医保结算")
    say(f"partial refund done: {yuan(first['amount_fen'])} of {yuan(total)} yuan back to the payer")

    rest = total - part
    step(f"POST /v1/orders/{order_no}/refunds — the patient leaves: a full refund of the remaining {yuan(rest)} yuan")
    second = await refund(app, order_no, f"{order_no}-R2", rest, "患者退费")
    say(f"full refund done: {yuan(total)} of {yuan(total)} yuan refunded in 2 refunds")

    step(f"the notifications app {APP_ID} received at its notify URL, each signed by the gateway")
    events = await until(
        lambda: _events(receiver), lambda e: len(e) >= 3, "order.completed and two refund.succeeded notifications"
    )
    for event in events:
        data = event.data
        subject = data.get("business_refund_no") or data.get("business_order_no")
        state = data.get("state") or data.get("status")
        say(f"#{event.id} {event.type:<16} {subject} {state}")
    if receiver.refused:
        say(f"({receiver.refused} delivery attempts refused: bad signature)")

    step("three ledgers side by side — HIS (bridge recon.fetch, trade.check), channel (admin API), gateway")
    await _compare_ledgers(app, payer, his, channel, order_no, out_trade_no, started, (first, second))


async def _events(receiver: NotifyReceiver) -> list[Notification]:
    return [receiver.events[k] for k in sorted(receiver.events)]


async def _compare_ledgers(
    app: GatewayClient,
    payer: ChannelAdmin,
    his: BridgeClient,
    channel: str,
    order_no: str,
    out_trade_no: str,
    started: dt.date,
    refunds: tuple[dict[str, Any], ...],
) -> None:
    """Each ledger reduced to (amount paid, channel trade no, {out_refund_no: amount}); the three must be equal."""
    gateway = await app.get_order(order_no)
    order = gateway["order"]
    gw = (
        order["paid_fen"],
        order["channel_trade_no"],
        {r["out_refund_no"]: r["amount_fen"] for r in gateway["refunds"] if r["state"] == "completed"},
    )
    trade, channel_refunds = await payer.ledger(channel, out_trade_no)
    ch = (
        trade["amount_fen"] if trade["state"] in ("SUCCESS", "REFUND") else 0,
        trade["trade_no"],
        {r["out_refund_no"]: r["amount_fen"] for r in channel_refunds if r["state"] == "SUCCESS"},
    )
    records: list[dict[str, Any]] = []
    for day in sorted({started, dt.datetime.now(HIS_TZ).date()}):
        answer = await his.call("recon.fetch", {"date": day.isoformat()})
        records += [r for r in (answer.result or {}).get("records", []) if r["trade_no"] == out_trade_no]
    commits = [r for r in records if r["kind"] != "refund"]
    check = (await his.call("trade.check", {"trade_no": out_trade_no, "operation": "charge.commit"})).result or {}
    hs = (
        sum(r["amount_fen"] for r in commits),
        commits[0]["channel_trade_no"] if commits else None,
        {r["refund_no"]: r["amount_fen"] for r in records if r["kind"] == "refund"},
    )
    for name, (paid, trade_no, refunded), detail in (
        ("HIS    ", hs, f"receipt {check.get('receipt_no')}, trade.check status {check.get('status')}"),
        ("channel", ch, f"{channel} trade state {trade['state']}, refunded {yuan(trade['refunded_fen'])}"),
        ("gateway", gw, f"order {order['status']}, refunded_fen {order['refunded_fen']}"),
    ):
        parts = " + ".join(yuan(v) for v in sorted(refunded.values(), reverse=True)) or "none"
        say(f"{name}  paid {yuan(paid)} ({trade_no}), refunds {parts}; {detail}")
    if not hs == ch == gw:
        raise SystemExit("the ledgers disagree (see the three lines above)")
    refunded_total = sum(gw[2].values())
    say(
        f"the three ledgers agree: paid {yuan(gw[0])} yuan, refunded {yuan(refunded_total)} yuan in "
        f"{len(gw[2])} refunds ({', '.join(r['out_refund_no'] for r in refunds)})"
    )
