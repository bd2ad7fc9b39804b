"""The whole second direction on real sockets: terminals → the agent's intranet listener → the gateway's
mutual-TLS listener → the sandbox WeChat Pay and Alipay servers → their callbacks → the gateway → the agent's
platform API → the sandbox HIS.

Every key is made for the run (nothing is read from outside the repository): the channel merchants' RSA keys,
the WeChat Pay platform identity, the apps' and the gateway's Ed25519 keys, the terminals' HMAC keys; the TLS
certificates are the dev set (``his-bridge certs dev``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge import protocol, terminal_protocol
from bridge.certs import DevCerts
from bridge.config import load_config
from bridge.server import RunningAgent, start_agent
from gateway.config import GatewayConfig, parse_config
from gateway.runtime import RunningGateway, start_gateway
from sandbox.channels import AlipaySettings, SandboxChannels, WechatSettings, start_sandbox_channels
from sandbox.channels import crypto as sandbox_crypto
from sandbox.channels.wechat import WechatPlatform
from sandbox.kiosk import TerminalClient
from tests.support.gateway_rig import ApiClient
from tests.support.rig import bridge_config_toml, free_port, wait_ready

HOSPITAL = "H001"
WECHAT_MCHID = "1900000109"
WECHAT_APPID = "wx5e1b2d3c4f5a6b7c"
WECHAT_SERIAL = "3775B6A45ACD588826D15E583A95F5DD2B6E3D22"
APIV3_KEY = "egress-sandbox-apiv3-key-32bytes"
ALIPAY_APP_ID = "2021000000000042"
ALIPAY_SELLER = "2088000000000042"
AGENT_APP = "agent-H001"
PHONE_APP = "wx-miniapp"
KIOSK, WINDOW, CERT_KIOSK, FAR_KIOSK, OFF_KIOSK = "KIOSK-01", "WIN-01", "KIOSK-02", "KIOSK-FAR", "KIOSK-OFF"
PAY_OPS = '["pay.codepay", "pay.qr", "pay.query", "pay.close", "transactions"]'
WINDOW_OPS = '["pay.codepay", "pay.query", "refund", "refund.query", "transactions"]'
CODEPAY = {"first_delay_s": 0.5, "max_delay_s": 1.0, "factor": 1.5, "deadline_s": 30}


def _rsa(private: Path) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class ChannelKeys:
    """A WeChat Pay merchant and an Alipay app, with the channels' own keys: made once per test session."""

    dir: Path
    wechat_platform: WechatPlatform
    wechat_merchant_key: Path
    wechat_merchant_pub: bytes
    wechat_platform_cert: Path
    apiv3_key_file: Path
    alipay_app_key: Path
    alipay_app_pub: bytes
    alipay_private: bytes
    alipay_public: Path


def make_channel_keys(directory: Path) -> ChannelKeys:
    directory.mkdir(parents=True, exist_ok=True)
    platform = WechatPlatform.generate(WECHAT_MCHID)
    cert = directory / "wechatpay_platform.pem"
    cert.write_bytes(sandbox_crypto.certificate_pem(platform.cert))
    apiv3 = directory / "apiv3.key"
    apiv3.write_text(APIV3_KEY + "\n")
    merchant_pub = _rsa(directory / "apiclient_key.pem")
    app_pub = _rsa(directory / "alipay_app_private.pem")
    alipay_key = directory / "alipay_private.pem"
    alipay_pub = _rsa(alipay_key)
    (directory / "alipay_public.pem").write_bytes(alipay_pub)
    return ChannelKeys(
        directory,
        platform,
        directory / "apiclient_key.pem",
        merchant_pub,
        cert,
        apiv3,
        directory / "alipay_app_private.pem",
        app_pub,
        alipay_key.read_bytes(),
        directory / "alipay_public.pem",
    )


async def start_channels(keys: ChannelKeys, db_path: Path) -> SandboxChannels:
    return await start_sandbox_channels(
        wechat=WechatSettings(
            WECHAT_MCHID, WECHAT_APPID, WECHAT_SERIAL, keys.wechat_merchant_pub, APIV3_KEY, keys.wechat_platform
        ),
        alipay=AlipaySettings(ALIPAY_APP_ID, keys.alipay_app_pub, ALIPAY_SELLER, keys.alipay_private),
        db_path=db_path,
        refund_delay_s=0.01,
    )


@dataclass(frozen=True)
class RigKeys:
    gateway: protocol.SigningKey
    agent_app: protocol.SigningKey
    phone_app: protocol.SigningKey
    kiosk: bytes
    window: bytes
    files: Path


