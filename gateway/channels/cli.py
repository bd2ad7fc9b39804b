"""``his-gateway channels check-callback``: verify a captured channel callback offline and say exactly why it
fails, so an operator can tell a misconfigured key from a forged or stale message.

Exit codes: 0 valid (the decrypted resource, or the verified fields, are printed as JSON); 2 usage or unreadable
input; then one per reason: 3 unknown_serial, 4 bad_signature, 5 stale, 6 bad_tag, 7 wrong_merchant, 8 malformed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.channels import alipay_crypto, wechat_crypto
from gateway.channels.alipay import open_notification
from gateway.channels.base import NotificationRejected
from gateway.channels.wechat import open_callback
from gateway.channels.wechat_crypto import PlatformKey, WechatVerifier

EXIT_CODES = {"unknown_serial": 3, "bad_signature": 4, "stale": 5, "bad_tag": 6, "wrong_merchant": 7, "malformed": 8}
EXIT_USAGE = 2


class UsageError(Exception):
    pass


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``channels`` (with ``check-callback``) to a parent parser's subcommands."""
    channels = subparsers.add_parser("channels", help="payment channel tools")
    commands = channels.add_subparsers(dest="channels_command", required=True, metavar="CHANNELS_COMMAND")
    check = commands.add_parser(
        "check-callback",
        help="verify a captured callback and print its decrypted resource",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--channel", required=True, choices=("wechat", "alipay"))
    check.add_argument(
        "--headers",
        required=True,
        type=Path,
        metavar="FILE",
        help="the HTTP headers: a JSON object or 'Name: value' lines",
    )
    check.add_argument("--body", required=True, type=Path, metavar="FILE", help="the raw request body")
    check.add_argument(
        "--platform-key",
        action="append",
        type=Path,
        default=[],
        metavar="PEM",
        help="WeChat: a platform certificate or the WeChat Pay public key (repeatable); Alipay: the Alipay public key",
    )
    check.add_argument(
        "--public-key-id", metavar="PUB_KEY_ID_…", help="the id of a WeChat Pay public key given as --platform-key"
    )
    key = check.add_mutually_exclusive_group()
    key.add_argument("--apiv3-key", metavar="KEY", help="the APIv3 key (prefer --apiv3-key-file or WECHAT_APIV3_KEY)")
    key.add_argument("--apiv3-key-file", type=Path, metavar="FILE")
    check.add_argument("--mchid", help="WeChat: the merchant the callback must name")
    check.add_argument("--appid", help="WeChat: the appid the callback must name")
    check.add_argument("--app-id", help="Alipay: the app the notification must name")
    check.add_argument("--seller-id", help="Alipay: the seller PID the notification must name")
    check.add_argument("--window", type=int, default=300, metavar="S", help="WeChat timestamp window (default 300)")
    check.add_argument("--at", type=float, default=None, metavar="UNIX_TIME", help="judge freshness as of this time")
    check.set_defaults(func=check_callback)


def read_headers(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        data = json.loads(text)
        if not isinstance(data, dict):
            raise UsageError(f"{path}: headers JSON must be an object")
        return {str(k): str(v) for k, v in data.items()}
    headers: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() and not name.startswith((" ", "\t")):
            headers[name.strip()] = value.strip()
    return headers


def _wechat_verifier(args: argparse.Namespace, headers: dict[str, str]) -> WechatVerifier:
    keys: list[PlatformKey] = []
    serial = {k.lower(): v for k, v in headers.items()}.get(wechat_crypto.HEADER_SERIAL.lower(), "")
    for path in args.platform_key:
        pem = path.read_bytes()
        if b"BEGIN CERTIFICATE" in pem:
            cert = x509.load_pem_x509_certificate(pem)
            keys.append(PlatformKey(wechat_crypto.certificate_serial(cert), wechat_crypto.load_public_key(pem)))
            continue
        key_id = args.public_key_id or (serial if serial.startswith(wechat_crypto.PUBLIC_KEY_ID_PREFIX) else None)
        if not key_id:
            raise UsageError(f"{path} is a bare public key: say its id with --public-key-id")
        keys.append(PlatformKey(key_id, wechat_crypto.load_public_key(pem)))
    if not keys:
        raise UsageError("WeChat callbacks need --platform-key (certificate or public key)")
    return WechatVerifier(keys, window_s=args.window)


def _apiv3_key(args: argparse.Namespace) -> bytes:
    if args.apiv3_key:
        value = args.apiv3_key
    elif args.apiv3_key_file:
        value = args.apiv3_key_file.read_text(encoding="utf-8").strip()
    else:
        value = os.environ.get("WECHAT_APIV3_KEY", "")
    if len(value.encode()) != 32:
        raise UsageError("the APIv3 key (--apiv3-key, --apiv3-key-file or WECHAT_APIV3_KEY) is 32 characters")
    return value.encode()


def check_callback(args: argparse.Namespace) -> int:
    try:
        headers = read_headers(args.headers)
        body = args.body.read_bytes()
        result: dict[str, Any]
        if args.channel == "wechat":
            verifier = _wechat_verifier(args, headers)
            event_type, notification_id, resource = open_callback(
                verifier, _apiv3_key(args), headers, body, now=args.at, mchid=args.mchid, appid=args.appid
            )
            result = {"event_type": event_type, "id": notification_id, "resource": resource}
        else:
            if len(args.platform_key) != 1:
                raise UsageError("Alipay notifications need exactly one --platform-key: the Alipay public key")
            key = alipay_crypto.load_public_key(args.platform_key[0].read_bytes())
            result = {
                "fields": open_notification(
                    key, headers, body, now=args.at, app_id=args.app_id, seller_id=args.seller_id
                )
            }
    except NotificationRejected as exc:
        print(f"rejected: {exc.reason}: {exc.message}", file=sys.stderr)
        return EXIT_CODES.get(exc.reason, 1)
    except (UsageError, OSError, ValueError) as exc:
        print(f"check-callback: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m gateway.channels.cli channels check-callback …``)."""
    parser = argparse.ArgumentParser(prog="his-gateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
