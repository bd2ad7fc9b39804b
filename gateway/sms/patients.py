"""Is this number a patient's? Asked of the hospital's HIS through its bridge agent (``patient.query``), and of
the gateway's own memory of numbers that verified a code at this hospital (``sms_trust``).

Answers are cached in the shared counters — on file for ``known_patients.cache_s``, not on file for
``miss_cache_s`` — so that a number asked about again, on any instance, does not reach the HIS again, and HIS
look-ups per hospital are capped per minute: a pump of random numbers cannot turn into a flood of queries on
the HIS. A look-up that cannot be made (no bridge, the agent down, the cap reached) is ``unchecked``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.his import HisLink, HisUnavailable
from gateway.services import log
from gateway.sms.clock import Clock
from gateway.sms.config import KnownPatientsPolicy
from gateway.sms.limits_store import Counters, Window
from gateway.store.db import Database
from gateway.store.sms_tables import sms_trust

OnFile = Literal["on_file", "not_on_file", "unchecked"]


class PatientDirectory:
    def __init__(self, his_for: Callable[[str], HisLink], counters: Counters, db: Database, clock: Clock) -> None:
        self.his_for = his_for
        self.counters = counters
        self.db = db
        self.clock = clock

    async def verified_before(self, hospital_id: str, kind: str, subject_hash: str, days: int) -> bool:
        if days <= 0:
            return False
        since = dt.datetime.fromtimestamp(self.clock() - days * 86400, dt.UTC)
        t = sms_trust.c
        async with self.db.read() as conn:
            found = await conn.scalar(
                sa.select(sa.literal(1)).where(
                    t.hospital_id == hospital_id,
                    t.kind == kind,
                    t.subject_hash == subject_hash,
                    t.last_verified_at >= since,
                )
            )
        return found is not None

    async def remember(self, hospital_id: str, kind: str, subject_hash: str) -> None:
        """Record that this phone or identity verified a code here."""
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        t = sms_trust
        insert = postgresql.insert if self.db.is_postgres else sqlite.insert
        stmt = insert(t).values(
            hospital_id=hospital_id, kind=kind, subject_hash=subject_hash, first_verified_at=now, last_verified_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.hospital_id, t.c.kind, t.c.subject_hash],
            set_={"last_verified_at": now, "verified": t.c.verified + 1},
        )
        async with self.db.write() as conn:
            await conn.execute(stmt)

    async def forget_older_than(self, days: int) -> int:
        cutoff = dt.datetime.fromtimestamp(self.clock() - days * 86400, dt.UTC)
        async with self.db.write() as conn:
            return (await conn.execute(sa.delete(sms_trust).where(sms_trust.c.last_verified_at < cutoff))).rowcount

    async def on_file(
        self, hospital_id: str, phone: str, phone_hash: str, card_no: str | None, policy: KnownPatientsPolicy
    ) -> OnFile:
        """Whether ``phone`` is the number the HIS has on file — for the card ``card_no`` when given, else for
        any patient."""
        card = hashlib.sha256(card_no.encode()).hexdigest()[:16] if card_no else "-"
        name = f"known/{hospital_id}/{phone_hash[:32]}/{card}"
        yes, no = await self.counters.peek([Window(f"{name}/yes", max(policy.cache_s, 1)),
                                            Window(f"{name}/no", max(policy.miss_cache_s, 1))])  # fmt: skip
        if yes:
            return "on_file"
        if no:
            return "not_on_file"
        (lookups,) = await self.counters.hit([Window(f"known-lookups/{hospital_id}", 60)])
        if lookups > policy.lookups_per_minute:
            log.warning("sms_his_lookups_capped", hospital=hospital_id)
            return "unchecked"
        params = {"card_no": card_no} if card_no else {"phone": phone}
        try:
            answer = await self.his_for(hospital_id).read("patient.query", params)
        except HisUnavailable as e:
            log.warning("sms_his_lookup_failed", hospital=hospital_id, error=str(e))
            return "unchecked"
        if not answer.done:
            log.warning("sms_his_lookup_failed", hospital=hospital_id, status=answer.status, error=answer.error)
            return "unchecked"
        result = answer.result
        found = bool(result.get("found")) and (card_no is None or _same_number(result.get("phone"), phone))
        if found and policy.cache_s:
            await self.counters.hit([Window(f"{name}/yes", policy.cache_s)])
        elif not found and policy.miss_cache_s:
            await self.counters.hit([Window(f"{name}/no", policy.miss_cache_s)])
        return "on_file" if found else "not_on_file"


def _same_number(on_file: object, phone: str) -> bool:
    if not isinstance(on_file, str):
        return False
    digits = "".join(ch for ch in on_file if ch.isdigit())
    return digits[-11:] == phone
