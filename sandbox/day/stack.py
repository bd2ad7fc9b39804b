"""The whole deployment on loopback, as separate processes started through their own command lines: the sandbox
HIS, the sandbox channels, the bridge agent, one gateway on SQLite (or two sharing a throwaway PostgreSQL), and
between gateway and bridge the black-holing proxy. Certificates, keys and configs are made fresh for the run in
its work folder; every process logs to ``logs/{name}.log`` there and inherits the shared clock's file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge import protocol
from sandbox.day.proxy import BlackholeProxy

BIN = Path(sys.executable).parent
DEFAULT_PROFILE = Path(__file__).resolve().parents[2] / "config" / "profiles" / "sandbox-soap.toml"
HOSPITAL = "H001"
APP_ID = "kiosk-1"
WECHAT = {"mchid": "1900000001", "appid": "wx0000000000000001", "serial": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"}
ALIPAY = {"app_id": "2021000000000001", "seller_id": "2088000000000001"}
SUSPENSE_DAYS = 3
"""The gateway's ``recon.suspense_days`` (its default): how long a one-sided entry waits for its counterpart."""
STAFF = {"li.kuaiji": "clerk", "wang.zhuren": "approver"}
"""Finance at the console: a clerk who proposes, an approver who approves (never their own proposal)."""
START_TIMEOUT_S = 60.0


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait on a condition, polling; the wait is bounded and says what it waited for."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Process:
    name: str
    argv: list[str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    log: IO[bytes] | None = None
    drain: asyncio.Task[None] | None = None
    restarts: int = 0

    async def start(self, *, announce: tuple[str, ...] = ()) -> list[str]:
        """Start it; with ``announce`` (prefixes of stdout lines), wait for those lines and return their rests."""
        self.log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=subprocess.PIPE if announce else self.log, stderr=self.log
        )
        found: dict[str, str] = {}
        if announce:
            assert self.proc.stdout is not None
            try:
                async with asyncio.timeout(START_TIMEOUT_S):
                    while len(found) < len(announce):
                        line = (await self.proc.stdout.readline()).decode(errors="replace")
                        if not line:
                            raise StackError(f"{self.name} exited before it was ready; see {self.log_path}")
                        self.log.write(line.encode())
                        for prefix in announce:
                            if prefix in line and prefix not in found:
                                found[prefix] = line.split(prefix, 1)[1].split()[0]
            except TimeoutError:
                raise StackError(
                    f"{self.name} did not start within {START_TIMEOUT_S:.0f} s; see {self.log_path}"
                ) from None
            self.drain = asyncio.create_task(self._drain())
        return [found[p] for p in announce]

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None and self.log is not None
        while chunk := await self.proc.stdout.read(65536):
            self.log.write(chunk)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def check(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise StackError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no flushing, exactly as a power cut or the OOM killer."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        await self._closed()

    async def stop(self, grace_s: float = 15.0) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._closed()

    async def _closed(self) -> None:
        if self.drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.drain, 5)
            self.drain = None
        if self.log is not None:
            self.log.close()
            self.log = None


