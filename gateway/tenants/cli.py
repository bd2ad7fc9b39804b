"""``his-gateway hospitals|apps|merchants|tenants``: the platform's tenants, managed in the database.

his-gateway hospitals add H001 --name 示例医院 [--refund-policy finance] [--recon-at 10:00] [--bridge-url URL …]
his-gateway hospitals update H001 [--name …] [--bridge-url …] [--no-bridge] [--read-cache patient.query=60]
his-gateway hospitals list|show H001 [--json]
his-gateway hospitals disable|enable H001
his-gateway apps add kiosk-1 --hospital H001 --public-key kiosk-1.pub [--notify-url URL] [--allow orders,refunds]
his-gateway apps update kiosk-1 --public-key new.pub --overlap 7d      rotate: both keys work for 7 days
his-gateway apps update kiosk-1 [--notify-url URL | --no-notify-url] [--allow …]
his-gateway apps retire-key kiosk-1 KEY [--at WHEN]
his-gateway apps list [--hospital H001] | show kiosk-1 [--json]
his-gateway apps disable|enable kiosk-1
his-gateway merchants add wx-h001 --hospital H001 --channel wechat --settings wx-h001.toml
his-gateway merchants update wx-h001 --settings wx-h001.toml
his-gateway merchants list|show wx-h001 [--json] | disable|enable wx-h001
his-gateway tenants import FILE                  the [[hospitals]] and [[merchants]] of a config-format file
his-gateway tenants version                      the tenants' change counter (every instance follows it)

Files named on the command line (keys, certificates, settings) resolve against the current folder and are
stored as absolute paths: every instance must find them at the same path. Secrets are never stored: merchant
settings name them (``apiv3_key = { env = "WX_APIV3_KEY" }``, ``private_key_file = …``). Unless ``--no-check``,
an agent link or a merchant is built once here (its files read, its secrets resolved) before it is saved.
Every change is audited as ``cli:<user>`` and reaches running instances without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import os
import re
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from gateway.channels import factory
from gateway.config import (
    AppOperation,
    BridgeLink,
    ConfigError,
    HospitalConfig,
    MerchantConfig,
    load_tenant_blocks,
    resolve_files,
)
from gateway.his import BridgeHis
from gateway.model import HisCommit, RefundPolicy, utcnow
from gateway.store import tenants as store
from gateway.store.db import Database
from gateway.store.migrate import upgrade

OPERATIONS = get_args(AppOperation)
HOST_PATTERN = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$"
READ_CACHE_OPS = ("patient.query", "bills.unpaid")
_DURATION = re.compile(r"^([0-9]{1,5})([smhd])$")


class CliError(Exception):
    pass


def actor() -> str:
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"cli:{user}"[:64]


def parse_when(text: str) -> dt.datetime:
    """``now``, or an ISO 8601 time with its UTC offset."""
    if text == "now":
        return utcnow()
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'now' or an ISO time (2026-12-20T00:00:00+08:00)") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs its UTC offset (+08:00)")
    return value


def parse_duration(text: str) -> dt.timedelta:
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 12h or 7d")
    n, unit = int(match.group(1)), match.group(2)
    return dt.timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: n})


def parse_operations(text: str) -> tuple[str, ...]:
    ops = tuple(o.strip() for o in text.split(",") if o.strip())
    unknown = [o for o in ops if o not in OPERATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown operation(s) {', '.join(unknown)}; known: {', '.join(OPERATIONS)}")
    return ops


def parse_host(text: str) -> str:
    if not re.match(HOST_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name (pay.example.cn, *.example.cn) or address")
    return text


def parse_cache(text: str) -> tuple[str, int]:
    op, sep, seconds = text.partition("=")
    if not sep or op not in READ_CACHE_OPS or not seconds.isdigit() or int(seconds) > 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: give OPERATION=SECONDS, {' or '.join(READ_CACHE_OPS)}, 0-3600")
    return op, int(seconds)


def _abs(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _validation(e: ValidationError, what: str) -> CliError:
    problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
    return CliError(f"{what}: {problems}")


# --- hospitals ---------------------------------------------------------------------------------------------

BRIDGE_FILES = ("ca", "client_cert", "client_key", "signing_key", "bridge_public_key")
BRIDGE_FIELDS = ("url", *BRIDGE_FILES, "signing_key_id", "bridge_key_id", "timeout_s", "retries")


async def _bridge(args: argparse.Namespace, current: dict[str, Any] | None) -> dict[str, Any] | None:
    if args.no_bridge:
        return None
    given = {f: getattr(args, f"bridge_{f}") for f in BRIDGE_FIELDS if getattr(args, f"bridge_{f}") is not None}
    if not given:
        return current
    merged = {**(current or {}), **{k: str(_abs(v)) if k in BRIDGE_FILES else v for k, v in given.items()}}
    try:
        link = BridgeLink.model_validate(merged)
    except ValidationError as e:
        raise _validation(e, "agent link (--bridge-*)") from None
    if not args.no_check:
        try:
            built = BridgeHis.from_config(link)
        except Exception as e:
            raise CliError(f"agent link: {e} (--no-check saves it anyway, for files only other hosts have)") from None
        await built.close()
    return link.model_dump(mode="json")


async def _hospital_spec(args: argparse.Namespace, current: store.HospitalRow | None) -> HospitalConfig:
    cache = dict(current.read_cache) if current else {}
    for op, seconds in args.read_cache or ():
        cache[op] = seconds
    data = {
        "id": args.id,
        "name": args.name if args.name is not None else (current.name if current else args.id),
        "refund_policy": args.refund_policy or (current.refund_policy if current else RefundPolicy.finance.value),
        "recon_at": (args.recon_at or None) if args.recon_at is not None else (current.recon_at if current else None),
        "bridge": await _bridge(args, current.bridge if current else None),
        "enabled": current.enabled if current else True,
        "read_cache": cache,
        "his_commit": args.his_commit or (current.his_commit if current else HisCommit.gateway.value),
    }
    try:
        return HospitalConfig.model_validate(data)
    except ValidationError as e:
        raise _validation(e, f"hospital {args.id}") from None


def _hospital_json(row: store.HospitalRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "enabled": row.enabled,
        "refund_policy": row.refund_policy,
        "recon_at": row.recon_at,
        "bridge": row.bridge,
        "read_cache": row.read_cache,
        "his_commit": row.his_commit,
        "source": row.source,
        "updated_at": row.updated_at.isoformat(),
    }


async def _hospitals(db: Database, args: argparse.Namespace) -> int:
    cmd = args.hospitals_command
    if cmd == "list":
        rows = (await store.load(db)).hospitals.values()
        return _print_rows(args, [_hospital_json(r) for r in rows], ("id", "enabled", "name", "source"))
    if cmd == "show":
        row = await store.get_hospital(db, args.id)
        if row is None:
            raise CliError(f"no hospital {args.id!r}")
        return _print_one(args, _hospital_json(row))
    if cmd in ("disable", "enable"):
        outcome = await store.set_enabled(db, "hospital", args.id, cmd == "enable", actor=actor(), source="cli")
        print(f"hospital {args.id} {cmd}d" if outcome != "unchanged" else f"hospital {args.id} was already {cmd}d")
        return 0
    current = await store.get_hospital(db, args.id) if cmd == "update" else None
    if cmd == "update" and current is None:
        raise CliError(f"no hospital {args.id!r}")
    spec = await _hospital_spec(args, current)
    outcome = await store.put_hospital(db, spec, actor=actor(), source="cli", must_exist=cmd == "update")
    print(f"hospital {args.id} {outcome}")
    return 0


# --- apps --------------------------------------------------------------------------------------------------


def _key_status(key: store.AppKey, now: dt.datetime) -> str:
    if key.valid_at(now):
        return "valid" + (f" until {key.retire_at.isoformat()}" if key.retire_at else "")
    if key.valid_from is not None and key.valid_from > now:
        return f"valid from {key.valid_from.isoformat()}"
    return f"retired {key.retire_at.isoformat() if key.retire_at else ''}".strip()


def _app_json(row: store.AppRow) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": row.id,
        "hospital": row.hospital_id,
        "enabled": row.enabled,
        "notify_url": row.notify_url,
        "notify_hosts": list(row.notify_hosts),
        "operations": sorted(row.allowed),
        "kind": row.kind,
        "his_commit": row.his_commit,
        "client_cert_cn": row.client_cert_cn,
        "keys": [
            {
                "name": k.name,
                "fingerprint": k.fingerprint,
                "added_at": k.added_at.isoformat(),
                "valid_from": k.valid_from.isoformat() if k.valid_from else None,
                "retire_at": k.retire_at.isoformat() if k.retire_at else None,
                "status": _key_status(k, now),
            }
            for k in row.keys
        ],
        "source": row.source,
        "updated_at": row.updated_at.isoformat(),
    }


def _read_key(path: str) -> str:
    try:
        return _abs(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"public key {path}: {e.strerror or e}") from None


async def _apps(db: Database, args: argparse.Namespace) -> int:
    cmd = args.apps_command
    if cmd == "list":
        rows = [r for r in (await store.load(db)).apps.values() if args.hospital in (None, r.hospital_id)]
        return _print_rows(args, [_app_json(r) for r in rows], ("id", "hospital", "enabled", "notify_url", "source"))
    if cmd == "show":
        row = await store.get_app(db, args.id)
        if row is None:
            raise CliError(f"no app {args.id!r}")
        return _print_one(args, _app_json(row))
    if cmd in ("disable", "enable"):
        outcome = await store.set_enabled(db, "app", args.id, cmd == "enable", actor=actor(), source="cli")
        print(f"app {args.id} {cmd}d" if outcome != "unchanged" else f"app {args.id} was already {cmd}d")
        return 0
    if cmd == "retire-key":
        await store.retire_app_key(db, args.id, args.key, at=args.at, actor=actor(), source="cli")
        print(f"app {args.id}: key {args.key} retires at {args.at.isoformat()}")
        return 0
    if cmd == "add":
        spec = store.AppSpec(
            args.id, args.hospital, args.notify_url, True, args.allow, tuple(args.notify_host or ()),
            args.kind or "app", args.his_commit or None, args.client_cert_cn or None,
        )  # fmt: skip
        outcome = await store.put_app(
            db, spec, actor=actor(), source="cli", public_key_pem=_read_key(args.public_key), must_exist=False
        )
        print(f"app {args.id} {outcome}")
        return 0
    current = await store.get_app(db, args.id)
    if current is None:
        raise CliError(f"no app {args.id!r}")
    notify_url = None if args.no_notify_url else (args.notify_url or current.notify_url)
    operations = args.allow if args.allow is not None else current.operations
    hosts = tuple(args.notify_host) if args.notify_host is not None else current.notify_hosts
    spec = store.AppSpec(
        current.id, current.hospital_id, notify_url, current.enabled, operations, hosts, args.kind or current.kind,
        (args.his_commit or None) if args.his_commit is not None else current.his_commit,
        (args.client_cert_cn or None) if args.client_cert_cn is not None else current.client_cert_cn,
    )  # fmt: skip
    pem = _read_key(args.public_key) if args.public_key is not None else None
    if pem is not None and store.fingerprint(store.normalize_public_key(pem)) in {k.fingerprint for k in current.keys}:
        print(f"app {args.id} already has that key")
        pem = None
    elif pem is not None and args.retire_old_at is None and args.overlap is None:
        raise CliError("a new key needs --overlap DURATION or --retire-old-at WHEN (how long the old one works)")
    outcome = await store.put_app(db, spec, actor=actor(), source="cli", must_exist=True)
    if outcome != "unchanged" or args.public_key is None:
        print(f"app {args.id} {outcome}")
    if pem is not None:
        retire = args.retire_old_at or (utcnow() + args.overlap)
        await store.add_app_key(
            db, args.id, pem, retire_old_at=retire, valid_from=args.valid_from, actor=actor(), source="cli"
        )
        print(f"app {args.id}: new key added; the previous key works until {retire.isoformat()}")
    return 0


# --- merchants ---------------------------------------------------------------------------------------------


def _read_settings(path: str) -> dict[str, Any]:
    file = _abs(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"settings {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise CliError(f"settings {path}: not valid {'JSON' if file.suffix == '.json' else 'TOML'}: {e}") from None
    for key in ("id", "channel", "hospital", "enabled"):
        data.pop(key, None)
    return resolve_files(data, file.parent)


def _merchant_json(row: store.MerchantRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "channel": row.channel,
        "hospital": row.hospital_id,
        "enabled": row.enabled,
        "settings": row.settings,
        "source": row.source,
        "updated_at": row.updated_at.isoformat(),
    }


async def _merchants(db: Database, args: argparse.Namespace) -> int:
    cmd = args.merchants_command
    if cmd == "list":
        rows = (await store.load(db)).merchants.values()
        return _print_rows(args, [_merchant_json(r) for r in rows], ("id", "channel", "hospital", "enabled", "source"))
    if cmd == "show":
        row = await store.get_merchant(db, args.id)
        if row is None:
            raise CliError(f"no merchant {args.id!r}")
        return _print_one(args, _merchant_json(row))
    if cmd in ("disable", "enable"):
        outcome = await store.set_enabled(db, "merchant", args.id, cmd == "enable", actor=actor(), source="cli")
        print(f"merchant {args.id} {cmd}d" if outcome != "unchanged" else f"merchant {args.id} was already {cmd}d")
        return 0
    current = await store.get_merchant(db, args.id) if cmd == "update" else None
    if cmd == "update" and current is None:
        raise CliError(f"no merchant {args.id!r}")
    settings = _read_settings(args.settings) if args.settings else (current.settings if current else {})
    data = {
        **settings,
        "id": args.id,
        "channel": current.channel if current else args.channel,
        "hospital": current.hospital_id if current else args.hospital,
        "enabled": current.enabled if current else True,
    }
    try:
        merchant = MerchantConfig.model_validate(data)
        store.check_merchant_settings(merchant.channel, merchant.channel_settings())
    except ValidationError as e:
        raise _validation(e, f"merchant {args.id}") from None
    if not args.no_check:
        await _build_once(merchant)
    outcome = await store.put_merchant(db, merchant, actor=actor(), source="cli", must_exist=cmd == "update")
    print(f"merchant {args.id} {outcome}")
    return 0


async def _build_once(merchant: MerchantConfig) -> None:
    """Build the merchant's channel once (key files read, secrets resolved), so a typo fails here, not at the
    first payment."""
    try:
        channel = factory.build_channel(factory.channel_config(merchant.channel, merchant.channel_settings()))
    except Exception as e:
        raise CliError(
            f"merchant {merchant.id}: its channel cannot be built here: {e} "
            "(--no-check saves it anyway, for files or variables only the gateway hosts have)"
        ) from None
    await channel.aclose()


# --- tenants -----------------------------------------------------------------------------------------------


async def _tenants(db: Database, args: argparse.Namespace) -> int:
    if args.tenants_command == "version":
        print(await store.read_version(db))
        return 0
    try:
        blocks = load_tenant_blocks(args.file)
    except ConfigError as e:
        raise CliError(str(e)) from None
    report = await store.import_blocks(db, blocks.hospitals, blocks.merchants, actor=actor(), source="import")
    for name, outcome in report.outcomes.items():
        if outcome != "unchanged":
            print(f"{name}\t{outcome}")
    print(f"imported {args.file}: {report.summary()}")
    return 0


# --- output and wiring -------------------------------------------------------------------------------------


def _print_rows(args: argparse.Namespace, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> int:
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for row in rows:
        print("\t".join("" if row.get(c) is None else str(row.get(c)) for c in columns))
    return 0


def _print_one(args: argparse.Namespace, row: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(row, ensure_ascii=False, indent=2))
        return 0
    for key, value in row.items():
        if key == "keys":
            for k in value:
                print(f"key {k['name']}: {k['status']} (added {k['added_at']})")
            continue
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False)
        print(f"{key}: {'' if value is None else value}")
    return 0


def _runner(
    fn: Callable[[Database, argparse.Namespace], Awaitable[int]], what: str
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def go() -> int:
            db = Database(args.cfg.database.url, pool_size=2)
            try:
                await upgrade(db)
                return await fn(db, args)
            finally:
                await db.close()

        try:
            return asyncio.run(go())
        except (CliError, store.TenantError) as e:
            print(f"his-gateway {what}: {e}", file=sys.stderr)
            return 1

    return run


def _bridge_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the hospital's agent (bridge) link")
    group.add_argument("--bridge-url", help="the agent's API, https://10.1.2.3:8443")
    group.add_argument("--bridge-ca", help="the platform CA that signed the agent's server certificate")
    group.add_argument("--bridge-client-cert", help="the gateway's client certificate for this agent")
    group.add_argument("--bridge-client-key")
    group.add_argument("--bridge-signing-key", help="the platform's signing key (private, PEM)")
    group.add_argument("--bridge-signing-key-id", help="its key id as the agent knows it (default platform)")
    group.add_argument("--bridge-agent-key-id", dest="bridge_bridge_key_id", help="the agent's key id")
    group.add_argument("--bridge-agent-public-key", dest="bridge_bridge_public_key", help="the agent's public key")
    group.add_argument("--bridge-timeout", dest="bridge_timeout_s", type=float)
    group.add_argument("--bridge-retries", type=int)
    group.add_argument("--no-bridge", action="store_true", help="remove the agent link")


def register(commands: Any) -> None:
    hospitals = commands.add_parser("hospitals", help="the platform's hospitals and their agent links")
    hsub = hospitals.add_subparsers(dest="hospitals_command", required=True, metavar="ACTION")
    for action in ("add", "update"):
        p = hsub.add_parser(action, help=f"{action} a hospital")
        p.add_argument("id")
        p.add_argument("--name", required=action == "add")
        p.add_argument("--refund-policy", choices=[p.value for p in RefundPolicy])
        p.add_argument("--recon-at", help="HH:MM Asia/Shanghai (empty: the platform's time)")
        p.add_argument("--read-cache", type=parse_cache, action="append", metavar="OPERATION=SECONDS")
        p.add_argument("--his-commit", choices=[c.value for c in HisCommit], help="who tells the HIS after a payment")
        p.add_argument("--no-check", action="store_true", help="save an agent link without loading its files")
        _bridge_options(p)
    _list_show(hsub, "hospital")
    hospitals.set_defaults(func=_runner(_hospitals, "hospitals"), needs_config=True)

    apps = commands.add_parser("apps", help="the hospitals' apps: keys, notify URLs, allowed operations")
    asub = apps.add_subparsers(dest="apps_command", required=True, metavar="ACTION")
    add = asub.add_parser("add", help="add an app")
    add.add_argument("id")
    add.add_argument("--hospital", required=True)
    add.add_argument("--public-key", required=True, help="the app's public key (PEM, Ed25519 or RSA ≥ 2048)")
    add.add_argument("--notify-url")
    add.add_argument("--notify-host", action="append", type=parse_host, help="another host notify URLs may name")
    add.add_argument("--allow", type=parse_operations, help=f"comma-separated, of: {', '.join(OPERATIONS)}")
    _agent_options(add)
    upd = asub.add_parser("update", help="change an app; --public-key rotates its key with an overlap")
    upd.add_argument("id")
    upd.add_argument("--notify-url")
    upd.add_argument("--no-notify-url", action="store_true")
    upd.add_argument("--notify-host", action="append", type=parse_host, help="replaces the app's other hosts")
    upd.add_argument("--allow", type=parse_operations)
    _agent_options(upd)
    upd.add_argument("--public-key", help="a new key: both work until the old one retires")
    upd.add_argument("--overlap", type=parse_duration, help="how long the old key keeps working (7d)")
    upd.add_argument("--retire-old-at", type=parse_when, help="when the old key stops working (ISO, with offset)")
    upd.add_argument("--valid-from", type=parse_when, help="the new key works from then (default now)")
    retire = asub.add_parser("retire-key", help="retire one of an app's keys")
    retire.add_argument("id")
    retire.add_argument("key", help="the key's name (his-gateway apps show APP)")
    retire.add_argument("--at", type=parse_when, default="now")
    _list_show(asub, "app", hospital_filter=True)
    apps.set_defaults(func=_runner(_apps, "apps"), needs_config=True)

    merchants = commands.add_parser("merchants", help="the channel merchants and their settings")
    msub = merchants.add_subparsers(dest="merchants_command", required=True, metavar="ACTION")
    madd = msub.add_parser("add", help="add a merchant")
    madd.add_argument("id")
    madd.add_argument("--hospital", required=True)
    madd.add_argument("--channel", required=True, choices=("wechat", "alipay", "unionpay"))
    madd.add_argument("--settings", required=True, help="the channel's settings, TOML or JSON (docs/CHANNELS.md)")
    madd.add_argument("--no-check", action="store_true", help="save without building the channel here")
    mupd = msub.add_parser("update", help="replace a merchant's settings")
    mupd.add_argument("id")
    mupd.add_argument("--settings", required=True)
    mupd.add_argument("--no-check", action="store_true")
    _list_show(msub, "merchant")
    merchants.set_defaults(func=_runner(_merchants, "merchants"), needs_config=True)

    tenants = commands.add_parser("tenants", help="import tenants from a config-format file; the change counter")
    tsub = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    imp = tsub.add_parser("import", help="add or update the file's hospitals, apps and merchants (idempotent)")
    imp.add_argument("file", type=Path)
    tsub.add_parser("version", help="print the tenants' version")
    tenants.set_defaults(func=_runner(_tenants, "tenants"), needs_config=True)


def _agent_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("app", "agent"), help="agent: a hospital's agent forwarding its terminals")
    parser.add_argument(
        "--his-commit", choices=["", *(c.value for c in HisCommit)], help="who tells the HIS ('' = the hospital's)"
    )
    parser.add_argument("--client-cert-cn", help="accepted only over mutual TLS with this client CN ('' = any)")


def _list_show(sub: Any, kind: str, *, hospital_filter: bool = False) -> None:
    listing = sub.add_parser("list", help=f"every {kind}")
    listing.add_argument("--json", action="store_true")
    if hospital_filter:
        listing.add_argument("--hospital")
    show = sub.add_parser("show", help=f"one {kind}")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    for action in ("disable", "enable"):
        sub.add_parser(action, help=f"{action} a {kind}").add_argument("id")
