"""Building blocks for the payment-channel tests: the published test merchants (keys from tests/fixtures, with
their origins in each folder's SOURCES.md), sandbox channel settings, gateway channel configs, and a notify
receiver."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bridge.settings import Secret
from gateway.channels.config import AlipayConfig, UnionPayConfig, WechatConfig
from sandbox.channels import AlipaySettings, SandboxChannels, UnionPaySettings, WechatSettings
from sandbox.channels import crypto as sandbox_crypto
from sandbox.channels.alipay import AlipayCertificates
from sandbox.channels.unionpay import UnionPayIdentity, merchant_pfx
from tests.support.gateway_rig import eventually
from tests.support.rig import FIXTURES

WECHAT_FIXTURES = FIXTURES / "wechatpay"
ALIPAY_FIXTURES = FIXTURES / "alipay"
UNIONPAY_FIXTURES = FIXTURES / "unionpay"
ALIPAY_CERT_FIXTURES = FIXTURES / "alipay_cert"

WECHAT_MCHID = "1230000109"
WECHAT_APPID = "wx81be3101902f7cb2"
WECHAT_SERIAL = "477ED0046A54F0360A72A63A8F2816312AAEAB53"
WECHAT_KEY = WECHAT_FIXTURES / "mock_merchant_private_key.pem"
APIV3_KEY = "AES256Key-32Characters1234567890"
"""The 32-character key of the published AES-GCM vector; test-only."""

ALIPAY_APP_ID = "2016080300157187"
ALIPAY_SELLER_ID = "2088102146225135"
ALIPAY_APP_PRIVATE = ALIPAY_FIXTURES / "app_private_key.pem"
ALIPAY_APP_PUBLIC = ALIPAY_FIXTURES / "app_public_key.pem"
ALIPAY_PRIVATE = ALIPAY_FIXTURES / "ali_private_key.pem"
ALIPAY_PUBLIC = ALIPAY_FIXTURES / "ali_public_key.pem"


UNIONPAY_MER_ID = "777290058167151"
UNIONPAY_TEST_KEY = UNIONPAY_FIXTURES / "acp_test_sign.pfx"
"""UnionPay's published test signing certificate (certId 69903319369, password 000000): the signature vector's.
It expired on 2026-11-26, so the sandbox tests use merchant keys the sandbox's CA issues (``unionpay_key``)."""


@dataclass(frozen=True)
class UnionPayKey:
    """A merchant signing key as UnionPay hands it out: a PKCS#12 file and its password."""

    id: str
    pfx: Path
    password_file: Path
    certificate_pem: bytes
    cert_id: str

    def record(self, **window: object) -> dict[str, object]:
        return {"id": self.id, "private_key_file": self.pfx, "password": {"file": self.password_file}, **window}


def unionpay_key(identity: UnionPayIdentity, directory: Path, name: str = "sign") -> UnionPayKey:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = identity.issue_merchant(UNIONPAY_MER_ID)
    password = secrets.token_urlsafe(9)
    pfx, password_file = directory / f"{name}.pfx", directory / f"{name}.pw"
    pfx.write_bytes(merchant_pfx(key, cert, password))
    password_file.write_text(password + "\n")
    return UnionPayKey(name, pfx, password_file, sandbox_crypto.certificate_pem(cert), str(cert.serial_number))


def unionpay_settings(identity: UnionPayIdentity, keys: list[UnionPayKey]) -> UnionPaySettings:
    return UnionPaySettings(UNIONPAY_MER_ID, [k.certificate_pem for k in keys], identity)


@dataclass
class UnionPayTrust:
    """UnionPay's root and intermediate as a merchant configures them."""

    root: Path
    middle: Path