def make_rig_keys(directory: Path) -> RigKeys:
    directory.mkdir(parents=True, exist_ok=True)
    keys = RigKeys(
        protocol.generate_ed25519("gateway"),
        protocol.generate_ed25519(AGENT_APP),
        protocol.generate_ed25519(PHONE_APP),
        bytes.fromhex(terminal_protocol.new_key()),
        bytes.fromhex(terminal_protocol.new_key()),
        directory,
    )
    for name, key in (("gateway", keys.gateway), ("agent-app", keys.agent_app), ("phone-app", keys.phone_app)):
        (directory / f"{name}.pem").write_bytes(protocol.private_pem(key))
        (directory / f"{name}.pem").chmod(0o600)
        (directory / f"{name}.pub").write_bytes(key.public().public_pem())
    for name, raw in (("kiosk", keys.kiosk), ("window", keys.window)):
        (directory / f"{name}.key").write_text(raw.hex() + "\n")
        (directory / f"{name}.key").chmod(0o600)
    return keys


@dataclass
class Ports:
    agent_api: int = field(default_factory=free_port)
    agent_ops: int = field(default_factory=free_port)
    intranet: int = field(default_factory=free_port)
    gateway: int = field(default_factory=free_port)
    gateway_mtls: int = field(default_factory=free_port)
    egress_target: int | None = None
    """Where the agent sends its forwards, when not straight to the gateway (a link the test can cut)."""


def intranet_toml(certs: DevCerts, keys: RigKeys, ports: Ports, work: Path, **overrides: Any) -> str:
    deadline = overrides.get("answer_deadline_s", 45)
    limits = overrides.get("limits", "max_payment_fen = 500000\nmax_daily_fen = 2000000")
    target = ports.egress_target or ports.gateway_mtls
    return f"""
[intranet]
listen = "127.0.0.1:{ports.intranet}"
answer_deadline_s = {deadline}

[intranet.tls]
cert = "{certs.intranet_server_cert}"
key = "{certs.intranet_server_key}"
terminal_ca = "{certs.hospital_ca_cert}"

[[intranet.terminals]]
id = "{KIOSK}"
kind = "kiosk"
operations = {PAY_OPS}
auth = "hmac"
key_file = "{keys.files / "kiosk.key"}"
addresses = ["127.0.0.0/8"]
{limits}

[[intranet.terminals]]
id = "{WINDOW}"
kind = "window"
operations = {WINDOW_OPS}
auth = "hmac"
key_file = "{keys.files / "window.key"}"
addresses = ["127.0.0.1"]
max_payment_fen = 500000
max_daily_fen = 2000000

[[intranet.terminals]]
id = "{CERT_KIOSK}"
kind = "kiosk"
operations = {PAY_OPS}
auth = "mtls"
cert_cn = "KIOSK-CERT"
addresses = ["127.0.0.1"]
max_payment_fen = 500000
max_daily_fen = 2000000

[[intranet.terminals]]
id = "{FAR_KIOSK}"
kind = "kiosk"
operations = {PAY_OPS}
auth = "hmac"
key_file = "{keys.files / "kiosk.key"}"
addresses = ["10.20.0.0/16"]
max_payment_fen = 500000
max_daily_fen = 2000000

[[intranet.terminals]]
id = "{OFF_KIOSK}"
kind = "kiosk"
operations = {PAY_OPS}
auth = "hmac"
key_file = "{keys.files / "kiosk.key"}"
addresses = ["127.0.0.1"]
max_payment_fen = 500000
max_daily_fen = 2000000
enabled = false

[egress]
gateway_url = "https://127.0.0.1:{target}"
ca = "{certs.ca_cert}"
client_cert = "{certs.egress_client_cert}"
client_key = "{certs.egress_client_key}"
gateway_key_id = "gateway"
gateway_public_key = "{keys.files / "gateway.pub"}"
journal = "{work / "egress.sqlite3"}"
timeout_s = {overrides.get("egress_timeout_s", 60)}
gateway_window_s = {overrides.get("gateway_window_s", 300)}
link_retry_s = {overrides.get("link_retry_s", 0.5)}
retry_base_s = {overrides.get("retry_base_s", 0.2)}
retry_max_s = {overrides.get("retry_max_s", 2)}

[[egress.apps]]
app_id = "{AGENT_APP}"
signing_key = "{keys.files / "agent-app.pem"}"
"""


