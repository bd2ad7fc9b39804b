"""Building blocks for tests and benchmarks that run the real agent against the real sandbox HIS."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from bridge import protocol, tls
from bridge.certs import DevCerts
from bridge.client import BridgeClient

REPO = Path(__file__).resolve().parents[2]
SANDBOX_PROFILE = REPO / "config" / "profiles" / "sandbox-soap.toml"
FIXTURES = REPO / "tests" / "fixtures"
"""Published vectors and samples, and stand-ins, with their origin and licence in ``SOURCES.md``: tests read
nothing from outside the clone."""
QUYI_WSDL = FIXTURES / "wsdl" / "quyiServiceNo.wsdl"
"""A stand-in of the same shape as a real hospital's ASMX WSDL (whose licence forbids copying it); the
sandbox serves it."""


def bridge_config_toml(
    certs: DevCerts,
    journal: Path,
    his_url: str,
    *,
    listen: str = "127.0.0.1:0",
    ops_listen: str = "127.0.0.1:0",
    extra: str = "",
    dispatch: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    profile: Path = SANDBOX_PROFILE,
    overrides: dict[str, str] | None = None,
) -> str:
    """An agent config for tests; ``profile`` and ``overrides`` (default: the SOAP sandbox profile pointed at
    ``his_url``) choose the HIS."""
    dispatch = {
        "sync_deadline_s": 5,
        "his_timeout_s": 5,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.5,
        "breaker_reset_s": 0.5,
        **(dispatch or {}),
    }
    server = {"listen": listen, "ops_listen": ops_listen, **(server or {})}
    his = overrides if overrides is not None else {"soap.base_url": his_url}
    his_overrides = ", ".join(f'"{key}" = "{value}"' for key, value in his.items())

    def table(values: dict[str, Any]) -> str:
        return "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in values.items())

    return f"""
hospital = "H001"

[server]
{table(server)}

[tls]
cert = "{certs.server_cert}"
key = "{certs.server_key}"
client_ca = "{certs.ca_cert}"
allowed_clients = [{{ cn = "platform-gateway" }}]

[signing]
key_id = "bridge-H001"
key = "{certs.bridge_signing_key}"
clients = [{{ key_id = "platform", public_key = "{certs.platform_signing_pub}" }}]

[journal]
path = "{journal}"

[dispatch]
{table(dispatch)}

[his]
profile = "{profile}"
overrides = {{ {his_overrides} }}

[logging]
level = "warning"
{extra}
"""


def client_ssl(certs: DevCerts, *, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    return tls.client_context(certs.ca_cert, cert or certs.client_cert, key or certs.client_key)


def make_client(certs: DevCerts, url: str, **kwargs: Any) -> BridgeClient:
    return BridgeClient(
        url,
        signing_key=protocol.load_signing_key("platform", certs.platform_signing_key),
        bridge_key=protocol.load_verify_key("bridge-H001", certs.bridge_signing_pub),
        ssl_context=kwargs.pop("ssl_context", None) or client_ssl(certs),
        **kwargs,
    )


def prepay(trade_no: str, request_id: str | None = None, amount_fen: int = 100) -> dict[str, Any]:
    return {
        "request_id": request_id or f"req-{trade_no}",
        "trade_no": trade_no,
        "patient_id": "P0003",
        "inpatient_no": "Z0001",
        "amount_fen": amount_fen,
        "channel": "wechat",
        "channel_trade_no": f"W{trade_no}",
        "paid_at": "2026-11-25T10:00:00+08:00",
    }


def free_port() -> int:
    """A loopback port nobody listens on now, for a child process that must be told its port up front."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(
    url: str, proc: subprocess.Popen, timeout_s: float = 30, *, path: str = "/readyz", log: Path | None = None
) -> None:
    """Until ``GET url + path`` answers 200 (the agent's /readyz: its journal is recovered; a gateway's /healthz);
    fails if the process exits first, quoting the end of its ``log`` when there is one."""

    def tail() -> str:
        return log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{url}: the process exited with {proc.returncode} {tail()}")
            try:
                async with session.get(url + path) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url}{path} did not become ready {tail()}")
