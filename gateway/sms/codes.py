"""Verification codes: drawn from the CSPRNG, one live code per (hospital, purpose, phone), checked against its
HMAC and never stored in the clear.

A code lives ``code.ttl_s`` (5 minutes) from when it was drawn. Asking again within that life sends the same
code once more (sealed in the row for that purpose) instead of drawing a new one, so a late first SMS is still
good; a code dies when verified, when it expires, or after ``code.max_attempts`` wrong guesses. The resend
interval is checked inside the transaction that claims the send, so two instances cannot both send.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.sms.clock import Clock
from gateway.sms.config import Policy
from gateway.sms.keys import SmsKeys
from gateway.store.db import Database
from gateway.store.sms_tables import sms_codes


def draw(length: int) -> str:
    return f"{secrets.randbelow(10**length):0{length}d}"


@dataclass(frozen=True)
class Subject:
    """Whose code: the phone only as its HMAC and its mask."""

    hospital_id: str
    purpose: str
    phone_hash: str
    phone_masked: str

    @property
    def binding(self) -> str:
        return f"{self.hospital_id}|{self.purpose}|{self.phone_hash}"


@dataclass(frozen=True)
class Settled:
    """A code whose fate became known: the conversion scopes it was sent under, and its outcome."""

    hospital_id: str
    purpose: str
    scopes: list[str]
    outcome: str
    was_failed: bool = False
    """A verification of a code already counted as failed: the failure is taken back."""
    identity_hash: str | None = None
    phone_hash: str = ""
    at: float | None = None
    """When the outcome happened (a failure: its grace ran out), for the counters' windows; None for now."""


@dataclass
class Issued:
    code: str | None
    settled: list[Settled] = field(default_factory=list)


def _scopes(row: Any) -> list[str]:
    return row.scopes.split() if row.scopes else []


