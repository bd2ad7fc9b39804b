"""``his-gateway channels …``: tools for the payment channels.

``check-callback`` verifies a captured channel callback offline and says exactly why it fails, so an operator can
tell a misconfigured key from a forged or stale message. Exit codes: 0 valid (the decrypted resource, or the
verified fields, are printed as JSON); 2 usage or unreadable input; then one per reason: 3 unknown_serial,
4 bad_signature, 5 stale, 6 bad_tag, 7 wrong_merchant, 8 malformed, 9 expired_certificate, 10
untrusted_certificate.

``keys`` lists every key each merchant signs with or trusts — id, serial, status, expiry, what it is used for —
including the certificates fetched at run time (from the database); ``keys --check`` judges them as ``doctor``
does: OK / WARN (something lapses within ``--warn-days``) / FAIL, exit code the worst finding (0, 1, 2).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from bridge import clock
from gateway.channels import alipay_crypto, factory, inventory, unionpay_crypto, wechat_crypto
from gateway.channels.alipay import open_notification
from gateway.channels.base import NotificationRejected
from gateway.channels.config import UNIONPAY_OWNER
from gateway.channels.keys import KeyInfo
from gateway.channels.unionpay import open_notification as open_unionpay_notification
from gateway.channels.wechat import open_callback
from gateway.channels.wechat_crypto import PlatformKey, WechatVerifier
from gateway.config import GatewayConfig
from gateway.store import tenants as tenant_store
from gateway.store.channel_state import SqlChannelState
from gateway.store.db import Database
from gateway.tenants.snapshot import Tenants

EXIT_CODES = {
    "unknown_serial": 3,
    "bad_signature": 4,
    "stale": 5,
    "bad_tag": 6,
    "wrong_merchant": 7,
    "malformed": 8,
    "expired_certificate": 9,
    "untrusted_certificate": 10,
}
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
    check.add_argument("--channel", required=True, choices=("wechat", "alipay", "unionpay"))
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
    check.add_argument("--root-cert", type=Path, metavar="PEM", help="UnionPay: its root certificate")
    check.add_argument("--middle-cert", type=Path, metavar="PEM", help="UnionPay: its intermediate certificate")
    check.add_argument("--mer-id", help="UnionPay: the merchant the notification must name")
    check.add_argument("--window", type=int, default=300, metavar="S", help="WeChat timestamp window (default 300)")
    check.add_argument("--at", type=float, default=None, metavar="UNIX_TIME", help="judge freshness as of this time")
    check.set_defaults(func=check_callback)
    keys = commands.add_parser(
        "keys",
        help="every key the merchants' channels sign or verify with, and when each expires",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys.add_argument("--merchant", action="append", default=[], metavar="ID", help="only this merchant (repeatable)")
    keys.add_argument("--check", action="store_true", help="OK / WARN / FAIL per merchant and role, with the fix")
    keys.add_argument("--warn-days", type=int, default=30, metavar="N", help="WARN when a role lapses within N days")
    keys.add_argument("--json", action="store_true", help="one JSON object per key")
    keys.set_defaults(func=list_keys, needs_config=True)


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


def _unionpay_fields(args: argparse.Namespace, body: bytes) -> dict[str, str]:
    if args.root_cert is None or args.middle_cert is None:
        raise UsageError("UnionPay notifications need --root-cert and --middle-cert (UnionPay's chain)")
    roots = x509.load_pem_x509_certificates(args.root_cert.read_bytes())
    middles = x509.load_pem_x509_certificates(args.middle_cert.read_bytes())
    at = dt.datetime.fromtimestamp(args.at, dt.UTC) if args.at is not None else clock.utcnow()

    def certificate(pem: str) -> x509.Certificate:
        try:
            return unionpay_crypto.check_signing_certificate(
                pem, roots=roots, middles=middles, owners=[UNIONPAY_OWNER], at=at
            )
        except unionpay_crypto.UnionPaySignatureError as exc:
            raise NotificationRejected(exc.reason, exc.message) from None

    return open_unionpay_notification(body, certificate=certificate, mer_id=args.mer_id, at=at, max_age_s=26 * 3600)


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
        elif args.channel == "unionpay":
            result = {"fields": _unionpay_fields(args, body)}
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


async def _inventory(
    cfg: GatewayConfig, wanted: list[str], now: dt.datetime
) -> tuple[dict[str, list[KeyInfo]], dict[str, str], str | None]:
    """Each merchant's keys; the merchants whose channel cannot be built, with why; a note if the database
    (certificates fetched at run time) could not be read."""
    db = Database(cfg.database.url, pool_size=1)
    rows: dict[str, list[KeyInfo]] = {}
    broken: dict[str, str] = {}
    note = None
    try:
        merchants = list(cfg.merchants)
        try:
            merchants = list(Tenants.from_rows(await tenant_store.load(db)).merchants.values())
        except Exception as exc:  # no database (yet): the config's merchants
            note = f"database {db.dialect} not read ({type(exc).__name__}): the config's merchants only"
        for merchant in merchants:
            if wanted and merchant.id not in wanted:
                continue
            try:
                settings = factory.channel_config(merchant.channel, merchant.channel_settings())
                channel = factory.build_channel(settings, state=SqlChannelState(db, merchant.id))
            except (OSError, ValueError) as exc:
                broken[merchant.id] = f"{merchant.channel}: {exc}"
                continue
            try:
                await channel.load_trust()
            except Exception as exc:  # the database may be absent or not migrated: show what the config holds
                note = (
                    f"database {db.dialect} not read ({type(exc).__name__}): certificates fetched at run time omitted"
                )
            rows[merchant.id] = channel.key_inventory(now)
            await channel.aclose()
    finally:
        await db.close()
    return rows, broken, note


def _day(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d") if t is not None else "-"


def list_keys(args: argparse.Namespace) -> int:
    now = clock.utcnow()
    rows, broken, note = asyncio.run(_inventory(args.cfg, args.merchant, now))
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.check:
        findings = [
            inventory.Finding(inventory.Level.FAIL, m, why, "fix the merchant's settings") for m, why in broken.items()
        ]
        for merchant, infos in rows.items():
            findings += inventory.check(merchant, infos, now, warn=dt.timedelta(days=args.warn_days))
        for f in findings:
            print(f"{f.level.name:<5} {f.merchant} {f.what}" + (f"\n      fix: {f.fix}" if f.fix else ""))
        worst = max((f.level for f in findings), default=inventory.Level.OK)
        print(
            f"keys: {sum(f.level == inventory.Level.FAIL for f in findings)} FAIL, "
            f"{sum(f.level == inventory.Level.WARN for f in findings)} WARN"
        )
        return int(worst)
    for merchant, why in broken.items():
        print(f"{merchant}: cannot load its keys: {why}", file=sys.stderr)
    if args.json:
        for merchant, infos in rows.items():
            for i in infos:
                record = {
                    "merchant": merchant,
                    "channel": i.channel,
                    "role": i.role.value,
                    "id": i.id,
                    "serial": i.serial,
                    "status": i.status.value,
                    "not_after": i.not_after.isoformat() if i.not_after else None,
                    "valid_from": i.valid_from.isoformat() if i.valid_from else None,
                    "retire_after": i.retire_after.isoformat() if i.retire_after else None,
                    "used_for": i.used_for,
                }
                print(json.dumps(record, ensure_ascii=False))
        return 2 if broken else 0
    header = ("MERCHANT", "CHANNEL", "ROLE", "ID", "SERIAL", "STATUS", "EXPIRES", "FROM", "RETIRE", "USED FOR")
    table = [header]
    for merchant, infos in rows.items():
        for i in infos:
            table.append(
                (
                    merchant,
                    i.channel,
                    i.role.value,
                    i.id,
                    i.serial,
                    i.status.value,
                    _day(i.not_after),
                    _day(i.valid_from),
                    _day(i.retire_after),
                    i.used_for,
                )
            )
    widths = [max(len(r[c]) for r in table) for c in range(len(header) - 1)]
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 2 if broken else 0
