"""Any record of the three ledgers, not only those behind an exception: what the HIS's daily detail, the
gateway's own rows and the channel's statements say of one payment or refund number.

The platform's record says which day to look at (paid, refunded or created); the day after is read too,
since a side that books late books the next morning. The HIS side comes from the kept daily detail
(``his_detail``) and the channel side from the kept statements, both as delivered, so what finance sees is what
reconciliation weighed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from gateway.model import local_day
from gateway.recon import evidence, platform_side
from gateway.store.db import Database


@dataclass
class Ledgers:
    number: str
    days: list[dt.date]
    his: list[dict[str, Any]] = field(default_factory=list)
    platform: list[dict[str, Any]] = field(default_factory=list)
    channel: list[dict[str, Any]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.his or self.platform or self.channel)


def _days_of(record: dict[str, Any]) -> set[dt.date]:
    out = set()
    for name in ("paid_at", "refunded_at", "created_at"):
        value = record.get(name)
        if value:
            out.add(local_day(dt.datetime.fromisoformat(value) if isinstance(value, str) else value))
    return out


async def lookup(db: Database, hospital: str, number: str, day: dt.date | None = None) -> Ledgers:
    """The three ledgers' records of a payment (``out_trade_no``) or refund (``out_refund_no``) number."""
    number = number.strip()
    keys = {f"pay:{number}", f"refund:{number}"}
    platform = [record for _k, _a, _t, _f, record in await platform_side.lookup(db, hospital, keys)]
    days = {day} if day is not None else set()
    for record in platform:
        days |= _days_of(record)
    days |= {d + dt.timedelta(days=1) for d in list(days)}
    found = Ledgers(number, sorted(days), platform=platform)
    for d in found.days:
        for items in (await evidence.backfill(db, hospital, keys, [d])).values():
            for ob in items:
                side = found.his if ob.side == "his" else found.channel
                side.append({**(ob.record or {}), "ledger_day": d.isoformat()})
    return found
