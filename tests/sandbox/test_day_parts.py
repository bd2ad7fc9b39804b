"""The parts of ``his-sandbox day`` that decide its verdict, each shown able to fail: the seeded plan, the checks
on the three ledgers (each invariant broken on purpose), and the black-holing proxy."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import pytest

from sandbox.day import checks, plan
from sandbox.day.books import Books, OrderBooks
from sandbox.day.faults import EXPECTED, FaultKind
from sandbox.day.finance import ConsoleException
from sandbox.day.proxy import BlackholeProxy

DAY = dt.date(2026, 3, 16)


def test_the_same_seed_plans_the_same_day_and_another_seed_another() -> None:
    first = plan.build(7, 300, plan.Mix(), DAY)
    assert first == plan.build(7, 300, plan.Mix(), DAY)
    assert first.orders != plan.build(8, 300, plan.Mix(), DAY).orders
    assert len(first.orders) == 300
    assert {f.kind for f in first.faults} == set(FaultKind)
    targets = [f.target for f in first.faults if f.target is not None]
    assert len(targets) == len(set(targets)), "two faults on one order could not be told apart"
    midnight = next(f for f in first.faults if f.kind is FaultKind.midnight_payment)
    assert first.orders[midnight.target or 0].pay_at == plan.at(DAY, 23, 59, 59.9)
    bills = {b["bill_no"] for b in first.fixtures["bills"]}
    assert all(set(o.bill_nos) <= bills for o in first.orders)


def test_a_long_day_spreads_rounds_of_faults_but_few_outages() -> None:
    long_day = plan.build(7, 3000, plan.Mix(), DAY)
    kinds = [f.kind for f in long_day.faults]
    assert kinds.count(FaultKind.notify_lost) == 10
    assert kinds.count(FaultKind.his_down) == plan.MAX_WINDOWS_PER_KIND
    assert kinds.count(FaultKind.midnight_payment) == 1


def test_a_mix_says_what_is_wrong_with_it() -> None:
    assert plan.Mix.parse("registration=10, cancel=0,alipay=50").registration == 10
    with pytest.raises(ValueError, match="NAME=NUMBER"):
        plan.Mix.parse("walk-ins=5")
    with pytest.raises(ValueError, match="percentage"):
        plan.Mix.parse("alipay=140")
    with pytest.raises(ValueError, match="at least one order kind"):
        plan.Mix.parse("registration=0,charge=0,prepay=0,codepay=0,cancel=0")


# --- the checks -------------------------------------------------------------------------------------------------

KINDS = frozenset({FaultKind.his_drop_reply, FaultKind.writeback_refused})


def day_plan() -> plan.Plan:
    return plan.build(5, 30, plan.Mix(), DAY, kinds=KINDS)


def clean_books(p: plan.Plan) -> Books:
    """The ledgers of a day in which every payment is booked once and every fault left what it should."""
    orders: dict[str, OrderBooks] = {}
    for o in p.orders:
        if not o.paid:
            continue
        ob = OrderBooks(f"P-{o.no}")
        ob.channel_trade = {"amount_fen": o.amount_fen, "paid_at": "2026-03-16T10:00:00+08:00", "state": "SUCCESS"}
        ob.his_trades = [{"trade_no": ob.out_trade_no, "amount_fen": o.amount_fen}]
        ob.order = {"business_order_no": o.no, "paid_fen": o.amount_fen, "refunded_fen": 0}
        orders[ob.out_trade_no] = ob
    writeback = next(f for f in p.faults if f.kind is FaultKind.writeback_refused)
    ob = orders[f"P-{p.orders[writeback.target or 0].no}"]
    ob.channel_refunds = [{"out_refund_no": "R1", "amount_fen": 100, "state": "SUCCESS"}]
    ob.his_refunds = [{"refund_no": "R1", "amount_fen": 100, "written_back_at": None}]
    ob.order = {**(ob.order or {}), "refunded_fen": 100}
    ob.exceptions = set(EXPECTED[FaultKind.writeback_refused].classes)
    ob.console = [row(ob.out_trade_no, "under_collection", "handled")]
    return Books(orders, [], list(ob.console))


def row(out_trade_no: str, cls: str, status: str) -> ConsoleException:
    return ConsoleException(1, DAY, cls, status, "pay", out_trade_no, "", "", "", "", "", "")


def verdict(p: plan.Plan, books: Books, fired: set[int] | None = None) -> checks.Verdict:
    return checks.check(p, books, [], {f.id for f in p.faults} if fired is None else fired)


def first_unfaulted(p: plan.Plan, books: Books) -> OrderBooks:
    targeted = {p.orders[f.target].no for f in p.faults if f.target is not None}
    return next(ob for ob in books.orders.values() if str((ob.order or {})["business_order_no"]) not in targeted)


def test_a_clean_day_passes() -> None:
    p = day_plan()
    v = verdict(p, clean_books(p))
    assert v.ok, v
    assert v.settled_offline and not v.faults_unaccounted


def test_a_payment_booked_twice_is_a_double_effect() -> None:
    p = day_plan()
    books = clean_books(p)
    ob = first_unfaulted(p, books)
    ob.his_trades.append(dict(ob.his_trades[0]))
    v = verdict(p, books)
    assert [f.subject for f in v.double] == [ob.order["business_order_no"]]  # type: ignore[index]
    assert v.unbalanced and not v.ok


def test_a_refund_paid_twice_is_a_double_effect_even_when_finance_was_shown_it() -> None:
    """The 20,000-order day: a refund paid at 23:59:50 and written back at 00:02 was offered to finance as an
    over-collection the next day, and finance paid it again."""
    p = day_plan()
    books = clean_books(p)
    ob = first_unfaulted(p, books)
    ob.his_refunds = [{"refund_no": "R1", "amount_fen": 300, "written_back_at": "2026-03-17 00:02:11"}]
    ob.channel_refunds = [
        {"out_refund_no": "R1", "amount_fen": 300, "state": "SUCCESS"},
        {"out_refund_no": "F1", "amount_fen": 300, "state": "SUCCESS"},
    ]
    ob.exceptions.add("over_collection")
    v = verdict(p, books)
    assert len(v.double) == 1 and "paid twice" in v.double[0].detail


def test_a_refund_the_his_applied_and_finance_paid_once_is_no_double_effect() -> None:
    p = day_plan()
    books = clean_books(p)
    ob = first_unfaulted(p, books)
    ob.his_refunds = [{"refund_no": "R1", "amount_fen": 300, "written_back_at": None}]
    ob.channel_refunds = [
        {"out_refund_no": "R1", "amount_fen": 300, "state": "CLOSED"},
        {"out_refund_no": "F1", "amount_fen": 300, "state": "SUCCESS"},
    ]
    ob.exceptions.add("over_collection")
    assert not verdict(p, books).double


def test_money_taken_and_never_booked_nor_shown_is_lost() -> None:
    p = day_plan()
    books = clean_books(p)
    first_unfaulted(p, books).his_trades.clear()
    v = verdict(p, books)
    assert len(v.lost) == 1 and "booked nothing" in v.lost[0].detail


def test_a_refund_applied_at_the_his_and_never_paid_is_lost_unless_shown() -> None:
    p = day_plan()
    books = clean_books(p)
    ob = first_unfaulted(p, books)
    ob.his_refunds = [{"refund_no": "R9", "amount_fen": 50, "written_back_at": None}]
    assert "never paid" in verdict(p, books).lost[0].detail
    ob.exceptions.add("refund_abnormal")
    assert not verdict(p, books).lost


def test_an_exception_no_fault_explains_is_false_and_a_missing_one_leaves_the_fault_unaccounted() -> None:
    p = day_plan()
    books = clean_books(p)
    first_unfaulted(p, books).exceptions.add("amount_mismatch")
    writeback = next(f for f in p.faults if f.kind is FaultKind.writeback_refused)
    books.orders[f"P-{p.orders[writeback.target or 0].no}"].exceptions.discard("status_mismatch")
    v = verdict(p, books)
    assert [f.detail for f in v.false_exceptions] == ["amount_mismatch"]
    assert [o.fault.kind for o in v.faults if not o.accounted] == [FaultKind.writeback_refused]


def test_a_fault_that_never_fired_is_unaccounted_and_an_open_exception_keeps_the_day_open() -> None:
    p = day_plan()
    books = clean_books(p)
    drop = next(f for f in p.faults if f.kind is FaultKind.his_drop_reply)
    v = verdict(p, books, fired={f.id for f in p.faults} - {drop.id})
    assert [(o.fault.id, o.found) for o in v.faults if not o.accounted] == [(drop.id, {"not injected"})]
    books.console[0] = row(books.console[0].out_trade_no, "under_collection", "open")
    books.orders[books.console[0].out_trade_no].console = [books.console[0]]
    assert len(verdict(p, books).left_open) == 2  # the row itself, and the order whose ledgers still disagree


# --- the partition ----------------------------------------------------------------------------------------------


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()


async def roundtrip(port: int, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    return reader, writer, await asyncio.wait_for(reader.readexactly(len(payload)), 2)


async def test_the_proxy_passes_bytes_black_holes_them_when_cut_and_resets_what_it_spoiled(echo: int) -> None:
    proxy = BlackholeProxy("127.0.0.1", echo)
    _, port = await proxy.start()
    try:
        reader, writer, answer = await roundtrip(port, b"hello")
        assert answer == b"hello"
        proxy.cut()
        writer.write(b"lost")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)  # nothing comes back while the network is cut
        new_reader, new_writer = await asyncio.open_connection("127.0.0.1", port)  # accepted, never answered
        new_writer.write(b"knock")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(new_reader.read(1), 0.3)
        proxy.heal()
        for spoiled in (reader, new_reader):
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(spoiled.readexactly(1), 2)
        assert proxy.reset_on_heal == 2 and proxy.dropped_bytes >= len(b"lost")
        _, fresh, answer = await roundtrip(port, b"again")
        assert answer == b"again"
        fresh.close()
    finally:
        await proxy.close()
