"""``his-sandbox channels``: serve the sandbox WeChat Pay v3, Alipay and UnionPay channels from the command line.

The channel-side keys (WeChat platform certificate and public key, the "Alipay" key or certificates, UnionPay's
CA and signing certificate) are generated once into ``--state-dir`` and reused, so a gateway configured against
them keeps working across restarts; the public halves a merchant configures are written there too
(``wechatpay_platform_cert.pem``, ``wechatpay_public_key.pem`` with ``wechatpay_public_key_id.txt``,
``alipay_public_key.pem`` — or in certificate mode ``alipay_cert.crt``, ``alipay_root_cert.crt`` and the app's
``alipay_app_cert.crt`` —, ``unionpay_root.cer`` and ``unionpay_middle.cer``). Without
``--unionpay-merchant-cert`` the sandbox issues the merchant's UnionPay signing key itself, as UnionPay does on
enrolment: ``unionpay_merchant_sign.pfx`` with its password in ``unionpay_merchant_sign.pw``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from bridge import protocol
from sandbox.channels import crypto, pki
from sandbox.channels.alipay import AlipayCertificates
from sandbox.channels.server import AlipaySettings, UnionPaySettings, WechatSettings, start_sandbox_channels
from sandbox.channels.unionpay import UnionPayIdentity, merchant_pfx
from sandbox.channels.wechat import WechatPlatform


def add_parser(commands: Any, listen_type: Any) -> None:
    p = commands.add_parser("channels", help="serve the sandbox payment channels (WeChat Pay v3, Alipay, UnionPay)")
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
    a.add_argument("--alipay-cert-mode", action="store_true", help="public-key-certificate mode")
    u = p.add_argument_group("UnionPay merchant (enabled by --unionpay-mer-id)")
    u.add_argument("--unionpay-mer-id", metavar="MERID")
    u.add_argument(
        "--unionpay-merchant-cert",
        type=Path,
        action="append",
        default=[],
        metavar="PEM",
        help="a merchant signing certificate (repeatable; default: issue one into the state dir)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")


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


def _write_private(path: Path, data: bytes) -> None:
    protocol.write_private(path, data)


def _alipay_key(state: Path) -> bytes:
    private = state / "alipay_private_key.pem"
    if not private.exists():
        key = crypto.new_rsa_key()
        _write_private(private, crypto.private_pem(key))
        (state / "alipay_public_key.pem").write_bytes(crypto.public_pem(key.public_key()))
    return private.read_bytes()


def _authority(state: Path, name: str, make: Callable[[], pki.Authority]) -> pki.Authority:
    key_file, cert_file = state / f"{name}_key.pem", state / f"{name}.pem"
    if key_file.exists() and cert_file.exists():
        return pki.Authority(crypto.load_private(key_file), x509.load_pem_x509_certificate(cert_file.read_bytes()))
    made = make()
    _write_private(key_file, crypto.private_pem(made.key))
    cert_file.write_bytes(crypto.certificate_pem(made.cert))
    return made


def _alipay_certificates(state: Path, pid: str) -> AlipayCertificates:
    fresh = None

    def generated() -> AlipayCertificates:
        nonlocal fresh
        fresh = fresh or AlipayCertificates.generate(pid)
        return fresh

    root = _authority(state, "alipay_ca_root", lambda: generated().root)
    other = _authority(state, "alipay_ca_other_root", lambda: generated().other_root)
    class2 = _authority(state, "alipay_ca_class2", lambda: generated().class2)
    signer = _authority(state, "alipay_ca_signer", lambda: pki.Authority(generated().key, generated().cert))
    certs = AlipayCertificates(root, other, class2, signer.key, signer.cert)
    (state / "alipay_cert.crt").write_bytes(certs.chain_pem(certs.cert))
    (state / "alipay_root_cert.crt").write_bytes(certs.root_bundle)
    return certs


def _unionpay(state: Path, mer_id: str, certificates: list[Path]) -> UnionPaySettings:
    fresh = None

    def generated() -> UnionPayIdentity:
        nonlocal fresh
        fresh = fresh or UnionPayIdentity.generate()
        return fresh

    root = _authority(state, "unionpay_ca_root", lambda: generated().root)
    middle = _authority(state, "unionpay_ca_middle", lambda: generated().middle)
    signer = _authority(state, "unionpay_signer", lambda: pki.Authority(generated().sign_key, generated().sign_cert))
    identity = UnionPayIdentity(root, middle, signer.key, signer.cert)
    (state / "unionpay_root.cer").write_bytes(crypto.certificate_pem(root.cert))
    (state / "unionpay_middle.cer").write_bytes(crypto.certificate_pem(middle.cert))
    pems = [path.read_bytes() for path in certificates]
    if not pems:
        pfx, password_file = state / "unionpay_merchant_sign.pfx", state / "unionpay_merchant_sign.pw"
        if not pfx.exists():
            key, cert = identity.issue_merchant(mer_id)
            password = secrets.token_urlsafe(12)
            _write_private(password_file, (password + "\n").encode())
            _write_private(pfx, merchant_pfx(key, cert, password))
        _, cert, _ = pkcs12.load_key_and_certificates(pfx.read_bytes(), password_file.read_text().strip().encode())
        assert cert is not None
        pems = [crypto.certificate_pem(cert)]
    return UnionPaySettings(mer_id, pems, identity)


def settings(
    args: argparse.Namespace,
) -> tuple[WechatSettings | None, AlipaySettings | None, UnionPaySettings | None]:
    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    wechat = alipay = unionpay = None
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
            args.alipay_app_id,
            args.alipay_app_public_key.read_bytes(),
            args.alipay_seller_id,
            _alipay_key(state),
            _alipay_certificates(state, args.alipay_seller_id) if args.alipay_cert_mode else None,
        )
    if args.unionpay_mer_id:
        unionpay = _unionpay(state, args.unionpay_mer_id, args.unionpay_merchant_cert)
    if wechat is None and alipay is None and unionpay is None:
        raise SystemExit("his-sandbox channels: enable --wechat-mchid, --alipay-app-id and/or --unionpay-mer-id")
    return wechat, alipay, unionpay


async def serve(args: argparse.Namespace) -> int:
    wechat, alipay, unionpay = settings(args)
    host, port = args.listen
    channels = await start_sandbox_channels(
        host,
        port,
        wechat=wechat,
        alipay=alipay,
        unionpay=unionpay,
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
        if alipay.certificates is not None:
            (args.state_dir / "alipay_app_cert.crt").write_bytes(
                b"".join(crypto.certificate_pem(c) for c in channels.alipay.app.issued)
            )
        print(f"Alipay sandbox gateway at {channels.alipay_gateway_url}", flush=True)
    if unionpay is not None:
        print(f"UnionPay sandbox at {channels.unionpay_base_url} (files at {channels.unionpay_file_url})", flush=True)
    print(f"admin API at {channels.admin_url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await channels.close()
    return 0
