"""``his-bridge egress``: what an operator reads of the outbound journal, safely beside a running agent.

Read-only (the file is opened with ``mode=ro``): the agent settles every request by itself, by asking the
gateway; an operator looks to answer a window's "where is my refund" or a HisBridgeEgressInDoubt alert.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

from bridge.egress.journal import EgressState, TerminalRequest


class EgressAdminError(Exception):
    pass


def _open(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise EgressAdminError(f"{path}: no outbound journal here (has the agent run with [intranet]?)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def listing(
    path: Path, *, state: EgressState | None = None, terminal: str | None = None, limit: int = 50
) -> list[TerminalRequest]:
    sql, args = "SELECT * FROM requests WHERE 1=1", []
    if state is not None:
        sql += " AND state = ?"
        args.append(state.value)
    if terminal is not None:
        sql += " AND terminal_id = ?"
        args.append(terminal)
    sql += " ORDER BY seq DESC LIMIT ?"
    args.append(limit)
    with contextlib.closing(_open(path)) as conn:
        return [TerminalRequest.from_row(r) for r in conn.execute(sql, args)]


def one(path: Path, terminal: str, request_id: str) -> TerminalRequest:
    with contextlib.closing(_open(path)) as conn:
        row = conn.execute(
            "SELECT * FROM requests WHERE terminal_id = ? AND request_id = ?", (terminal, request_id)
        ).fetchone()
    if row is None:
        raise EgressAdminError(f"no request {request_id!r} from terminal {terminal!r}")
    return TerminalRequest.from_row(row)


def _time(value: float | None) -> str:
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def line(r: TerminalRequest) -> str:
    status = (r.answer or {}).get("status", "-")
    return (
        f"{r.seq:>8}  {r.state.value:<10}  {status:<10}  {r.terminal_id:<12}  {r.operation:<12}  "
        f"{r.amount_fen:>10}  {_time(r.created_at)}  {r.request_id}"
    )


def detail(r: TerminalRequest) -> str:
    params = {k: ("***" if k == "auth_code" else v) for k, v in r.params.items()}
    shown: dict[str, Any] = {
        "seq": r.seq,
        "terminal": r.terminal_id,
        "request_id": r.request_id,
        "gateway_request_id": r.gateway_request_id,
        "operation": r.operation,
        "state": r.state.value,
        "attempts": r.attempts,
        "amount_fen": r.amount_fen,
        "day": r.day,
        "answer": r.answer,
        "error": r.error,
        "note": r.note,
        "created": _time(r.created_at),
        "last_sent": _time(r.sent_at),
        "next_attempt": _time(r.next_attempt_at),
        "forwarded": params,
    }
    return json.dumps(shown, ensure_ascii=False, indent=2)