class CodeBook:
    def __init__(self, db: Database, keys: SmsKeys, clock: Clock) -> None:
        self.db = db
        self.keys = keys
        self.clock = clock

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    def _where(self, s: Subject) -> sa.ColumnElement[bool]:
        c = sms_codes.c
        return sa.and_(c.hospital_id == s.hospital_id, c.purpose == s.purpose, c.phone_hash == s.phone_hash)

    def _fresh(
        self, s: Subject, code: str, now: dt.datetime, policy: Policy, scopes: Sequence[str], identity: str | None
    ) -> dict[str, Any]:
        return {
            "scopes": " ".join(scopes),
            "identity_hash": identity,
            "outcome": None,
            "outcome_at": None,
            "code_hash": self.keys.code_hash(s.binding, code),
            "code_sealed": self.keys.seal(s.binding, code),
            "attempts": 0,
            "sends": 1,
            "created_at": now,
            "last_sent_at": now,
            "expires_at": now + dt.timedelta(seconds=policy.code.ttl_s),
            "used_at": None,
        }

    @staticmethod
    def _live(row: Any, now: dt.datetime, policy: Policy) -> bool:
        return row.used_at is None and row.expires_at > now and row.attempts < policy.code.max_attempts

    async def too_soon(self, s: Subject, policy: Policy) -> bool:
        """A cheap look before any counter is spent; ``issue`` decides for good."""
        async with self.db.read() as conn:
            last = await conn.scalar(sa.select(sms_codes.c.last_sent_at).where(self._where(s)))
        return last is not None and last + dt.timedelta(seconds=policy.phone.resend_interval_s) > self._now()

    async def issue(
        self,
        s: Subject,
        policy: Policy,
        scopes: Sequence[str] = (),
        identity: str | None = None,
        grace_s: float = 120,
    ) -> Issued:
        """The code to send now — new, or the live one again — or None while the resend interval runs. A dead
        code replaced before it settled is settled here as failed."""
        now = self._now()
        code = draw(policy.code.length)
        insert = postgresql.insert if self.db.is_postgres else sqlite.insert
        async with self.db.write() as conn:
            created = await conn.scalar(
                insert(sms_codes)
                .values(
                    hospital_id=s.hospital_id,
                    purpose=s.purpose,
                    phone_hash=s.phone_hash,
                    phone_masked=s.phone_masked,
                    **self._fresh(s, code, now, policy, scopes, identity),
                )
                .on_conflict_do_nothing(index_elements=["hospital_id", "purpose", "phone_hash"])
                .returning(sms_codes.c.id)
            )
            if created is not None:
                return Issued(code)
            row = (await conn.execute(self.db.for_update(sa.select(sms_codes).where(self._where(s))))).one()
            if row.last_sent_at + dt.timedelta(seconds=policy.phone.resend_interval_s) > now:
                return Issued(None)
            update = sa.update(sms_codes).where(sms_codes.c.id == row.id)
            if self._live(row, now, policy):
                await conn.execute(update.values(last_sent_at=now, sends=sms_codes.c.sends + 1))
                return Issued(self.keys.unseal(s.binding, row.code_sealed))
            fresh = self._fresh(s, code, now, policy, scopes, identity)
            await conn.execute(update.values(phone_masked=s.phone_masked, **fresh))
            settled = []
            if row.outcome is None and row.used_at is None:
                at = min(now, row.created_at + dt.timedelta(seconds=grace_s)).timestamp()
                settled.append(
                    Settled(
                        row.hospital_id, row.purpose, _scopes(row), "failed", identity_hash=row.identity_hash, at=at
                    )
                )
            return Issued(code, settled)

    async def verify(self, s: Subject, code: str, policy: Policy) -> Settled | None:
        """The settled code, once, for the live code; None for every failure alike: no code, a dead code, a wrong
        guess."""
        now = self._now()
        expected = self.keys.code_hash(s.binding, code)
        async with self.db.write() as conn:
            row = (await conn.execute(self.db.for_update(sa.select(sms_codes).where(self._where(s))))).one_or_none()
            live = row is not None and self._live(row, now, policy)
            stored = row.code_hash if live else secrets.token_hex(32)
            ok = hmac.compare_digest(stored, expected) and live
            if row is None or not live:
                return None
            update = sa.update(sms_codes).where(sms_codes.c.id == row.id)
            if not ok:
                await conn.execute(update.values(attempts=sms_codes.c.attempts + 1))
                return None
            await conn.execute(update.values(used_at=now, outcome="verified", outcome_at=now))
            return Settled(
                row.hospital_id,
                row.purpose,
                _scopes(row),
                "verified",
                was_failed=row.outcome == "failed",
                identity_hash=row.identity_hash,
                phone_hash=row.phone_hash,
            )

    async def settle_due(self, grace_s: float, limit: int = 500) -> list[Settled]:
        """Settle as failed the codes sent more than ``grace_s`` ago and not verified; each once, whichever
        instance gets there first."""
        cutoff = self._now() - dt.timedelta(seconds=grace_s)
        c = sms_codes.c
        async with self.db.write() as conn:
            due = (
                (
                    await conn.execute(
                        sa.select(c.id).where(c.outcome.is_(None), c.created_at <= cutoff).order_by(c.id).limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            if not due:
                return []
            rows = await conn.execute(
                sa.update(sms_codes)
                .where(c.id.in_(due), c.outcome.is_(None))
                .values(outcome="failed", outcome_at=self._now())
                .returning(c.hospital_id, c.purpose, c.scopes, c.identity_hash, c.created_at)
            )
            return [
                Settled(
                    r.hospital_id,
                    r.purpose,
                    _scopes(r),
                    "failed",
                    identity_hash=r.identity_hash,
                    at=(r.created_at + dt.timedelta(seconds=grace_s)).timestamp(),
                )
                for r in rows
            ]

    async def prune(self, keep_s: float = 86400) -> int:
        """Forget codes that died more than ``keep_s`` ago (the resend interval and caps look no further back)."""
        cutoff = self._now() - dt.timedelta(seconds=keep_s)
        async with self.db.write() as conn:
            return (await conn.execute(sa.delete(sms_codes).where(sms_codes.c.expires_at < cutoff))).rowcount
