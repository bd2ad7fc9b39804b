"""``his-gateway audit``: check the audit log's hash chain.

his-gateway audit verify [--expect POSITION:HASH] [--seal] -c gateway.toml

Exit 0 when the chain is intact, 1 when it breaks (the row and what is wrong are printed). Record the head
it prints (or the ``audit_sealed`` lines of the logs) somewhere the database's administrators cannot write,
and pass it back with ``--expect``: a chain rewritten from some row onwards is consistent in itself, but no
longer has that hash at that position.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any

from gateway.retention import archive as retention_archive
from gateway.store import audit
from gateway.store.db import Database
from gateway.store.migrate import upgrade

_ANCHOR = re.compile(r"([0-9]{1,18}):([0-9a-f]{64})")


def _anchor(value: str) -> tuple[int, str]:
    match = _ANCHOR.fullmatch(value.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError("give POSITION:HASH, as printed by verify (e.g. 1200:3f5c…, 64 hex)")
    return int(match.group(1)), match.group(2)


def _verify(args: argparse.Namespace) -> int:
    async def go() -> int:
        db = Database(args.cfg.database.url, pool_size=args.cfg.database.pool_size)
        try:
            await upgrade(db)
            if args.seal:
                await audit.seal_all(db)
            after = await retention_archive.audit_anchor(db)
            verdict = await audit.verify(db, anchor=args.expect, after=after)
        finally:
            await db.close()
        if after is not None:
            print(
                f"positions 1-{after[0]} are archived (verified, removed); the chain goes on from {after[0]}:{after[1]}"
            )
        head = f"head {verdict.head_seq}:{verdict.head_hash}"
        pending = f"; {verdict.unsealed} row(s) not sealed yet" if verdict.unsealed else ""
        if verdict.intact:
            print(f"audit log intact: {verdict.rows} sealed row(s), {head}{pending}")
            return 0
        print(f"audit log BROKEN at row {verdict.broken_at}: {verdict.problem}", file=sys.stderr)
        print(f"intact up to {head} ({verdict.rows} row(s) checked){pending}", file=sys.stderr)
        return 1

    return asyncio.run(go())


def register(commands: Any) -> None:
    audit = commands.add_parser("audit", help="the audit log's hash chain")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = sub.add_parser("verify", help="check every sealed row against the one before it")
    verify.add_argument("--expect", type=_anchor, metavar="POSITION:HASH", help="a head recorded earlier")
    verify.add_argument("--seal", action="store_true", help="seal rows written since the last round first")
    verify.set_defaults(func=_verify, needs_config=True)
