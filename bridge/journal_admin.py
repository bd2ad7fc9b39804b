"""Operator actions on the journal file (``his-bridge journal ...``), safe while the agent runs.

They write the SQLite file directly under its lock; the running agent's sweep picks the change up, and its
dispatcher re-reads an entry's state before every step, so an operator's decision always wins over a retry in
progress. Every action leaves a dated note on the entry saying who did what.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adapters.base import PermanentError
from bridge import catalog, clock
from bridge.journal import UNFINISHED, Entry, JournalError, State, list_entries, open_file


class AdminError(Exception):
    pass


def _stamp(action: str, note: str | None) -> str:
    who = getpass.getuser()
    when = clock.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"[{when} {who}] {action}" + (f": {note}" if note else "")


class JournalAdmin:
    def __init__(self, path: Path) -> None:
        try:
            self.conn = open_file(Path(path), create=False)
        except JournalError as e:
            raise AdminError(str(e)) from None

    def close(self) -> None:
        self.conn.close()

    def find(self, ref: str) -> Entry:
        """An entry by journal id (digits) or request id."""
        if ref.isdigit():
            row = self.conn.execute("SELECT * FROM entries WHERE seq = ?", (int(ref),)).fetchone()
        else:
            row = self.conn.execute("SELECT * FROM entries WHERE request_id = ?", (ref,)).fetchone()
        if row is None:
            raise AdminError(f"no journal entry {ref!r}")
        return Entry.from_row(row)

    def list(self, state: State | None, limit: int, before: int | None) -> list[Entry]:
        return list_entries(self.conn, state, limit=limit, before=before)

    def _set(self, entry: Entry, expect: tuple[State, ...], state: State, note: str, **cols: Any) -> Entry:
        sets = ["state = ?", "updated_at = ?", "note = ?"]
        args: list[Any] = [
            state.value,
            clock.now(),
            (entry.note + "\n" if entry.note else "") + note,
        ]
        for col, value in cols.items():
            sets.append(f"{col} = ?")
            args.append(value)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            cur = self.conn.execute(
                f"UPDATE entries SET {', '.join(sets)} WHERE seq = ? AND state IN ({','.join('?' * len(expect))})",
                (*args, entry.seq, *(s.value for s in expect)),
            )
        if cur.rowcount != 1:
            current = self.find(str(entry.seq))
            raise AdminError(
                f"entry {entry.seq} is {current.state.value}; expected one of {', '.join(s.value for s in expect)}"
            )
        return self.find(str(entry.seq))

    def retry(self, ref: str, note: str | None) -> Entry:
        """Give an entry a fresh set of attempts. If it may have reached the HIS, it goes back to ``unknown``
        so that the HIS is asked first; it is never blindly resent."""
        entry = self.find(ref)
        in_doubt = entry.state in (State.unknown, State.in_flight) or (entry.error or {}).get("kind") == "in_doubt"
        target = State.unknown if in_doubt else State.accepted
        return self._set(
            entry,
            (State.quarantined, State.failed, State.unknown, State.accepted),
            target,
            _stamp(f"retry ({target.value})", note),
            attempts=0,
            error=None,
        )

    def quarantine(self, ref: str, note: str | None) -> Entry:
        entry = self.find(ref)
        return self._set(entry, UNFINISHED, State.quarantined, _stamp("quarantine", note))

    def resolve(self, ref: str, outcome: str, note: str, result: dict[str, Any] | None) -> Entry:
        """Close an entry by hand after checking the HIS. ``done`` needs the result the HIS gave, in the
        operation's output shape, so that the platform can be told."""
        if not note:
            raise AdminError("resolve needs --note saying what was checked in the HIS")
        entry = self.find(ref)
        op = catalog.OPERATIONS[entry.operation]
        expect = (*UNFINISHED, State.quarantined)
        if outcome == "done":
            if result is None:
                raise AdminError(f"resolve --as done needs --result with {op.output.__name__} fields")
            try:
                clean = op.output.model_validate(result).model_dump(mode="json")
            except ValidationError as e:
                raise AdminError(f"--result does not fit {entry.operation}: {e}") from None
            return self._set(
                entry,
                expect,
                State.done,
                _stamp("resolved done", note),
                result=json.dumps(clean, ensure_ascii=False),
            )
        if outcome == "failed":
            error = PermanentError("resolved_by_operator", note).as_dict()
            return self._set(
                entry,
                expect,
                State.failed,
                _stamp("resolved failed", note),
                error=json.dumps(error, ensure_ascii=False),
            )
        raise AdminError("--as must be done or failed")


def entry_text(entry: Entry, *, full: bool = False) -> str:
    created = dt.datetime.fromtimestamp(entry.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    line = (
        f"{entry.seq:>8}  {entry.state.value:<11}  {entry.operation:<20}  {entry.business_key:<24}  "
        f"attempts={entry.attempts}  {created}Z  {entry.request_id}"
    )
    if not full:
        return line
    detail = {k: v for k, v in entry.public().items() if k not in ("journal_id",)}
    detail["params"] = entry.params
    return line + "\n" + json.dumps(detail, ensure_ascii=False, indent=2)
