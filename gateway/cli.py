"""``his-gateway``: run the cloud gateway and operate it.

his-gateway serve -c gateway.toml              migrate, then serve the business API and channel callbacks
his-gateway migrate -c gateway.toml            bring the database schema up to date
his-gateway notifications resend ID -c …       deliver a notification again from the start of its schedule
his-gateway notifications list --app APP -c …  an app's recent (or undelivered) notifications
his-gateway orders show BUSINESS_ORDER_NO --hospital H -c …
his-gateway users add --username U --role clerk -c …   a finance console login (password: file, env or prompt)
his-gateway statements parse --channel unionpay FILE   a statement's rows, normalized, as JSON lines
his-gateway recon run --hospital H --date D -c …  reconcile one day (docs/RECONCILIATION.md)
his-gateway audit verify [--expect POS:HASH] -c …  check the audit log's hash chain
his-gateway channels check-callback …          (from the channels package)
his-gateway channels keys [--check] -c …       every merchant key and channel certificate, its expiry and use
his-gateway hospitals|apps|merchants add|list|show|update|disable|enable …   the tenants (gateway.tenants.cli)
his-gateway tenants import FILE -c …           the [[hospitals]] and [[merchants]] of a config-format file
his-gateway archive run|list|verify|remove|restore -c …   retention (gateway.retention.cli)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bridge import logs
from gateway import audit_cli
from gateway.channels import cli as channels_cli
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.console import cli as console_cli
from gateway.recon import cli as recon_cli
from gateway.representations import order_view, refund_view
from gateway.retention import cli as retention_cli
from gateway.runtime import serve
from gateway.store import audit, orders, outbox, refunds, registry
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from gateway.tenants import cli as tenants_cli

DEFAULT_CONFIG = Path("config/gateway.toml")


def _configure_logging(cfg: GatewayConfig) -> None:
    logs.configure(cfg.logging.level, cfg.logging.format == "json")


def _with_db(fn: Callable[[Any, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def go() -> int:
            cfg = args.cfg
            db = Database(cfg.database.url, pool_size=cfg.database.pool_size)
            try:
                return await fn(db, args)
            finally:
                await db.close()

        return asyncio.run(go())

    return run


def _serve(args: argparse.Namespace) -> int:
    asyncio.run(serve(args.cfg))
    return 0


async def _migrate(db: Any, args: argparse.Namespace) -> int:
    revision = await upgrade(db)
    await registry.sync_from_config(db, args.cfg)
    print(f"database at revision {revision} ({db.dialect})")
    return 0


async def _resend(db: Any, args: argparse.Namespace) -> int:
    row = await outbox.resend(db, args.id)
    if row is None:
        print(f"no notification {args.id}", file=sys.stderr)
        return 1
    async with db.write() as conn:
        await audit.record(conn, "cli", "notification.resend", f"notification:{args.id}", {"event": row.event_type})
    print(f"notification {row.id} ({row.event_type} {row.subject_key}) queued for delivery to {row.notify_url}")
    return 0


async def _list_notifications(db: Any, args: argparse.Namespace) -> int:
    rows = await outbox.for_app(db, args.app, undelivered=args.undelivered, after_id=args.after, limit=args.limit)
    for r in rows:
        print(f"{r.id}\t{r.event_type}\t{r.subject_key}\t{r.state}\tattempts={r.attempts}\t{r.last_error or ''}")
    return 0


async def _show_order(db: Any, args: argparse.Namespace) -> int:
    order = await orders.by_business_no(db, args.hospital, args.business_order_no)
    if order is None:
        print("no such order", file=sys.stderr)
        return 1
    rows = await refunds.for_order(db, order.id)
    print(
        json.dumps(
            {"order": order_view(order), "refunds": [refund_view(r, order) for r in rows]}, indent=2, ensure_ascii=False
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="his-gateway", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-c", "--config", type=Path, default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="migrate, then serve the business API and channel callbacks").set_defaults(
        func=_serve
    )
    commands.add_parser("migrate", help="bring the database schema up to date").set_defaults(func=_with_db(_migrate))
    notifications = commands.add_parser("notifications", help="notifications to business systems")
    nsub = notifications.add_subparsers(dest="notifications_command", required=True, metavar="ACTION")
    resend = nsub.add_parser("resend", help="deliver a notification again from the start of its retry schedule")
    resend.add_argument("id", type=int)
    resend.set_defaults(func=_with_db(_resend))
    listing = nsub.add_parser("list", help="an app's notifications, oldest first")
    listing.add_argument("--app", required=True)
    listing.add_argument("--undelivered", action="store_true")
    listing.add_argument("--after", type=int, default=0)
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(func=_with_db(_list_notifications))
    orders = commands.add_parser("orders", help="look at orders")
    osub = orders.add_subparsers(dest="orders_command", required=True, metavar="ACTION")
    show = osub.add_parser("show", help="one order and its refunds, as JSON")
    show.add_argument("business_order_no")
    show.add_argument("--hospital", required=True)
    show.set_defaults(func=_with_db(_show_order))
    channels_cli.register(commands)
    console_cli.register(commands)
    recon_cli.register(commands)
    tenants_cli.register(commands)
    retention_cli.register(commands)
    audit_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    if args.command in ("serve", "migrate", "notifications", "orders", "users") or getattr(args, "needs_config", False):
        try:
            args.cfg = load_config(args.config)
        except ConfigError as e:
            print(f"his-gateway: {e}", file=sys.stderr)
            return 2
        _configure_logging(args.cfg)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