def write_unionpay_trust(sandbox: SandboxChannels, directory: Path) -> UnionPayTrust:
    identity = sandbox.unionpay.identity
    directory.mkdir(parents=True, exist_ok=True)
    root, middle = directory / "unionpay_root.cer", directory / "unionpay_middle.cer"
    root.write_bytes(sandbox_crypto.certificate_pem(identity.root.cert))
    middle.write_bytes(sandbox_crypto.certificate_pem(identity.middle.cert))
    return UnionPayTrust(root, middle)


def unionpay_config(
    sandbox: SandboxChannels, trust: UnionPayTrust, keys: list[UnionPayKey], **overrides: object
) -> UnionPayConfig:
    values: dict[str, object] = {
        "mer_id": UNIONPAY_MER_ID,
        "merchant_keys": [k.record() for k in keys],
        "root_cert_file": trust.root,
        "middle_cert_file": trust.middle,
        "base_url": sandbox.unionpay_base_url,
        "file_url": sandbox.unionpay_file_url,
        "codepay": {"first_delay_s": 0, "max_delay_s": 0.05, "factor": 2, "deadline_s": 1},
        **overrides,
    }
    return UnionPayConfig.model_validate(values)


def merchant_public_pem() -> bytes:
    return sandbox_crypto.public_pem(sandbox_crypto.load_private(WECHAT_KEY).public_key())


def wechat_settings(**overrides: object) -> WechatSettings:
    values: dict[str, object] = {
        "mchid": WECHAT_MCHID,
        "appid": WECHAT_APPID,
        "merchant_serial_no": WECHAT_SERIAL,
        "merchant_public_key": merchant_public_pem(),
        "apiv3_key": APIV3_KEY,
        **overrides,
    }
    return WechatSettings(**values)  # type: ignore[arg-type]


def alipay_settings(certificates: AlipayCertificates | None = None) -> AlipaySettings:
    return AlipaySettings(
        app_id=ALIPAY_APP_ID,
        app_public_key=ALIPAY_APP_PUBLIC.read_bytes(),
        seller_id=ALIPAY_SELLER_ID,
        alipay_private_key=ALIPAY_PRIVATE.read_bytes(),
        certificates=certificates,
    )


@dataclass
class AlipayCertTrust:
    """Certificate mode, as the merchant downloads it from the console: the app certificate, the Alipay
    certificate (with its intermediate) and the root bundle."""

    app_cert: Path
    alipay_cert: Path
    root_cert: Path


def write_alipay_cert_trust(sandbox: SandboxChannels, directory: Path) -> AlipayCertTrust:
    certs = sandbox.alipay.certificates
    assert certs is not None, "the sandbox Alipay is not in certificate mode"
    directory.mkdir(parents=True, exist_ok=True)
    trust = AlipayCertTrust(
        directory / "appCertPublicKey.crt", directory / "alipayCertPublicKey_RSA2.crt", directory / "alipayRootCert.crt"
    )
    trust.app_cert.write_bytes(sandbox_crypto.certificate_pem(sandbox.alipay.app.issued[0]))
    trust.alipay_cert.write_bytes(certs.chain_pem(certs.cert))
    trust.root_cert.write_bytes(certs.root_bundle)
    return trust


def alipay_cert_config(sandbox: SandboxChannels, trust: AlipayCertTrust, **overrides: object) -> AlipayConfig:
    values: dict[str, object] = {
        "app_id": ALIPAY_APP_ID,
        "merchant_keys": [{"id": "app", "private_key_file": ALIPAY_APP_PRIVATE, "certificate_file": trust.app_cert}],
        "alipay_cert_file": trust.alipay_cert,
        "alipay_root_cert_file": trust.root_cert,
        "seller_id": ALIPAY_SELLER_ID,
        "gateway_url": sandbox.alipay_gateway_url,
        "codepay": {"first_delay_s": 0, "max_delay_s": 0.05, "factor": 2, "deadline_s": 1},
        **overrides,
    }
    return AlipayConfig.model_validate(values)


@dataclass
class WechatTrust:
    """The sandbox platform's public material written where a merchant config points."""

    certificate: Path
    public_key: Path
    public_key_id: str
    certificate_serial: str
    apiv3_key_file: Path


