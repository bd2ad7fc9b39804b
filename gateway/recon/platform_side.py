"""The platform side of a day: the gateway's own orders and refunds, read in key order in batches.

An order counts on the day it was paid (``paid_at``), a refund on the day the money went back
(``refunded_at``). A payment the gateway holds back from the HIS (``his_state`` rejected or held) and a refund
of one are marked ``NO_HIS``: the HIS is not expected to know them. A payment the caller recorded in the HIS
itself (``his_state`` caller) is expected there all the same, and so is a refund the HIS made at its window —
under the HIS's own refund number, which ``window_refund_keys`` translates to ours. A refund whose HIS
application was undone (``cancelled``) is ``CANCELLED``. ``lookup`` fetches the current records of keys the
other sides have but the day's platform set lacks (an order still paying, one paid on another day), for their
state and display.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable
from typing import Any

import sqlalchemy as sa

from gateway.model import HIS_CLEAR, PAID_ORDER, HisState, RefundOrigin, RefundState
from gateway.recon.engine import CANCELLED, NO_HIS, SETTLED, UNSETTLED
from gateway.store.db import Database
from gateway.store.tables import orders, refunds

BATCH = 2000
SETTLED_REFUND = (RefundState.succeeded.value, RefundState.completed.value)
_PAID = tuple(s.value for s in PAID_ORDER)
_HELD_BACK = tuple(s.value for s in HIS_CLEAR)

ORDER_COLUMNS = (
    orders.c.id,
    orders.c.hospital_id,
    orders.c.merchant_id,
    orders.c.channel,
    orders.c.business_order_no,
    orders.c.out_trade_no,
    orders.c.channel_trade_no,
    orders.c.business_type,
    orders.c.amount_fen,
    orders.c.paid_fen,
    orders.c.refunded_fen,
    orders.c.status,
    orders.c.his_state,
    orders.c.his_receipt_no,
    orders.c.paid_at,
    orders.c.origin,
    orders.c.terminal_id,
)
REFUND_COLUMNS = (
    refunds.c.id,
    refunds.c.hospital_id,
    refunds.c.channel,
    refunds.c.business_refund_no,
    refunds.c.out_refund_no,
    refunds.c.channel_refund_no,
    refunds.c.amount_fen,
    refunds.c.origin,
    refunds.c.state,
    refunds.c.his_receipt_no,
    refunds.c.refunded_at,
    refunds.c.terminal_id,
    refunds.c.his_refund_id,
    orders.c.out_trade_no,
    orders.c.merchant_id,
    orders.c.channel_trade_no,
    orders.c.his_state.label("order_his_state"),
)


def _json(row: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row._mapping.items()}


def order_entry(row: Any) -> tuple[str, int, dt.datetime | None, int, dict[str, Any]]:
    flag = UNSETTLED
    if row.status in _PAID or (row.his_state == HisState.held and row.paid_fen is not None):
        flag = NO_HIS if row.his_state in _HELD_BACK else SETTLED
    amount = row.paid_fen if row.paid_fen is not None else row.amount_fen
    return f"pay:{row.out_trade_no}", int(amount), row.paid_at, flag, {"kind": "order", **_json(row)}


def refund_entry(row: Any) -> tuple[str, int, dt.datetime | None, int, dict[str, Any]]:
    window = row.origin == RefundOrigin.window.value
    if row.state == RefundState.cancelled.value:
        flag = CANCELLED
    elif row.state not in SETTLED_REFUND:
        flag = UNSETTLED
    else:
        his_knows = window or row.order_his_state in (HisState.done.value, HisState.caller.value)
        flag = SETTLED if his_knows else NO_HIS
    return f"refund:{row.out_refund_no}", int(row.amount_fen), row.refunded_at, flag, {"kind": "refund", **_json(row)}


async def day_entries(
    db: Database, hospital: str, start: dt.datetime, end: dt.datetime
) -> AsyncIterator[tuple[str, int, dt.datetime | None, int, dict[str, Any]]]:
    """The day's paid orders and settled refunds, in id order, a batch per read transaction."""
    o = orders.c
    after = 0
    while True:
        stmt = (
            sa.select(*ORDER_COLUMNS)
            .where(o.hospital_id == hospital, o.paid_at >= start, o.paid_at < end, o.id > after)
            .order_by(o.id)
            .limit(BATCH)
        )
        async with db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        for row in rows:
            yield order_entry(row)
        if len(rows) < BATCH:
            break
        after = rows[-1].id
    r = refunds.c
    after = 0
    while True:
        stmt = (
            sa.select(*REFUND_COLUMNS)
            .join(orders, orders.c.id == r.order_id)
            .where(r.hospital_id == hospital, r.refunded_at >= start, r.refunded_at < end, r.id > after)
            .order_by(r.id)
            .limit(BATCH)
        )
        async with db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        for row in rows:
            yield refund_entry(row)
        if len(rows) < BATCH:
            break
        after = rows[-1].id


async def lookup(
    db: Database, hospital: str, keys: Iterable[str]
) -> list[tuple[str, int, dt.datetime | None, int, dict[str, Any]]]:
    """The platform's records for these entry keys, whatever their day or state."""
    pays = [k[4:] for k in keys if k.startswith("pay:")]
    refs = [k[7:] for k in keys if k.startswith("refund:")]
    out = []
    async with db.read() as conn:
        for i in range(0, len(pays), 500):
            chunk = pays[i : i + 500]
            stmt = sa.select(*ORDER_COLUMNS).where(orders.c.hospital_id == hospital, orders.c.out_trade_no.in_(chunk))
            out += [order_entry(r) for r in await conn.execute(stmt)]
        for i in range(0, len(refs), 500):
            chunk = refs[i : i + 500]
            stmt = (
                sa.select(*REFUND_COLUMNS)
                .join(orders, orders.c.id == refunds.c.order_id)
                .where(refunds.c.hospital_id == hospital, refunds.c.out_refund_no.in_(chunk))
            )
            out += [refund_entry(r) for r in await conn.execute(stmt)]
    return out


async def window_refund_keys(db: Database, hospital: str, his_refund_nos: Iterable[str]) -> dict[str, str]:
    """The HIS records a window refund (窗口退费) under its own refund number, made before ours existed: the
    entry keys those numbers stand for."""
    nos = list(dict.fromkeys(his_refund_nos))
    out: dict[str, str] = {}
    r = refunds.c
    async with db.read() as conn:
        for i in range(0, len(nos), 500):
            stmt = sa.select(r.his_refund_id, r.out_refund_no).where(
                r.hospital_id == hospital, r.origin == RefundOrigin.window.value, r.his_refund_id.in_(nos[i : i + 500])
            )
            for row in await conn.execute(stmt):
                out[f"refund:{row.his_refund_id}"] = f"refund:{row.out_refund_no}"
    return out


async def his_keys_of(db: Database, hospital: str, keys: Iterable[str]) -> dict[str, str]:
    """The other way round: for the window refunds among ``keys`` (ours), the key the HIS lists them under →
    ours."""
    nos = [k[7:] for k in keys if k.startswith("refund:")]
    out: dict[str, str] = {}
    r = refunds.c
    async with db.read() as conn:
        for i in range(0, len(nos), 500):
            stmt = sa.select(r.his_refund_id, r.out_refund_no).where(
                r.hospital_id == hospital,
                r.origin == RefundOrigin.window.value,
                r.out_refund_no.in_(nos[i : i + 500]),
                r.his_refund_id.is_not(None),
            )
            for row in await conn.execute(stmt):
                out[f"refund:{row.his_refund_id}"] = f"refund:{row.out_refund_no}"
    return out