class Postgres:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) in the work folder, on a free loopback port; as
    root it runs as the ``postgres`` system user, since PostgreSQL refuses to run as root."""

    def __init__(self, directory: Path) -> None:
        dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        self.bin = next((d for d in dirs if (d / "initdb").exists()), None)
        if self.bin is None:
            raise StackError("--postgres needs the PostgreSQL server (initdb, pg_ctl): run scripts/bootstrap as root")
        self.dir = directory
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run(args, capture_output=True, text=True, user=self.user, check=False)
        if done.returncode != 0:
            raise StackError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            owner = pwd.getpwnam(self.user)
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        data = self.dir / "data"
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self.dir / "postgres.log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(
                [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"],
                capture_output=True,
                user=self.user,
                check=False,
                timeout=60,
            )


def _write(path: Path, data: bytes | str, *, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if private:
        path.chmod(0o600)
    return path


def _rsa_pair(private: Path, public: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(private, pem, private=True)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    _write(public, key.public_key().public_bytes(serialization.Encoding.PEM, spki))


@dataclass
class Stack:
    work: Path
    profile: Path = DEFAULT_PROFILE
    postgres: bool = False
    processes: dict[str, Process] = field(default_factory=dict)
    proxy: BlackholeProxy | None = None
    pg: Postgres | None = None
    his_url: str = ""
    his_admin_url: str = ""
    channels_admin_url: str = ""
    wechat_url: str = ""
    alipay_url: str = ""
    bridge_api_port: int = 0
    bridge_ops_url: str = ""
    gateway_urls: list[str] = field(default_factory=list)
    gateway_configs: list[Path] = field(default_factory=list)
    app_key: protocol.SigningKey | None = None
    gateway_key: protocol.VerifyKey | None = None
    staff_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    _bridge_restarts: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def certs(self) -> Path:
        return self.work / "certs"

    @property
    def keys(self) -> Path:
        return self.work / "keys"

    def _process(self, name: str, argv: list[str]) -> Process:
        process = Process(name, argv, self.logs / f"{name}.log")
        self.processes[name] = process
        return process

    def check(self) -> None:
        for process in self.processes.values():
            process.check()

    async def start(self, notify_url: str) -> None:
        if not self.profile.exists():
            raise StackError(f"no HIS profile at {self.profile}: pass --profile (config/profiles/sandbox-soap.toml)")
        self.logs.mkdir(parents=True, exist_ok=True)
        await self._start_his()
        await self._start_channels()
        await self._start_bridge()
        self.proxy = BlackholeProxy("127.0.0.1", self.bridge_api_port)
        _, proxy_port = await self.proxy.start()
        if self.postgres:
            self.pg = Postgres(self.work / "postgres")
            await asyncio.to_thread(self.pg.start)
        await self._start_gateways(notify_url, proxy_port)
        for username, role in STAFF.items():
            await self.gateway_cli(
                "users",
                "add",
                "--username",
                username,
                "--role",
                role,
                env={"HIS_CONSOLE_PASSWORD": self.staff_password},
            )

    def make_keys(self) -> None:
        """Certificates and keys for this run only (``his-bridge certs dev`` for the agent's side)."""
        self.work.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [str(BIN / "his-bridge"), "certs", "dev", "--out", str(self.certs)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise StackError(f"his-bridge certs dev failed: {done.stderr.strip()}")
        gateway = protocol.generate_ed25519("gateway")
        app = protocol.generate_ed25519(APP_ID)
        _write(self.keys / "gateway-signing.pem", protocol.private_pem(gateway), private=True)
        _write(self.keys / f"{APP_ID}.pub", app.public().public_pem())
        _rsa_pair(self.keys / "wechat" / "apiclient_key.pem", self.keys / "wechat" / "apiclient_pub.pem")
        _write(self.keys / "wechat" / "apiv3.key", secrets.token_hex(16) + "\n", private=True)
        _rsa_pair(self.keys / "alipay" / "app_private_key.pem", self.keys / "alipay" / "app_public_key.pem")
        self.app_key, self.gateway_key = app, gateway.public()

    async def _start_his(self) -> None:
        his = self._process(
            "his",
            [
                str(BIN / "his-sandbox"),
                "his",
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(self.work / "his.sqlite3"),
                "--no-seed",
            ],
        )
        (url,) = await his.start(announce=("sandbox HIS listening on ",))
        self.his_url = url
        self.his_admin_url = url.split("/his/", 1)[0] + "/_admin"

    async def _start_channels(self) -> None:
        keys, state = self.keys, self.work / "channels"
        channels = self._process(
            "channels",
            [
                str(BIN / "his-sandbox"),
                "channels",
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                str(state),
                "--db",
                str(state / "ledger.sqlite3"),
                "--signing-mode",
                "public_key",
                "--notify-time-scale",
                "1",
                "--wechat-mchid",
                WECHAT["mchid"],
                "--wechat-appid",
                WECHAT["appid"],
                "--wechat-merchant-serial",
                WECHAT["serial"],
                "--wechat-merchant-key",
                str(keys / "wechat" / "apiclient_pub.pem"),
                "--wechat-apiv3-key-file",
                str(keys / "wechat" / "apiv3.key"),
                "--alipay-app-id",
                ALIPAY["app_id"],
                "--alipay-app-public-key",
                str(keys / "alipay" / "app_public_key.pem"),
                "--alipay-seller-id",
                ALIPAY["seller_id"],
            ],
        )
        self.wechat_url, self.alipay_url, self.channels_admin_url = await channels.start(
            announce=("WeChat Pay v3 sandbox at ", "Alipay sandbox gateway at ", "admin API at ")
        )

    def _bridge_config(self, api_port: int, ops_port: int) -> Path:
        c = self.certs
        text = f"""hospital = "{HOSPITAL}"

[server]
listen = "127.0.0.1:{api_port}"
ops_listen = "127.0.0.1:{ops_port}"

[tls]
cert = "{c / "server.crt"}"
key = "{c / "server.key"}"
client_ca = "{c / "platform-ca.crt"}"
allowed_clients = [{{ cn = "platform-gateway" }}]

[signing]
key_id = "bridge-H001"
key = "{c / "bridge-signing.pem"}"
clients = [{{ key_id = "platform", public_key = "{c / "platform-signing.pub"}" }}]

[journal]
path = "{self.work / "journal.sqlite3"}"

[dispatch]
sync_deadline_s = 2                  # the rest are the shipped defaults: retries and pauses follow the shared clock

[his]
profile = "{self.profile}"
overrides = {{ "soap.base_url" = "{self.his_url.split("/his/", 1)[0]}" }}
"""
        return _write(self.work / "bridge.toml", text, private=True)

    async def _start_bridge(self) -> None:
        self.bridge_api_port, ops_port = free_port(), free_port()
        config = self._bridge_config(self.bridge_api_port, ops_port)
        self.bridge_ops_url = f"http://127.0.0.1:{ops_port}"
        self._process("bridge", [str(BIN / "his-bridge"), "serve", "--config", str(config)])
        await self.start_bridge()

    async def start_bridge(self) -> None:
        bridge = self.processes["bridge"]
        await bridge.start()

        async def ready() -> bool:
            bridge.check()
            return await self._http_ok(self.bridge_ops_url + "/readyz")

        await until(ready, "the bridge agent to be ready (/readyz)")

    async def kill_bridge(self) -> None:
        """SIGKILL the agent, then start it again on the same journal and wait until it has recovered (one kill at
        a time: two at once would start two agents on one port)."""
        async with self._bridge_restarts:
            bridge = self.processes["bridge"]
            await bridge.kill()
            bridge.restarts += 1
            await self.start_bridge()

    async def _http_ok(self, url: str) -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    def _gateway_config(self, name: str, port: int, public_port: int, notify_url: str, proxy_port: int) -> Path:
        c, k, state = self.certs, self.keys, self.work / "channels"
        public_key_id = (state / "wechatpay_public_key_id.txt").read_text().strip()
        database = self.pg.url if self.pg is not None else f"sqlite:///{self.work / 'gateway.sqlite3'}"
        text = f"""[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{public_port}"

[database]
url = "{database}"

[signing]
key_id = "gateway"
key = "{k / "gateway-signing.pem"}"

[workers]
poll_interval_s = 0.2
lease_s = 3600                       # simulated seconds: the real-time timeouts it must outlast run 100x faster

[recon]
enabled = false                      # the day runs each reconciliation itself, at 11:30 of the next day
suspense_days = {SUSPENSE_DAYS}                    # the default: a one-sided entry waits this many days

[[hospitals]]
id = "{HOSPITAL}"
name = "模拟人民医院"
refund_policy = "finance"

[hospitals.bridge]
url = "https://127.0.0.1:{proxy_port}"
ca = "{c / "platform-ca.crt"}"
client_cert = "{c / "client.crt"}"
client_key = "{c / "client.key"}"
signing_key_id = "platform"
signing_key = "{c / "platform-signing.pem"}"
bridge_key_id = "bridge-H001"
bridge_public_key = "{c / "bridge-signing.pub"}"
timeout_s = 5                        # a partition costs the gateway this long per call, in real seconds
retries = 1

[[hospitals.apps]]
app_id = "{APP_ID}"
public_key = "{k / f"{APP_ID}.pub"}"
notify_url = "{notify_url}"

[[merchants]]
id = "wx-h001"
channel = "wechat"
hospital = "{HOSPITAL}"
mchid = "{WECHAT["mchid"]}"
appid = "{WECHAT["appid"]}"
merchant_serial_no = "{WECHAT["serial"]}"
private_key_file = "{k / "wechat" / "apiclient_key.pem"}"
apiv3_key = {{ file = "{k / "wechat" / "apiv3.key"}" }}
public_key_file = "{state / "wechatpay_public_key.pem"}"
public_key_id = "{public_key_id}"
base_url = "{self.wechat_url}"
codepay = {{ first_delay_s = 0.2, max_delay_s = 0.5 }}

[[merchants]]
id = "ali-h001"
channel = "alipay"
hospital = "{HOSPITAL}"
app_id = "{ALIPAY["app_id"]}"
app_private_key_file = "{k / "alipay" / "app_private_key.pem"}"
alipay_public_key_file = "{state / "alipay_public_key.pem"}"
seller_id = "{ALIPAY["seller_id"]}"
gateway_url = "{self.alipay_url}"
codepay = {{ first_delay_s = 0.2, max_delay_s = 0.5 }}
"""
        return _write(self.work / f"{name}.toml", text, private=True)

    async def _start_gateways(self, notify_url: str, proxy_port: int) -> None:
        names = ["gateway-a", "gateway-b"] if self.pg is not None else ["gateway"]
        ports = [free_port() for _ in names]
        for name, port in zip(names, ports, strict=True):
            config = self._gateway_config(name, port, ports[0], notify_url, proxy_port)
            self.gateway_configs.append(config)
            if self.pg is not None and name == names[0]:
                await self.gateway_cli("migrate")
            gateway = self._process(name, [str(BIN / "his-gateway"), "-c", str(config), "serve"])
            await gateway.start()
            url = f"http://127.0.0.1:{port}"

            async def healthy(gateway: Process = gateway, url: str = url) -> bool:
                gateway.check()
                return await self._http_ok(url + "/healthz")

            await until(healthy, f"{name} to answer /healthz")
            self.gateway_urls.append(url)

    async def gateway_cli(self, *args: str, env: dict[str, str] | None = None) -> str:
        """``his-gateway`` as an operator runs it, against the first instance's config; its output."""
        argv = [str(BIN / "his-gateway"), "-c", str(self.gateway_configs[0]), *args]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise StackError(f"his-gateway {' '.join(args)} failed ({proc.returncode}): {err.decode()[-800:]}")
        return out.decode()

    async def reconcile(self, day: Any) -> dict[str, Any]:
        out = await self.gateway_cli("recon", "run", "--hospital", HOSPITAL, "--date", day.isoformat(), "--json")
        summary: dict[str, Any] = json.loads(out)
        return summary

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()
        for process in reversed(list(self.processes.values())):
            await process.stop()
        if self.pg is not None:
            await asyncio.to_thread(self.pg.stop)

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
