"""``his-gateway archive``: retention by hand.

his-gateway archive run [--kind K …] [--days N] [--keep-rows]   each kind's policy ([retention] days): archive,
                                                                 verify, remove
his-gateway archive list [--kind K] [--json]
his-gateway archive verify ID        the file against its record and manifest (and the database, rows still in it)
his-gateway archive remove ID        a verified archive's rows out of the database
his-gateway archive restore ID       a removed archive's rows back into the database

Kinds: orders, callbacks, notifications, audit, recon (docs/OPERATIONS.md, "Retention"). Files go to
``[retention] directory``; every instance that runs the schedule must see the same one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.retention import archive as archives
from gateway.retention.kinds import KINDS
from gateway.store.db import Database
from gateway.store.migrate import upgrade


def _line(a: archives.Archive) -> str:
    tables = ", ".join(f"{name} {t['rows']}" for name, t in a.manifest.get("tables", {}).items())
    note = f"  ({a.error})" if a.error else ""
    return f"{a.id}\t{a.kind}\t{a.state}\tbefore {a.cutoff.date()}\t{a.row_count} rows: {tables}\t{a.path}{note}"


def _json(a: archives.Archive) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "state": a.state,
        "cutoff": a.cutoff.isoformat(),
        "path": str(a.path),
        "sha256": a.sha256,
        "size": a.size,
        "rows": a.row_count,
        "manifest": a.manifest,
        "error": a.error,
    }


async def _go(args: argparse.Namespace) -> int:
    cfg = args.cfg
    db = Database(cfg.database.url, pool_size=2)
    try:
        await upgrade(db)
        command = args.archive_command
        if command == "list":
            rows = await archives.listing(db, args.kind)
            if args.json:
                print(json.dumps([_json(a) for a in rows], ensure_ascii=False, indent=2))
            for a in [] if args.json else rows:
                print(_line(a))
            return 0
        if command == "run":
            kinds = args.kind or list(cfg.retention.days)
            if not kinds:
                print("no retention policy: set [retention] days, or give --kind and --days", file=sys.stderr)
                return 1
            status = 0
            for kind in kinds:
                days = args.days or cfg.retention.days.get(kind)
                if days is None:
                    print(f"{kind}: no policy in [retention] days; give --days", file=sys.stderr)
                    status = 1
                    continue
                try:
                    outcome = await archives.run_policy(
                        db, kind, days, cfg.retention.directory, remove_rows=not args.keep_rows
                    )
                except archives.ArchiveError as e:
                    print(f"{kind}: {e}", file=sys.stderr)
                    status = 1
                    continue
                print(f"{kind}: {outcome.note}" + (f"\n  {_line(outcome.archive)}" if outcome.archive else ""))
            return status
        action = {"verify": archives.verify, "remove": archives.remove, "restore": archives.restore}[command]
        print(_line(await action(db, args.id)))
        return 0
    finally:
        await db.close()


def _run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_go(args))
    except archives.ArchiveError as e:
        print(f"his-gateway archive: {e}", file=sys.stderr)
        return 1


def register(commands: Any) -> None:
    parser = commands.add_parser("archive", help="retention: archive old rows to verified files, restore them")
    sub = parser.add_subparsers(dest="archive_command", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="each kind's policy: archive, verify, remove")
    run.add_argument("--kind", action="append", choices=list(KINDS), help="only this kind (repeatable)")
    run.add_argument("--days", type=int, help=f"keep this many days (≥ {archives.MIN_DAYS}) instead of the policy")
    run.add_argument("--keep-rows", action="store_true", help="archive and verify, but leave the rows in place")
    listing = sub.add_parser("list", help="the archives and their state")
    listing.add_argument("--kind", choices=list(KINDS))
    listing.add_argument("--json", action="store_true")
    for action, text in (
        ("verify", "check the file (and the database, while its rows are in it)"),
        ("remove", "remove a verified archive's rows from the database"),
        ("restore", "put a removed archive's rows back"),
    ):
        sub.add_parser(action, help=text).add_argument("id", type=int)
    parser.set_defaults(func=_run, needs_config=True)
