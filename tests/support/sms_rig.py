"""Building blocks for the SMS tests and the attack simulator: an ``[sms]`` config, a gateway started with an
injected clock and the sandbox provider, and a hospital app's client for the two SMS endpoints."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.certs import make_dev_certs
from bridge.config import load_config
from bridge.server import RunningAgent, start_agent
from gateway.config import GatewayConfig
from gateway.his import BridgeHis, HisLink
from gateway.runtime import RunningGateway, start_gateway
from gateway.sms.clock import Clock
from gateway.sms.config import SmsConfig
from gateway.sms.providers import SandboxSmsProvider
from gateway.sms.service import SmsService
from sandbox.cli import SandboxHis, start_sandbox_his
from tests.support.gateway_rig import MERCHANT, ApiClient, GatewayKeys, gateway_config
from tests.support.memory_channel import MemoryChannel
from tests.support.rig import bridge_config_toml, make_client


def write_secret(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sms.secret"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
    return path


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


NO_HIS_LOOKUPS = {"known_patients": {"binding": "off", "payment": "off", "login": "off"}}
"""Most SMS tests run without a bridge: the tests of the known-patient layer turn it on with the real agent."""


def sms_section(directory: Path, **overrides: Any) -> dict[str, Any]:
    base = {"enabled": True, "secret_file": str(write_secret(directory)), "defaults": NO_HIS_LOOKUPS}
    return merge(base, overrides)


def sms_gateway_config(directory: Path, keys: GatewayKeys, db_url: str, sms: dict[str, Any]) -> GatewayConfig:
    cfg = gateway_config(directory, keys, db_url)
    cfg.sms = SmsConfig.model_validate(sms)
    cfg.sms.resolve(directory)
    return cfg


async def start_sms_gateway(
    directory: Path,
    keys: GatewayKeys,
    db_url: str,
    sms: dict[str, Any],
    clock: Clock,
    his: HisLink | None = None,
) -> tuple[RunningGateway, SandboxSmsProvider]:
    provider = SandboxSmsProvider()
    cfg = sms_gateway_config(directory, keys, db_url, sms)
    running = await start_gateway(
        cfg,
        channels={MERCHANT: MemoryChannel()},
        his={"H001": his} if his is not None else {},
        run_workers=False,
        clock=clock,
        sms_provider=provider,
    )
    return running, provider


@dataclass
class HisRig:
    """The sandbox HIS and a real bridge agent in front of it, and the gateway's link to that agent."""

    his: SandboxHis
    agent: RunningAgent
    link: BridgeHis

    async def close(self) -> None:
        await self.link.close()
        await self.agent.stop()
        await self.his.close()


async def start_his_rig(directory: Path) -> HisRig:
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    his = await start_sandbox_his(db_path=directory / "his.sqlite3")
    certs = make_dev_certs(directory / "certs")
    config = directory / "bridge.toml"
    config.write_text(bridge_config_toml(certs, directory / "journal.sqlite3", his.base_url))
    agent = await start_agent(load_config(config))
    link = BridgeHis(make_client(certs, agent.api_url, retries=1, backoff_s=0.05))
    return HisRig(his, agent, link)


def service(running: RunningGateway) -> SmsService:
    sms = running.gateway.sms
    assert sms is not None
    return sms


def client(n: int, *, fingerprint: bool = True, ip: str | None = None) -> dict[str, Any]:
    """What app ``n``'s browser looks like: its own address and fingerprint unless told otherwise."""
    info: dict[str, Any] = {
        "ip": ip or f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
        "user_agent": f"Mozilla/5.0 (Linux; Android 13; V{n % 97}) AppleWebKit/537.36 MicroMessenger/8.0.{n % 50}",
        "accept_language": "zh-CN,zh;q=0.9",
        "headers": {"sec-ch-ua-platform": '"Android"'},
    }
    if fingerprint:
        info["fingerprint"] = f"fp-{n:012d}"
    return info


@dataclass
class SmsRig:
    """A started gateway with the SMS defences, its sandbox provider and an app to call it."""

    running: RunningGateway
    provider: SandboxSmsProvider
    app: SmsApp

    @property
    def service(self) -> SmsService:
        return service(self.running)

    async def flush(self) -> None:
        await self.service.flush()

    async def sent_to(self, phone: str) -> int:
        await self.flush()
        return len(self.provider.to(phone))


class SmsApp:
    """A hospital app calling the SMS endpoints."""

    def __init__(self, api: ApiClient, captcha_solver: Any = None) -> None:
        self.api = api
        self.solver = captcha_solver

    async def otp(
        self, phone: str, purpose: str = "binding", *, client_info: dict[str, Any] | None = None, **extra: Any
    ) -> tuple[int, dict[str, Any]]:
        """``client_info={}`` sends no ``client`` object at all."""
        body: dict[str, Any] = {"phone": phone, "purpose": purpose, **extra}
        info = client(1) if client_info is None else client_info
        if info:
            body["client"] = info
        return await self.api.call("POST", "/v1/sms/otp", body)

    async def otp_solving(
        self, phone: str, purpose: str = "binding", *, client_info: dict[str, Any] | None = None, **extra: Any
    ) -> tuple[int, dict[str, Any], bool]:
        """Ask; when a captcha is required, have a person solve it and ask again. Returns whether one was asked."""
        status, body = await self.otp(phone, purpose, client_info=client_info, **extra)
        if status == 403 and body["error"]["code"] == "captcha_required":
            challenge = body["captcha"]["challenge_id"]
            answer = {"challenge_id": challenge, "token": self.solver.solve(challenge)}
            status, body = await self.otp(phone, purpose, client_info=client_info, captcha=answer, **extra)
            return status, body, True
        return status, body, False

    async def verify(self, phone: str, code: str, purpose: str = "binding") -> tuple[int, dict[str, Any]]:
        return await self.api.call("POST", "/v1/sms/verify", {"phone": phone, "purpose": purpose, "code": code})