def write_wechat_trust(sandbox: SandboxChannels, directory: Path) -> WechatTrust:
    platform = sandbox.wechat.platform
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / f"wechatpay_{platform.cert_serial}.pem"
    cert.write_bytes(sandbox_crypto.certificate_pem(platform.cert))
    pub = directory / "wechatpay_public_key.pem"
    pub.write_bytes(sandbox_crypto.public_pem(platform.public_key_key.public_key()))
    key_file = directory / "apiv3.key"
    key_file.write_text(APIV3_KEY + "\n")
    return WechatTrust(cert, pub, platform.public_key_id, platform.cert_serial, key_file)


def wechat_config(
    sandbox: SandboxChannels, trust: WechatTrust, *, mode: str = "both", **overrides: object
) -> WechatConfig:
    values: dict[str, object] = {
        "mchid": WECHAT_MCHID,
        "appid": WECHAT_APPID,
        "merchant_serial_no": WECHAT_SERIAL,
        "private_key_file": WECHAT_KEY,
        "apiv3_key": Secret(file=trust.apiv3_key_file),
        "base_url": sandbox.wechat_base_url,
        "codepay": {"first_delay_s": 0, "max_delay_s": 0.05, "factor": 2, "deadline_s": 1},
    }
    if mode in ("both", "certificate"):
        values["platform_certificates"] = [trust.certificate]
    if mode in ("both", "public_key"):
        values["public_key_file"] = trust.public_key
        values["public_key_id"] = trust.public_key_id
    values.update(overrides)
    return WechatConfig.model_validate(values)


