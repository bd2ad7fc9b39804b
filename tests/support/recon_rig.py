"""The three ledgers of a hospital's days, written by hand for reconciliation tests: a WeChat Pay channel that
serves real-format trade bills of its own little ledger, a HIS that answers ``recon.fetch`` a few records a
page, and the gateway's orders and refunds inserted as the sagas leave them."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import sqlalchemy as sa

from gateway.channels.base import ChannelError
from gateway.model import utcnow
from gateway.recon.normalize import SHANGHAI
from gateway.store.db import Database
from gateway.store.tables import orders, refunds
from sandbox.channels import bills
from tests.support.gateway_rig import APP_ID, HOSPITAL, MERCHANT


def at(day: dt.date, hms: str) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.fromisoformat(hms), SHANGHAI)


def _trade_no(out_trade_no: str) -> str:
    return "42" + hashlib.sha1(out_trade_no.encode()).hexdigest()[:16]


class BillChannel:
    """Serves a WeChat trade bill rendered from a little ledger, per day."""

    def __init__(self) -> None:
        self.pays: dict[dt.date, list[dict[str, Any]]] = {}
        self.refunds: dict[dt.date, list[dict[str, Any]]] = {}
        self.tamper = False

    def pay(self, out_trade_no: str, fen: int, when: dt.datetime) -> None:
        self.pays.setdefault(when.date(), []).append(
            {
                "trade_no": _trade_no(out_trade_no),
                "out_trade_no": out_trade_no,
                "amount_fen": fen,
                "paid_at": when.isoformat(),
                "appid": "wx1",
                "payer_id": "o1",
                "scene": "native",
                "description": "挂号费",
                "attach": None,
            }
        )

    def refund(self, out_trade_no: str, out_refund_no: str, fen: int, when: dt.datetime) -> None:
        self.refunds.setdefault(when.date(), []).append(
            {
                "trade_no": _trade_no(out_trade_no),
                "out_trade_no": out_trade_no,
                "refund_no": "50" + hashlib.sha1(out_refund_no.encode()).hexdigest()[:16],
                "out_refund_no": out_refund_no,
                "amount_fen": fen,
                "paid_at": when.isoformat(),
                "created_at": when.isoformat(),
                "succeeded_at": when.isoformat(),
                "appid": "wx1",
                "payer_id": "o1",
                "scene": "native",
                "description": "挂号费",
                "attach": None,
            }
        )

    async def download_bill(self, day: dt.date) -> bytes:
        if day not in self.pays and day not in self.refunds:
            raise ChannelError("NO_STATEMENT_EXIST", "no bill")
        bill = bills.wechat_tradebill("1230000109", self.pays.get(day, []), self.refunds.get(day, []))
        if self.tamper:
            bill = bill.replace(b"`1.00,", b"`1.01,", 1)  # one row's 应结订单金额, after the hash
        return bill


class PagedHis:
    """A HIS that answers ``recon.fetch`` two records a page."""

    def __init__(self) -> None:
        self.records: dict[dt.date, list[dict[str, Any]]] = {}
        self.calls = 0

    def book(self, trade_no: str, fen: int, when: dt.datetime, kind: str = "prepay") -> None:
        self.records.setdefault(when.date(), []).append(
            {"trade_no": trade_no, "kind": kind, "receipt_no": f"RC{trade_no}", "amount_fen": fen,
             "channel": "wechat", "time": when.replace(tzinfo=None).isoformat()}
        )  # fmt: skip

    def book_refund(self, trade_no: str, refund_no: str, fen: int, when: dt.datetime) -> None:
        self.records.setdefault(when.date(), []).append(
            {"trade_no": trade_no, "kind": "refund", "refund_no": refund_no, "receipt_no": f"TF{refund_no}",
             "amount_fen": fen, "channel": "wechat", "time": when.replace(tzinfo=None).isoformat()}
        )  # fmt: skip

    def forget(self, number: str) -> None:
        """The HIS loses its record of a payment or refund (a HIS bug, or a refund application undone)."""
        for records in self.records.values():
            records[:] = [r for r in records if (r["refund_no"] if r["kind"] == "refund" else r["trade_no"]) != number]

    async def fetch_page(self, day: dt.date, page: int, page_size: int) -> dict[str, Any]:
        self.calls += 1
        rows = self.records.get(day, [])
        size = min(page_size, 2)
        chunk = rows[(page - 1) * size : page * size]
        return {"records": chunk, "total": len(rows), "has_more": page * size < len(rows)}


async def add_order(
    db: Database,
    out_trade_no: str,
    fen: int,
    paid_at: dt.datetime,
    *,
    status: str = "completed",
    his_state: str = "done",
) -> int:
    now = utcnow()
    async with db.write() as conn:
        return int(
            (
                await conn.execute(
                    sa.insert(orders)
                    .values(
                        hospital_id=HOSPITAL, app_id=APP_ID, merchant_id=MERCHANT, channel="wechat",
                        business_order_no=f"B-{out_trade_no}", out_trade_no=out_trade_no, request_digest="x" * 64,
                        business_type="prepay", scene="native", subject="押金", amount_fen=fen, his_params={},
                        status=status, paid_fen=fen, paid_at=paid_at, his_state=his_state, expires_at=now,
                        created_at=now, updated_at=now,
                    )
                    .returning(orders.c.id)
                )
            ).scalar_one()
        )  # fmt: skip


async def add_refund(
    db: Database, order_id: int, out_refund_no: str, fen: int, refunded_at: dt.datetime, *, state: str = "completed"
) -> None:
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            sa.insert(refunds).values(
                order_id=order_id, hospital_id=HOSPITAL, channel="wechat", business_refund_no=f"BR-{out_refund_no}",
                out_refund_no=out_refund_no, amount_fen=fen, origin="business", state=state, his_refundable_fen=fen,
                his_refund_id=f"HR-{out_refund_no}", refunded_at=refunded_at, created_at=now, updated_at=now,
            )
        )  # fmt: skip
        await conn.execute(
            sa.update(orders).where(orders.c.id == order_id).values(refunded_fen=orders.c.refunded_fen + fen)
        )


async def paid_everywhere(
    db: Database, channel: BillChannel, his: PagedHis, no: str, fen: int, when: dt.datetime,
    his_when: dt.datetime | None = None,
) -> int:  # fmt: skip
    channel.pay(no, fen, when)
    order_id = await add_order(db, no, fen, when)
    his.book(no, fen, his_when or when)
    return order_id