def agent_config(certs: DevCerts, keys: RigKeys, ports: Ports, work: Path, his_url: str, **overrides: Any) -> Path:
    path = work / "agent.toml"
    text = bridge_config_toml(
        certs,
        work / "journal.sqlite3",
        his_url,
        listen=f"127.0.0.1:{ports.agent_api}",
        ops_listen=f"127.0.0.1:{ports.agent_ops}",
        dispatch={"sync_deadline_s": 5},
        extra=intranet_toml(certs, keys, ports, work, **overrides),
    )
    path.write_text(text)
    return path


def gateway_cfg(
    certs: DevCerts,
    keys: RigKeys,
    channel_keys: ChannelKeys,
    channels: SandboxChannels,
    ports: Ports,
    work: Path,
    db_url: str,
    *,
    his_commit: str = "gateway",
    agent_his_commit: str | None = None,
    workers: dict[str, Any] | None = None,
) -> GatewayConfig:
    agent_app: dict[str, Any] = {
        "app_id": AGENT_APP,
        "public_key": str(keys.files / "agent-app.pub"),
        "kind": "agent",
        "client_cert_cn": f"his-bridge-{HOSPITAL}-egress",
    }
    if agent_his_commit is not None:
        agent_app["his_commit"] = agent_his_commit
    raw: dict[str, Any] = {
        "server": {
            "listen": f"127.0.0.1:{ports.gateway}",
            "public_url": f"http://127.0.0.1:{ports.gateway}",
            "mtls": {
                "listen": f"127.0.0.1:{ports.gateway_mtls}",
                "cert": str(certs.gateway_server_cert),
                "key": str(certs.gateway_server_key),
                "client_ca": str(certs.ca_cert),
            },
        },
        "database": {"url": db_url},
        "signing": {"key_id": "gateway", "key": str(keys.files / "gateway.pem")},
        "workers": {
            "poll_interval_s": 0.05,
            "pending_query_after_s": 2,
            "retry_base_s": 0.2,
            "his_poll_s": 0.2,
            **(workers or {}),
        },
        "hospitals": [
            {
                "id": HOSPITAL,
                "name": "Egress test hospital",
                "his_commit": his_commit,
                "bridge": {
                    "url": f"https://127.0.0.1:{ports.agent_api}",
                    "ca": str(certs.ca_cert),
                    "client_cert": str(certs.client_cert),
                    "client_key": str(certs.client_key),
                    "signing_key_id": "platform",
                    "signing_key": str(certs.platform_signing_key),
                    "bridge_key_id": "bridge-H001",
                    "bridge_public_key": str(certs.bridge_signing_pub),
                    "timeout_s": 10,
                    "retries": 1,
                },
                "apps": [{"app_id": PHONE_APP, "public_key": str(keys.files / "phone-app.pub")}, agent_app],
            }
        ],
        "merchants": [
            {
                "id": "wx-h001",
                "channel": "wechat",
                "hospital": HOSPITAL,
                "mchid": WECHAT_MCHID,
                "appid": WECHAT_APPID,
                "merchant_serial_no": WECHAT_SERIAL,
                "private_key_file": str(channel_keys.wechat_merchant_key),
                "apiv3_key": {"file": str(channel_keys.apiv3_key_file)},
                "platform_certificates": [str(channel_keys.wechat_platform_cert)],
                "base_url": channels.wechat_base_url,
                "codepay": CODEPAY,
            },
            {
                "id": "ali-h001",
                "channel": "alipay",
                "hospital": HOSPITAL,
                "app_id": ALIPAY_APP_ID,
                "app_private_key_file": str(channel_keys.alipay_app_key),
                "alipay_public_key_file": str(channel_keys.alipay_public),
                "seller_id": ALIPAY_SELLER,
                "gateway_url": channels.alipay_gateway_url,
                "codepay": CODEPAY,
            },
        ],
        "logging": {"level": "warning"},
        "recon": {"enabled": False},
        "console": {"enabled": False},
    }
    return parse_config(raw, base=work)


