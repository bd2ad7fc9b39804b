"""``his-gateway statements …`` and ``his-gateway recon …``: reconciliation for operators.

statements parse --channel wechat|alipay|unionpay FILE   normalized rows as JSON lines (FILE may be gzip/zip; - = stdin)
statements fetch --hospital H --date D -c …     download, check and store the day's statements
recon run --hospital H --date D -c …            reconcile one day now (a new version), progress bar on a tty
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from typing import Any, TextIO

from gateway.channels.build import merchant_channel
from gateway.recon import run_reconciliation
from gateway.recon.normalize import StatementError, shanghai_today
from gateway.recon.statements import check, rows
from gateway.recon.statements.store import fetch
from gateway.store import tenants as tenant_store
from gateway.store.db import Database
from gateway.tenants.snapshot import Tenants


def _day(text: str) -> dt.date:
    if text == "yesterday":
        return shanghai_today() - dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not YYYY-MM-DD or 'yesterday'") from None


class ProgressBar:
    """One line on a terminal, redrawn in place; nothing at all when stderr is not a terminal."""

    WIDTH = 30

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._last = ""

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if total:
            filled = min(self.WIDTH, self.WIDTH * done // total)
            line = f"{stage:<10} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}"
        else:
            line = f"{stage:<10} {done}"
        if line != self._last:
            self.stream.write("\r\x1b[2K" + line)
            self.stream.flush()
            self._last = line

    def close(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _parse_statement(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()  # noqa: SIM115
    try:
        check(args.channel, data, merchant=args.merchant)  # a statement that does not add up prints no row
    except StatementError as exc:
        print(f"his-gateway: {exc}", file=sys.stderr)
        return 1
    out = sys.stdout
    for row in rows(args.channel, data, merchant=args.merchant):
        out.write(json.dumps(row.as_json(), ensure_ascii=False, separators=(",", ":")) + "\n")
    return 0


def _with_db(args: argparse.Namespace, fn: Any) -> int:
    async def go() -> int:
        db = Database(args.cfg.database.url, pool_size=args.cfg.database.pool_size)
        try:
            return int(await fn(db))
        finally:
            await db.close()

    return asyncio.run(go())


async def _tenants(db: Any, cfg: Any) -> Tenants:
    """The hospitals and merchants as the database holds them, with the config's blocks imported first (as
    ``serve`` does)."""
    await tenant_store.import_blocks(db, cfg.hospitals, cfg.merchants, actor="config", source="config")
    return Tenants.from_rows(await tenant_store.load(db))


def _fetch_statements(args: argparse.Namespace) -> int:
    async def go(db: Any) -> int:
        status = 0
        for m in (await _tenants(db, args.cfg)).merchants_of(args.hospital):
            channel = merchant_channel(m, db)
            try:
                got = await fetch(db, args.hospital, m.id, m.channel, channel, args.date)
                p = got.parsed
                print(
                    f"{m.id}\t{m.channel}\t{len(p.rows)} rows\tpay {p.pay_fen}\trefund {p.refund_fen}\tfee {p.fee_fen}"
                )
            except StatementError as exc:
                print(f"his-gateway: {exc}", file=sys.stderr)
                status = 1
            finally:
                await channel.aclose()
        return status

    return _with_db(args, go)


def _run(args: argparse.Namespace) -> int:
    async def go(db: Any) -> int:
        bar = ProgressBar()
        tenants = await _tenants(db, args.cfg)
        try:
            summary = await run_reconciliation(
                db, args.cfg, args.hospital, args.date, tenants=tenants, trigger="cli", progress=bar,
                build_channel=lambda m: merchant_channel(tenants.merchants[m], db),
            )  # fmt: skip
        except Exception as exc:
            bar.close()
            print(f"his-gateway: reconciliation of {args.hospital} {args.date} failed: {exc}", file=sys.stderr)
            return 1
        bar.close()
        if args.json:
            print(json.dumps(summary.as_json(), ensure_ascii=False))
            return 0
        c = summary.counts
        print(f"{summary.hospital} {summary.day} version {summary.version}: {c['matched']} matched")
        for cls in ("over_collection", "under_collection", "amount_mismatch", "status_mismatch", "duplicate"):
            if c.get(cls):
                print(f"  {cls}: {c[cls]}")
        if c.get("cross_day"):
            print(f"  cross_day (held): {c['cross_day']}")
        if c.get("cleared"):
            print(f"  cleared from suspense: {c['cleared']}")
        return 0

    return _with_db(args, go)


def register(commands: Any) -> None:
    st = commands.add_parser("statements", help="channel statements")
    ssub = st.add_subparsers(dest="statements_command", required=True, metavar="ACTION")
    parse = ssub.add_parser("parse", help="print a statement file's rows, normalized, as JSON lines")
    parse.add_argument("--channel", required=True, choices=("wechat", "alipay", "unionpay"))
    parse.add_argument("--merchant", help="merchant number to put on each row (default: from the file)")
    parse.add_argument("file", help="the statement as downloaded (gzip, zip) or its CSV; - for stdin")
    parse.set_defaults(func=_parse_statement)
    fetch = ssub.add_parser("fetch", help="download, check and store a hospital's statements of one day")
    fetch.add_argument("--hospital", required=True)
    fetch.add_argument("--date", required=True, type=_day)
    fetch.set_defaults(func=_fetch_statements, needs_config=True)

    recon = commands.add_parser("recon", help="reconciliation")
    rsub = recon.add_subparsers(dest="recon_command", required=True, metavar="ACTION")
    run = rsub.add_parser("run", help="reconcile one hospital's day now (a new version of it)")
    run.add_argument("--hospital", required=True)
    run.add_argument("--date", required=True, type=_day, help="YYYY-MM-DD (Asia/Shanghai) or 'yesterday'")
    run.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    run.set_defaults(func=_run, needs_config=True)
