"""Start the sandbox channels (WeChat Pay v3, Alipay and UnionPay on one port, admin API under ``/_admin``)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from aiohttp import web
from cryptography import x509

from sandbox.channels import crypto
from sandbox.channels.admin import CONTEXT_KEY, Context, setup_admin
from sandbox.channels.alipay import GATEWAY, AlipayApp, AlipayCertificates, AlipaySandbox, cert_sn
from sandbox.channels.faults import FaultBook
from sandbox.channels.ledger import Clock, Ledger
from sandbox.channels.notifier import Notifier
from sandbox.channels.unionpay import FILE as UNIONPAY_FILE
from sandbox.channels.unionpay import UnionPayIdentity, UnionPayMerchant, UnionPaySandbox
from sandbox.channels.wechat import WechatMerchant, WechatPlatform, WechatSandbox


@dataclass
class WechatSettings:
    """The merchant as WeChat Pay knows it: ids, the merchant API certificate's serial and public key (PEM key or
    certificate), the APIv3 key; and optionally the platform identities (generated when absent)."""

    mchid: str
    appid: str
    merchant_serial_no: str
    merchant_public_key: bytes
    apiv3_key: str
    platform: WechatPlatform | None = None
    signing_mode: str = "certificate"


@dataclass
class AlipaySettings:
    """The app as Alipay knows it: app id, the app public key uploaded to the console, the seller PID; and the
    "Alipay" private key the sandbox signs with (generated when absent)."""

    app_id: str
    app_public_key: bytes
    seller_id: str = "2088102146225135"
    alipay_private_key: bytes | None = None
    certificates: AlipayCertificates | None = None
    """Public-key-certificate mode: the sandbox's CA and Alipay certificate (``AlipayCertificates.generate``);
    the app's public key gets an app certificate issued at start (``SandboxChannels.alipay_app_cert_pem``)."""


@dataclass
class UnionPaySettings:
    """The merchant as UnionPay knows it: merId and the signing certificates it registered (PEM, certId from the
    serial); and optionally UnionPay's own chain (generated when absent)."""

    mer_id: str
    merchant_certificates: list[bytes]
    identity: UnionPayIdentity | None = None


@dataclass
class SandboxChannels:
    runner: web.AppRunner
    context: Context
    host: str
    port: int
    _tmpdir: str | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def wechat_base_url(self) -> str:
        return self.base_url

    @property
    def alipay_gateway_url(self) -> str:
        return self.base_url + GATEWAY

    @property
    def unionpay_base_url(self) -> str:
        return self.base_url

    @property
    def unionpay_file_url(self) -> str:
        return self.base_url + UNIONPAY_FILE

    @property
    def admin_url(self) -> str:
        return self.base_url + "/_admin"

    @property
    def ledger(self) -> Ledger:
        return self.context.ledger

    @property
    def faults(self) -> FaultBook:
        return self.context.faults

    @property
    def notifier(self) -> Notifier:
        return self.context.notifier

    @property
    def wechat(self) -> WechatSandbox:
        assert self.context.wechat is not None, "started without WeChat settings"
        return self.context.wechat

    @property
    def alipay(self) -> AlipaySandbox:
        assert self.context.alipay is not None, "started without Alipay settings"
        return self.context.alipay

    @property
    def unionpay(self) -> UnionPaySandbox:
        assert self.context.unionpay is not None, "started without UnionPay settings"
        return self.context.unionpay

    async def close(self) -> None:
        await self.context.notifier.close()
        if self.context.wechat is not None:
            await self.context.wechat.close_tasks()
        if self.context.unionpay is not None:
            await self.context.unionpay.close_tasks()
        await self.runner.cleanup()
        self.context.ledger.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    async def __aenter__(self) -> SandboxChannels:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def start_sandbox_channels(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    wechat: WechatSettings | None = None,
    alipay: AlipaySettings | None = None,
    unionpay: UnionPaySettings | None = None,
    db_path: str | Path | None = None,
    notify_delay_s: float = 0.0,
    notify_time_scale: float = 1000.0,
    refund_delay_s: float = 0.05,
    clock: Clock | None = None,
    access_log: bool = False,
) -> SandboxChannels:
    """Serve the channels configured in this event loop; port 0 picks a free port.

    ``notify_time_scale`` divides the channels' callback retry intervals (1000: WeChat's 15 s becomes 15 ms);
    ``notify_delay_s`` delays every first delivery; ``refund_delay_s`` is how long a WeChat or UnionPay refund
    stays PROCESSING. Without ``db_path`` the ledger lives in a temporary file removed by ``close()``.
    """
    if wechat is None and alipay is None and unionpay is None:
        raise ValueError("configure at least one channel (wechat, alipay, unionpay)")
    tmpdir = None
    if db_path is None:
        tmpdir = tempfile.mkdtemp(prefix="sandbox-channels-")
        db_path = Path(tmpdir) / "channels.sqlite3"
    else:
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(db_path, clock=clock)
    faults = FaultBook()
    notifier = Notifier(ledger, faults, time_scale=notify_time_scale, first_delay_s=notify_delay_s)
    wechat_server = alipay_server = unionpay_server = None
    if wechat is not None:
        platform = wechat.platform or WechatPlatform.generate(wechat.mchid)
        platform.mode = wechat.signing_mode
        merchant = WechatMerchant(
            wechat.mchid,
            wechat.appid,
            wechat.merchant_serial_no,
            crypto.load_public(wechat.merchant_public_key),
            wechat.apiv3_key.encode(),
        )
        wechat_server = WechatSandbox(ledger, faults, notifier, merchant, platform, refund_delay_s=refund_delay_s)
    if alipay is not None:
        key = crypto.load_private(alipay.alipay_private_key) if alipay.alipay_private_key else crypto.new_rsa_key()
        app_key = crypto.load_public(alipay.app_public_key)
        app_info = AlipayApp(alipay.app_id, app_key, alipay.seller_id)
        if alipay.certificates is not None:
            app_cert = alipay.certificates.issue_app_cert(alipay.app_id, app_key)
            app_info.app_certs[cert_sn(app_cert)] = app_key
            app_info.issued.append(app_cert)
        alipay_server = AlipaySandbox(ledger, faults, notifier, app_info, key, alipay.certificates)
    if unionpay is not None:
        merchant_keys = {}
        for pem in unionpay.merchant_certificates:
            cert = x509.load_pem_x509_certificate(pem)
            merchant_keys[UnionPayMerchant.cert_id(cert)] = crypto.load_public(pem)
        unionpay_server = UnionPaySandbox(
            ledger,
            faults,
            notifier,
            UnionPayMerchant(unionpay.mer_id, merchant_keys),
            unionpay.identity or UnionPayIdentity.generate(),
            refund_delay_s=refund_delay_s,
        )
    context = Context(ledger, faults, notifier, wechat_server, alipay_server, unionpay_server)
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[CONTEXT_KEY] = context
    for server in (wechat_server, alipay_server, unionpay_server):
        if server is not None:
            server.setup(app)
    setup_admin(app)
    runner = web.AppRunner(
        app, access_log=logging.getLogger("sandbox.channels.access") if access_log else None, handle_signals=False
    )
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        ledger.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    bound_port = int(runner.addresses[0][1])
    return SandboxChannels(runner, context, host, bound_port, tmpdir)
