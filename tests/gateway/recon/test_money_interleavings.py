"""Property (issue 10): random interleavings over three days — payments at any time of day; HIS commits on time,
late, after midnight, never, or refused (and sometimes booked by the HIS anyway); partial refunds written back
on time, the next morning, or never; finance trying to pay money back (two people, through the console's
actions and the refund saga) at random moments; reconciliation runs of the days in random order, repeated —
end, after every day has been run and nothing waits any more, with exactly the injected discrepancies open,
and never with money returned to a payer while the HIS keeps the receipt unless an exception says so.

The gateway's database, the run code, the console's actions and the refund saga are the real ones (SQLite; a
few examples on PostgreSQL). The HIS's daily list and the channel's statements are rendered from the model's
ledgers (the statements in WeChat's real bill format), so that every timing can be chosen."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.channels.base import RefundRequest, RefundStatus, TradeState
from gateway.console import actions
from gateway.recon import exceptions as ex
from gateway.recon import run_reconciliation
from gateway.services import Services
from gateway.store import registry
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from gateway.store.tables import orders, refunds
from sandbox.channels import bills
from tests.support.console_rig import user
from tests.support.gateway_rig import HOSPITAL, MERCHANT, gateway_config, make_keys
from tests.support.memory_channel import MemoryChannel
from tests.support.recon_rig import PagedHis, add_order, add_refund, at

pytestmark = pytest.mark.system

DAYS = [dt.date(2026, 5, 1) + dt.timedelta(days=i) for i in range(3)]
MORNING_AFTER = DAYS[-1] + dt.timedelta(days=1)
"""The day after the last: what the HIS booked after the last midnight is on it."""
AGING = DAYS[-1] + dt.timedelta(days=4)
"""A later day run with nothing on it: by then every one-sided entry has stopped waiting."""
CLERK, APPROVER = user("clerk1", "clerk"), user("approver1", "approver")
COMMITS = (
    "on_time", "late_same_day", "after_midnight", "never", "refused", "refused_but_booked", "refused_booked_next_day"
)  # fmt: skip
REFUSED = ("refused", "refused_but_booked", "refused_booked_next_day")
WRITEBACKS = ("none", "on_time", "next_morning", "never")


@dataclass
class Payment:
    no: str
    day: int
    second: int
    amount: int
    commit: str
    refund: str
    refund_fen: int
    finance_tries: bool

    @property
    def paid_at(self) -> dt.datetime:
        return at(DAYS[self.day], "00:00:00") + dt.timedelta(seconds=self.second)


@st.composite
def payments(draw: Any) -> list[Payment]:
    out = []
    for i in range(draw(st.integers(min_value=1, max_value=9))):
        amount = draw(st.integers(min_value=200, max_value=500_000))
        commit = draw(st.sampled_from(COMMITS))
        refund = (
            draw(st.sampled_from(WRITEBACKS)) if commit in ("on_time", "late_same_day", "after_midnight") else "none"
        )
        out.append(
            Payment(
                no=f"P{i:02d}",
                day=draw(st.integers(min_value=0, max_value=len(DAYS) - 1)),
                second=draw(st.integers(min_value=0, max_value=86_399 - 3600)),
                amount=amount,
                commit=commit,
                refund=refund,
                refund_fen=draw(st.integers(min_value=1, max_value=amount)),
                finance_tries=draw(st.booleans()),
            )
        )
    return out


class LedgerChannel(MemoryChannel):
    """The in-memory channel whose trades and refunds also land on day statements (WeChat's bill format), at the
    model's times: payments when the payer paid, finance refunds at ``now``."""

    def __init__(self) -> None:
        super().__init__()
        self.now = at(DAYS[-1], "12:00:00")
        self.day_pays: dict[dt.date, list[dict[str, Any]]] = {}
        self.day_refunds: dict[dt.date, list[dict[str, Any]]] = {}

    def paid(self, p: Payment) -> None:
        self.trades[p.no] = {"state": TradeState.success, "amount": p.amount, "channel_trade_no": f"42{p.no}",
                             "paid_at": p.paid_at}  # fmt: skip
        self.day_pays.setdefault(p.paid_at.date(), []).append(
            {"trade_no": f"42{p.no}", "out_trade_no": p.no, "amount_fen": p.amount, "paid_at": p.paid_at.isoformat(),
             "appid": "wx1", "payer_id": "o1", "scene": "native", "description": "挂号费", "attach": None}
        )  # fmt: skip

    def refunded(self, out_trade_no: str, out_refund_no: str, fen: int, when: dt.datetime) -> None:
        self.day_refunds.setdefault(when.date(), []).append(
            {"trade_no": f"42{out_trade_no}", "out_trade_no": out_trade_no, "refund_no": f"50{out_refund_no}",
             "out_refund_no": out_refund_no, "amount_fen": fen, "paid_at": when.isoformat(),
             "created_at": when.isoformat(), "succeeded_at": when.isoformat(), "appid": "wx1", "payer_id": "o1",
             "scene": "native", "description": "挂号费", "attach": None}
        )  # fmt: skip

    async def refund(self, request: RefundRequest) -> RefundStatus:
        status = await super().refund(request)
        self.refunded(request.out_trade_no, request.out_refund_no, request.refund_fen, self.now)
        return status

    async def download_bill(self, day: dt.date) -> bytes:
        return bills.wechat_tradebill("1230000109", self.day_pays.get(day, []), self.day_refunds.get(day, []))


@dataclass
class World:
    db: Database
    svc: Services
    channel: LedgerChannel
    his: PagedHis
    expect: dict[str, str] = field(default_factory=dict)
    """Recon exceptions that must be open at the end: entry key → class."""
    returned: set[str] = field(default_factory=set)
    """Payments finance returned to the payer."""


async def build(world: World, plan: list[Payment]) -> None:
    for p in plan:
        world.channel.paid(p)
        his_state, status = ("pending", "paid") if p.commit == "never" else ("done", "completed")
        if p.commit in REFUSED:
            his_state, status = "rejected", "his_rejected"
        order_id = await add_order(world.db, p.no, p.amount, p.paid_at, status=status, his_state=his_state)
        his_at = {
            "on_time": p.paid_at + dt.timedelta(seconds=5),
            "late_same_day": p.paid_at + dt.timedelta(seconds=3000),
            "after_midnight": at(p.paid_at.date() + dt.timedelta(days=1), "00:40:00"),
            "refused_but_booked": p.paid_at + dt.timedelta(seconds=60),
            "refused_booked_next_day": at(p.paid_at.date() + dt.timedelta(days=1), "09:00:00"),
        }.get(p.commit)
        if his_at is not None:
            world.his.book(p.no, p.amount, his_at)
        if p.commit == "never":
            world.expect[f"pay:{p.no}"] = "over_collection"
        elif p.commit in ("refused_but_booked", "refused_booked_next_day"):
            world.expect[f"pay:{p.no}"] = "status_mismatch"  # the HIS booked a payment held back from it
        if p.refund != "none":
            rno = f"R{p.no}"
            refunded_at = p.paid_at + dt.timedelta(seconds=1800)
            world.channel.refunded(p.no, rno, p.refund_fen, refunded_at)
            await add_refund(world.db, order_id, rno, p.refund_fen, refunded_at)
            back = {
                "on_time": refunded_at + dt.timedelta(seconds=2),
                "next_morning": at(refunded_at.date() + dt.timedelta(days=1), "00:45:00"),
            }.get(p.refund)
            if back is not None:
                world.his.book_refund(p.no, rno, p.refund_fen, back)
            else:
                world.expect[f"refund:{rno}"] = "under_collection"


async def finance_acts(world: World, plan: list[Payment]) -> None:
    """Finance tries to return the money of every open exception about a payment it picks: a clerk proposes, an
    approver agrees. The rules decide what actually moves."""
    wanted = {f"pay:{p.no}" for p in plan if p.finance_tries}
    for row in await ex.list_exceptions(world.db, hospital=HOSPITAL, statuses=["open"], limit=1000):
        if row["entry_key"] not in wanted or not row["channel_fen"]:
            continue
        try:
            await actions.propose_refund(world.svc, CLERK, row["id"], int(row["channel_fen"]), "finance returns it")
            await actions.approve(world.svc, APPROVER, row["id"])
        except actions.ActionError:
            continue
        world.returned.add(row["out_trade_no"])


async def scenario(db_url: str, plan: list[Payment], order: list[int], finance_after: int, workdir: Path) -> None:
    cfg = gateway_config(workdir, make_keys(workdir / "keys"), db_url)
    db = Database(cfg.database.url)
    try:
        await upgrade(db)
        await registry.sync_from_config(db, cfg)
        channel = LedgerChannel()
        world = World(db, Services(cfg, db, {MERCHANT: channel}, {}), channel, PagedHis())
        await build(world, plan)
        run = dict(channels={MERCHANT: channel}, source=world.his)
        for i, day in enumerate([*[DAYS[d] for d in order], *DAYS, MORNING_AFTER, AGING]):
            await run_reconciliation(db, cfg, HOSPITAL, day, **run)
            if i == finance_after:
                await finance_acts(world, plan)
        await finance_acts(world, plan)
        for day in (*DAYS, MORNING_AFTER, AGING):  # after finance, every day once more
            await run_reconciliation(db, cfg, HOSPITAL, day, **run)

        # Finance could return only payments the HIS refused (nothing else may go back without the HIS).
        by_no = {p.no: p for p in plan}
        assert all(by_no[no].commit in REFUSED for no in world.returned), world.returned
        expected = dict(world.expect)
        for p in plan:
            refunded_in_full = p.no in world.returned
            if p.commit == "refused" and not refunded_in_full:
                expected[f"pay:{p.no}"] = "over_collection"
        rows = await ex.list_exceptions(db, hospital=HOSPITAL, source="recon", limit=1000)
        open_rows = {r["entry_key"]: r["class"] for r in rows if r["status"] in ("open", "proposed", "approved")}
        assert open_rows == expected, [(r["entry_key"], r["class"], r["status"], r["detail"], r["note"]) for r in rows]

        # Money back with the payer while the HIS keeps a receipt: only ever with an exception saying so.
        async with db.read() as conn:
            back = await conn.execute(
                sa.select(orders.c.out_trade_no).where(
                    sa.exists().where(refunds.c.order_id == orders.c.id, refunds.c.origin == "finance")
                )
            )
            for (no,) in back:
                his_has_it = any(
                    r["trade_no"] == no and r["kind"] != "refund" for rs in world.his.records.values() for r in rs
                )
                if his_has_it:
                    assert open_rows.get(f"pay:{no}") == "status_mismatch", no
    finally:
        await db.close()


def _order() -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=0, max_value=len(DAYS) - 1), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=payments(), order=_order(), finance_after=st.integers(min_value=0, max_value=8))
def test_interleavings_end_with_exactly_the_injected_discrepancies_sqlite(plan, order, finance_after):
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'gateway.sqlite3'}"
        asyncio.run(scenario(url, plan, order, finance_after, Path(tmp)))


@pytest.fixture(scope="module")
def pg_port(postgres_server) -> int:
    return postgres_server.port


async def _fresh_pg(port: int) -> str:
    name = f"gw_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{name}"


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=payments(), order=_order(), finance_after=st.integers(min_value=0, max_value=8))
def test_interleavings_end_with_exactly_the_injected_discrepancies_postgresql(pg_port, plan, order, finance_after):
    async def go() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            await scenario(await _fresh_pg(pg_port), plan, order, finance_after, Path(tmp))

    asyncio.run(go())
