"""``his-sandbox channels``: serve the sandbox WeChat Pay v3 and Alipay channels from the command line.

The channel-side keys (WeChat platform certificate and public key, the "Alipay" key) are generated once into
``--state-dir`` and reused, so a gateway configured against them keeps working across restarts; the public
halves a merchant configures are written there too (``wechatpay_platform_cert.pem``,
``wechatpay_public_key.pem`` with ``wechatpay_public_key_id.txt``, ``alipay_public_key.pem``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from cryptography import x509

from bridge import protocol
from sandbox.channels import crypto
from sandbox.channels.server import AlipaySettings, WechatSettings, start_sandbox_channels
from sandbox.channels.wechat import WechatPlatform


def add_parser(commands: Any, listen_type: Any) -> None:
    p = commands.add_parser("channels", help="serve the sandbox payment channels (WeChat Pay v3, Alipay)")
    p.add_argument(
        "--listen", type=listen_type, default=("127.0.0.1", 8090), metavar="HOST:PORT", help="default 127.0.0.1:8090"
    )
    p.add_argument("--db", type=Path, default=None, metavar="PATH", help="ledger SQLite file (default: temporary)")
    p.add_argument("--state-dir", type=Path, required=True, metavar="DIR", help="channel keys, kept across runs")
    p.add_argument("--notify-delay", type=float, default=0.0, metavar="S", help="delay before each first callback")
    p.add_argument(
        "--notify-time-scale",
        type=float,
        default=1000.0,
        metavar="N",
        help="divide the channels' callback retry intervals by N (default 1000: WeChat's 15 s is 15 ms)",
    )
    p.add_argument("--refund-delay", type=float, default=0.05, metavar="S", help="WeChat refunds stay PROCESSING")
    p.add_argument("--signing-mode", choices=("certificate", "public_key"), default="certificate")
    w = p.add_argument_group("WeChat Pay merchant (enabled by --wechat-mchid)")
    w.add_argument("--wechat-mchid")
    w.add_argument("--wechat-appid")
    w.add_argument("--wechat-merchant-serial", metavar="SERIAL", help="serial of the merchant API certificate")
    w.add_argument("--wechat-merchant-key", type=Path, metavar="PEM", help="merchant public key or certificate")
    w.add_argument("--wechat-apiv3-key-file", type=Path, metavar="FILE", help="or env WECHAT_APIV3_KEY")
    a = p.add_argument_group("Alipay app (enabled by --alipay-app-id)")
    a.add_argument("--alipay-app-id")
    a.add_argument("--alipay-app-public-key", type=Path, metavar="PEM", help="the app public key")
    a.add_argument("--alipay-seller-id", default="2088102146225135", metavar="PID")
    a.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")


def _platform(state: Path, mchid: str) -> WechatPlatform:
    files = {
        "cert_key": state / "wechatpay_platform_key.pem",
        "cert": state / "wechatpay_platform_cert.pem",
        "pub_key": state / "wechatpay_public_key_private.pem",
        "pub": state / "wechatpay_public_key.pem",
        "pub_id": state / "wechatpay_public_key_id.txt",
    }
    if all(f.exists() for f in files.values()):
        return WechatPlatform(
            crypto.load_private(files["cert_key"]),
            x509.load_pem_x509_certificate(files["cert"].read_bytes()),
            crypto.load_private(files["pub_key"]),
            files["pub_id"].read_text().strip(),
        )
    platform = WechatPlatform.generate(mchid)
    _write_private(files["cert_key"], crypto.private_pem(platform.cert_key))
    files["cert"].write_bytes(crypto.certificate_pem(platform.cert))
    _write_private(files["pub_key"], crypto.private_pem(platform.public_key_key))
    files["pub"].write_bytes(crypto.public_pem(platform.public_key_key.public_key()))
    files["pub_id"].write_text(platform.public_key_id + "\n")
    return platform


def _write_private(path: Path, pem: bytes) -> None:
    protocol.write_private(path, pem)


def _alipay_key(state: Path) -> bytes:
    private = state / "alipay_private_key.pem"
    if not private.exists():
        key = crypto.new_rsa_key()
        _write_private(private, crypto.private_pem(key))
        (state / "alipay_public_key.pem").write_bytes(crypto.public_pem(key.public_key()))
    return private.read_bytes()


def settings(args: argparse.Namespace) -> tuple[WechatSettings | None, AlipaySettings | None]:
    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    wechat = alipay = None
    if args.wechat_mchid:
        missing = [n for n in ("wechat_appid", "wechat_merchant_serial", "wechat_merchant_key") if not getattr(args, n)]
        if missing:
            raise SystemExit(
                f"his-sandbox channels: WeChat needs --{', --'.join(m.replace('_', '-') for m in missing)}"
            )
        apiv3 = (
            args.wechat_apiv3_key_file.read_text().strip()
            if args.wechat_apiv3_key_file
            else os.environ.get("WECHAT_APIV3_KEY", "")
        )
        if len(apiv3.encode()) != 32:
            raise SystemExit(
                "his-sandbox channels: the APIv3 key (--wechat-apiv3-key-file or WECHAT_APIV3_KEY) is 32 chars"
            )
        wechat = WechatSettings(
            args.wechat_mchid,
            args.wechat_appid,
            args.wechat_merchant_serial,
            args.wechat_merchant_key.read_bytes(),
            apiv3,
            platform=_platform(state, args.wechat_mchid),
            signing_mode=args.signing_mode,
        )
    if args.alipay_app_id:
        if not args.alipay_app_public_key:
            raise SystemExit("his-sandbox channels: Alipay needs --alipay-app-public-key")
        alipay = AlipaySettings(
            args.alipay_app_id, args.alipay_app_public_key.read_bytes(), args.alipay_seller_id, _alipay_key(state)
        )
    if wechat is None and alipay is None:
        raise SystemExit("his-sandbox channels: enable --wechat-mchid and/or --alipay-app-id")
    return wechat, alipay


async def serve(args: argparse.Namespace) -> int:
    wechat, alipay = settings(args)
    host, port = args.listen
    channels = await start_sandbox_channels(
        host,
        port,
        wechat=wechat,
        alipay=alipay,
        db_path=args.db,
        notify_delay_s=args.notify_delay,
        notify_time_scale=args.notify_time_scale,
        refund_delay_s=args.refund_delay,
        access_log=args.verbose,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if wechat is not None:
        print(f"WeChat Pay v3 sandbox at {channels.wechat_base_url} (keys in {args.state_dir})", flush=True)
    if alipay is not None:
        print(f"Alipay sandbox gateway at {channels.alipay_gateway_url}", flush=True)
    print(f"admin API at {channels.admin_url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await channels.close()
    return 0