def alipay_config(sandbox: SandboxChannels, **overrides: object) -> AlipayConfig:
    values: dict[str, object] = {
        "app_id": ALIPAY_APP_ID,
        "app_private_key_file": ALIPAY_APP_PRIVATE,
        "alipay_public_key_file": ALIPAY_PUBLIC,
        "seller_id": ALIPAY_SELLER_ID,
        "gateway_url": sandbox.alipay_gateway_url,
        "codepay": {"first_delay_s": 0, "max_delay_s": 0.05, "factor": 2, "deadline_s": 1},
        **overrides,
    }
    return AlipayConfig.model_validate(values)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class NotifyReceiver:
    """The merchant's notify endpoint: records every callback and answers as ``respond`` says."""

    url: str
    runner: web.AppRunner
    received: list[Received] = field(default_factory=list)
    respond: Callable[[Received], web.Response] = field(default=lambda _r: web.Response(text="success"))
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for(self, count: int, within_s: float = 20.0) -> list[Received]:
        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.received) >= count)

        await asyncio.wait_for(enough(), within_s)
        return self.received

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_receiver() -> NotifyReceiver:
    receiver: NotifyReceiver

    async def handle(request: web.Request) -> web.Response:
        item = Received(dict(request.headers), await request.read())
        async with receiver._arrived:
            receiver.received.append(item)
            receiver._arrived.notify_all()
        return receiver.respond(item)

    app = web.Application()
    app.router.add_post("/notify/{name}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    receiver = NotifyReceiver(f"http://127.0.0.1:{port}/notify", runner)
    return receiver


class SandboxAdmin:
    """The sandbox channels' admin API (``/_admin``) as a test drives it: the payer's side, faults, held refunds,
    and the channel's ledger and callback records."""

    def __init__(self, sandbox: SandboxChannels, channel: str = "wechat") -> None:
        self.sandbox = sandbox
        self.channel = channel
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        await self._http.close()

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, expect: int | None = None
    ) -> Any:
        async with self._http.request(method, self.sandbox.admin_url + path, json=body) as resp:
            data = await resp.json()
            if expect is None:
                assert resp.status < 300, (path, data)
            else:
                assert resp.status == expect, (path, data)
            return data

    async def pay(self, out_trade_no: str, *, force: bool = False) -> dict[str, Any]:
        return await self.call(
            "POST", "/payer/pay", {"channel": self.channel, "out_trade_no": out_trade_no, "force": force}
        )

    async def fault(self, match: str, mode: str, **rule: Any) -> dict[str, Any]:
        """A call fault (``match`` an API name such as ``wechat.refund``) or, with ``kind="notify"``, a callback
        fault (``match`` such as ``wechat.payment``)."""
        return await self.call("POST", "/faults", {"match": match, "mode": mode, **rule})

    async def clear_faults(self) -> None:
        await self.call("DELETE", "/faults")

    async def fault_hits(self, rule_id: int) -> int:
        """How often a standing rule (one without ``count``) has fired."""
        rules = (await self.call("GET", "/faults"))["faults"]
        (rule,) = [r for r in rules if r["id"] == rule_id]
        return int(rule["hits"])

    async def hold_refunds(self, count: int = 1) -> None:
        await self.call("POST", "/refunds/hold", {"channel": self.channel, "count": count})

    async def release_refunds(self, out_refund_no: str | None = None, state: str = "SUCCESS") -> list[str]:
        body: dict[str, Any] = {"channel": self.channel, "state": state}
        if out_refund_no is not None:
            body["out_refund_no"] = out_refund_no
        return (await self.call("POST", "/refunds/release", body))["released"]

    async def trades(self) -> list[dict[str, Any]]:
        return (await self.call("GET", f"/trades?channel={self.channel}"))["trades"]

    async def trade(self, out_trade_no: str) -> dict[str, Any]:
        (trade,) = [t for t in await self.trades() if t["out_trade_no"] == out_trade_no]
        return trade

    async def refunds(self, out_trade_no: str | None = None) -> list[dict[str, Any]]:
        rows = (await self.call("GET", f"/refunds?channel={self.channel}"))["refunds"]
        return [r for r in rows if out_trade_no in (None, r["out_trade_no"])]

    async def refunded_fen(self, out_trade_no: str) -> int:
        """What the channel has paid back or is paying back on a trade (refunds that ended CLOSED/ABNORMAL
        excluded)."""
        return int((await self.trade(out_trade_no))["refunded_fen"])

    async def notifications(self, kind: str | None = None) -> list[dict[str, Any]]:
        rows = (await self.call("GET", f"/notifications?channel={self.channel}"))["notifications"]
        return [n for n in rows if kind in (None, n["kind"])]

    async def busy(self) -> bool:
        """Whether the channel still has something of its own to do now: a refund it is paying out (one not held
        on purpose), or a callback whose delivery is under way."""
        refunds = await self.refunds()
        if any(r["state"] == "PROCESSING" and not r["held"] for r in refunds):
            return True
        return any(n["status"] == "pending" for n in await self.notifications())

    async def quiet(self, *, timeout_s: float = 20.0) -> None:
        """Wait, by polling the ledger with a deadline, until the channel is not ``busy``; then until the notifier
        has no delivery left in flight (a duplicate or a resend of a callback already delivered once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while await self.busy():
            if loop.time() > deadline:
                raise AssertionError(f"the sandbox channel still busy after {timeout_s} s")
            await asyncio.sleep(0.02)
        await asyncio.wait_for(self.sandbox.notifier.idle(), max(0.1, deadline - loop.time()))


async def first_answers(sandbox: SandboxChannels, channel: str, count: int) -> list[dict[str, Any]]:
    """The sandbox's ``count`` callbacks of ``channel`` once each has had its first answer. A payment or refund can
    be done (by the gateway's own query, or a synchronous refund answer) while its callback is still on its way,
    so a test that counts attempts waits for this, not for the order."""

    async def answered() -> bool:
        sent = sandbox.ledger.notifications(channel)
        return len(sent) == count and all(d["attempts"] >= 1 for d in sent)

    await eventually(answered, what=f"{count} {channel} callbacks answered once")
    return sandbox.ledger.notifications(channel)
