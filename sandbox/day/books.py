"""The three ledgers of the day read back through the interfaces their owners give — the channel's trades and
refunds (the channel sandbox), the HIS's payments and refunds with every application of a write (the HIS
sandbox), the platform's orders and refunds (the gateway's business API) — and the exceptions finance sees
(the console's export), joined per order (per ``out_trade_no``) for the checks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sandbox.day.actors import HisOperator, HospitalApp, Payer
from sandbox.day.finance import ConsoleException

PAID_STATES = frozenset({"SUCCESS", "REFUND", "REVOKED"})
COMMITS = frozenset({"CommitRegistration", "CommitCharge", "CommitPrepay"})


@dataclass
class OrderBooks:
    """One payment as each ledger has it."""

    out_trade_no: str
    channel_trade: dict[str, Any] | None = None
    channel_refunds: list[dict[str, Any]] = field(default_factory=list)
    his_trades: list[dict[str, Any]] = field(default_factory=list)
    his_refunds: list[dict[str, Any]] = field(default_factory=list)
    his_commit_applications: int = 0
    order: dict[str, Any] | None = None
    refunds: list[dict[str, Any]] = field(default_factory=list)
    """The gateway's refunds of the order (business, finance and policy ones)."""
    exceptions: set[str] = field(default_factory=set)
    """What finance is shown about it: console classes and the order's and its refunds' exception kinds."""
    console: list[ConsoleException] = field(default_factory=list)

    @property
    def channel_paid(self) -> int:
        t = self.channel_trade
        return int(t["amount_fen"]) if t is not None and t.get("paid_at") and t["state"] in PAID_STATES else 0

    @property
    def channel_refunded(self) -> int:
        return sum(int(r["amount_fen"]) for r in self.channel_refunds if r["state"] == "SUCCESS")

    @property
    def his_paid(self) -> int:
        return sum(int(t["amount_fen"]) for t in self.his_trades)

    @property
    def his_refunded(self) -> int:
        return sum(int(r["amount_fen"]) for r in self.his_refunds if r.get("written_back_at"))

    @property
    def platform_paid(self) -> int:
        return int((self.order or {}).get("paid_fen") or 0)

    @property
    def platform_refunded(self) -> int:
        return int((self.order or {}).get("refunded_fen") or 0)

    def kept(self) -> tuple[int, int, int]:
        """What each ledger says the hospital keeps: channel, HIS, platform."""
        return (
            self.channel_paid - self.channel_refunded,
            self.his_paid - self.his_refunded,
            self.platform_paid - self.platform_refunded,
        )


@dataclass
class Books:
    orders: dict[str, OrderBooks]
    unknown_channel_refunds: list[dict[str, Any]]
    """Channel refunds of trades the platform has no order for."""
    console: list[ConsoleException]

    def by_refund(self) -> dict[str, str]:
        """out_refund_no → out_trade_no, from every ledger."""
        owners: dict[str, str] = {}
        for ob in self.orders.values():
            for r in ob.refunds:
                owners[r["out_refund_no"]] = ob.out_trade_no
            for r in ob.channel_refunds:
                owners[r["out_refund_no"]] = ob.out_trade_no
            for r in ob.his_refunds:
                owners[r["refund_no"]] = ob.out_trade_no
        return owners


async def _orders(app: HospitalApp) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    page = 1
    while True:
        status, answer = await app.call("GET", f"/v1/orders?page={page}&page_size=200")
        if status != 200:
            raise RuntimeError(f"GET /v1/orders answered {status}: {answer}")
        found.extend(answer["orders"])
        if len(found) >= int(answer["total"]) or not answer["orders"]:
            return found
        page += 1


async def read(
    app: HospitalApp, payer: Payer, his: HisOperator, console: list[ConsoleException], *, detail: set[str]
) -> Books:
    """Read every ledger. ``detail``: business order numbers whose refunds must be read (those with planned
    refunds); orders with refunds, exceptions or console rows are read in detail too."""
    trades, channel_refunds, his_books, applications, orders = await asyncio.gather(
        payer.trades(), payer.refunds(), his.ledger(), his.applications(), _orders(app)
    )
    books: dict[str, OrderBooks] = {}

    def of(out_trade_no: str) -> OrderBooks:
        return books.setdefault(out_trade_no, OrderBooks(out_trade_no))

    for trade in trades:
        of(trade["out_trade_no"]).channel_trade = trade
    for refund in channel_refunds:
        of(refund["out_trade_no"]).channel_refunds.append(refund)
    for trade in his_books["trades"]:
        of(trade["trade_no"]).his_trades.append(trade)
    for refund in his_books["refunds"]:
        of(refund["trade_no"]).his_refunds.append(refund)
    for application in applications:
        if application["operation"] in COMMITS and application["trade_no"]:
            of(application["trade_no"]).his_commit_applications += int(application["count"])
    for order in orders:
        of(order["out_trade_no"]).order = order

    flagged = {c.out_trade_no for c in console if c.out_trade_no}
    wanted = [
        o["business_order_no"]
        for o in orders
        if o["business_order_no"] in detail
        or o["refunded_fen"]
        or o["exception"]
        or o["out_trade_no"] in flagged
        or books[o["out_trade_no"]].channel_refunds
        or books[o["out_trade_no"]].his_refunds
    ]
    limit = asyncio.Semaphore(16)

    async def refunds_of(business_order_no: str) -> None:
        async with limit:
            status, answer = await app.call("GET", f"/v1/orders/{business_order_no}")
        if status != 200:
            raise RuntimeError(f"GET /v1/orders/{business_order_no} answered {status}: {answer}")
        ob = books[answer["order"]["out_trade_no"]]
        ob.order, ob.refunds = answer["order"], answer["refunds"]

    await asyncio.gather(*(refunds_of(no) for no in wanted))
    unknown = [r for r in channel_refunds if books[r["out_trade_no"]].order is None]
    result = Books(books, unknown, console)
    owners = result.by_refund()
    for ob in books.values():
        order = ob.order or {}
        if order.get("exception"):
            ob.exceptions.add(str(order["exception"]))
        for refund in ob.refunds:
            if refund.get("exception"):
                ob.exceptions.add(str(refund["exception"]))
    for row in console:
        out_trade_no = row.out_trade_no or owners.get(row.out_refund_no, "")
        if out_trade_no:
            of(out_trade_no).console.append(row)
            if row.cls != "cross_day" or row.status != "closed":
                of(out_trade_no).exceptions.add(row.cls)
    return result