class ChannelAdmin:
    def __init__(self, channels: SandboxChannels) -> None:
        self.url = channels.admin_url
        self.http = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.http.close()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.http.request(method, self.url + path, json=body) as resp:
            data = await resp.json()
            assert resp.status < 300, (path, data)
            return data

    async def code(self, channel: str, payer: str = "pays", **extra: Any) -> str:
        return str((await self.call("POST", "/codes", {"channel": channel, "payer": payer, **extra}))["auth_code"])

    async def pay_qr(self, channel: str, out_trade_no: str) -> None:
        if channel == "alipay":
            await self.call("POST", "/payer/scan", {"channel": channel, "out_trade_no": out_trade_no})
        await self.call("POST", "/payer/pay", {"channel": channel, "out_trade_no": out_trade_no})

    async def trades(self) -> list[dict[str, Any]]:
        return [*(await self.call("GET", "/trades"))["trades"]]

    async def refunds(self) -> list[dict[str, Any]]:
        return [*(await self.call("GET", "/refunds"))["refunds"]]


def pay_body(request_id: str, amount_fen: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "business_type": "prepay",
        "amount_fen": amount_fen,
        "subject": "住院预交金",
        "patient_id": "P0003",
        "inpatient_no": "Z0001",
        **extra,
    }


def intranet_ssl(certs: DevCerts, *, with_cert: bool = False) -> Any:
    import ssl

    ctx = ssl.create_default_context(cafile=str(certs.hospital_ca_cert))
    if with_cert:
        ctx.load_cert_chain(str(certs.terminal_cert), str(certs.terminal_key))
    return ctx


@dataclass
class EgressRig:
    certs: DevCerts
    keys: RigKeys
    ports: Ports
    work: Path
    his: Any
    channels: SandboxChannels
    gateway: RunningGateway
    agent: RunningAgent | None
    admin: ChannelAdmin
    clients: list[Any] = field(default_factory=list)

    @property
    def intranet_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.intranet}"

    def terminal(self, terminal_id: str = KIOSK, *, key: bytes | None = None, cert: bool = False) -> TerminalClient:
        if key is None and not cert:
            key = self.keys.window if terminal_id == WINDOW else self.keys.kiosk
        client = TerminalClient(
            self.intranet_url, terminal_id, key, ssl_context=intranet_ssl(self.certs, with_cert=cert), timeout_s=120
        )
        self.clients.append(client)
        return client

    def phone_app(self) -> ApiClient:
        client = ApiClient(self.gateway.url, self.keys.phone_app, self.keys.gateway.public())
        self.clients.append(client)
        return client

    def egress_rows(self) -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(self.work / "egress.sqlite3")) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY seq")]

    async def gateway_rows(self, table: str) -> list[Any]:
        import sqlalchemy as sa

        from gateway.store.tables import orders, refunds

        t = {"orders": orders, "refunds": refunds}[table]
        async with self.gateway.svc.db.read() as conn:
            return list(await conn.execute(sa.select(t).order_by(t.c.id)))

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        await self.admin.close()


@contextlib.asynccontextmanager
async def egress_rig(
    tmp_path: Path,
    certs: DevCerts,
    channel_keys: ChannelKeys,
    his: Any,
    *,
    db_url: str | None = None,
    start_agent_here: bool = True,
    ports: Ports | None = None,
    gateway_kwargs: dict[str, Any] | None = None,
    **agent_overrides: Any,
) -> AsyncIterator[EgressRig]:
    ports = ports or Ports()
    keys = make_rig_keys(tmp_path / "rig-keys")
    channels = await start_channels(channel_keys, tmp_path / "channels.sqlite3")
    gateway = agent = None
    try:
        cfg = gateway_cfg(
            certs,
            keys,
            channel_keys,
            channels,
            ports,
            tmp_path,
            db_url or f"sqlite+aiosqlite:///{tmp_path / 'gateway.sqlite3'}",
            **(gateway_kwargs or {}),
        )
        gateway = await start_gateway(cfg, run_workers=True)
        config = agent_config(certs, keys, ports, tmp_path, his.base_url, **agent_overrides)
        if start_agent_here:
            agent = await start_agent(load_config(config))
        rig = EgressRig(certs, keys, ports, tmp_path, his, channels, gateway, agent, ChannelAdmin(channels))
        try:
            yield rig
        finally:
            await rig.close()
    finally:
        if agent is not None:
            await agent.stop()
        if gateway is not None:
            await gateway.stop()
        await channels.close()


def start_agent_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def agent_process_ready(rig: EgressRig, proc: subprocess.Popen[bytes]) -> None:
    await wait_ready(f"http://127.0.0.1:{rig.ports.agent_ops}", proc)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def until(check: Any, *, timeout_s: float = 60, what: str = "condition") -> Any:
    """Poll an async ``check`` until it returns something truthy (returned), failing after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def today() -> dt.date:
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo("Asia/Shanghai")).date()


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
