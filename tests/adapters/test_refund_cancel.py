"""``refund.cancel`` and the refunds of ``recon.fetch``, through every shipped profile against its real peer: the
sandbox HIS over SOAP (two profiles) and HL7 v2 over MLLP, and the sandbox HIS's procedures in PostgreSQL and
MariaDB over ODBC. What the HIS gave back is read from its own tables, as the hospital's DBA would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.base import Adapter, PermanentError
from adapters.profile import load_profile
from bridge import catalog
from sandbox.cli import SandboxHis, start_sandbox_his
from sandbox.his.state import SHANGHAI
from tests.support.db_fixtures import SandboxDb

REPO = Path(__file__).resolve().parents[2]
PROFILES = {
    "sandbox-soap": "sandbox-soap.toml",
    "soap-asmx-xml": "soap-asmx-xml.toml",
    "hl7": "hl7-v24-gb18030.toml",
    "postgresql": "dbproc-postgresql.toml",
    "mariadb": "dbproc-mariadb-dispatcher.toml",
}
SHIFT_BACK_A_DAY = {
    "sqlite": "UPDATE refunds SET applied_at = datetime(applied_at, '-1 day') WHERE refund_no = ?",
    "postgresql": "UPDATE refunds SET applied_at = applied_at - INTERVAL '1 day' WHERE refund_no = ?",
    "mariadb": "UPDATE refunds SET applied_at = applied_at - INTERVAL 1 DAY WHERE refund_no = ?",
}


@dataclass
class Books:
    """The HIS's tables, read (and, to date a refund into yesterday, written) from outside the bridge."""

    dialect: str
    query: Callable[..., list[tuple[Any, ...]]]
    execute: Callable[..., None]

    def value(self, sql: str, *params: Any) -> Any:
        return self.query(sql, *params)[0][0]

    def booked(self, schedule_id: str) -> int:
        return int(self.value("SELECT booked FROM schedules WHERE schedule_id = ?", schedule_id))

    def bill_statuses(self, *bill_nos: str) -> list[str]:
        return [self.value("SELECT status FROM bills WHERE bill_no = ?", bill_no) for bill_no in bill_nos]

    def balance(self, inpatient_no: str) -> int:
        return int(self.value("SELECT balance_fen FROM inpatients WHERE inpatient_no = ?", inpatient_no))

    def applications(self, operation: str) -> int:
        return int(self.value("SELECT COUNT(*) FROM applications WHERE operation = ?", operation))

    def day(self, column: str, refund_no: str) -> dt.date:
        value = self.value(f"SELECT {column} FROM refunds WHERE refund_no = ?", refund_no)
        return dt.date.fromisoformat(value[:10]) if isinstance(value, str) else value.date()

    def date_applied_back_a_day(self, refund_no: str) -> None:
        self.execute(SHIFT_BACK_A_DAY[self.dialect], refund_no)


@dataclass
class Peer:
    call: Callable[..., Any]
    books: Books


def sqlite_books(his: SandboxHis) -> Books:
    def query(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(his.state.db_path)) as db:
            return [tuple(row) for row in db.execute(sql, params)]

    def execute(sql: str, *params: Any) -> None:
        with contextlib.closing(sqlite3.connect(his.state.db_path)) as db, db:
            db.execute(sql, params)

    return Books("sqlite", query, execute)


@pytest.fixture(params=list(PROFILES))
async def peer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Peer]:
    name = request.param
    his: SandboxHis | None = None
    if name in ("postgresql", "mariadb"):
        db: SandboxDb = request.getfixturevalue("sandbox_pg" if name == "postgresql" else "sandbox_mariadb")
        overrides: dict[str, Any] = {"dbproc.connection": db.connection}
        books = Books(name, db.query, db.execute)
    else:
        his = await start_sandbox_his(
            db_path=tmp_path / "his.sqlite3", mllp=("127.0.0.1", 0) if name == "hl7" else None
        )
        overrides = {"hl7.port": his.mllp_address[1]} if name == "hl7" else {"soap.base_url": his.base_url}
        books = sqlite_books(his)
    profile = load_profile(
        REPO / "config" / "profiles" / PROFILES[name],
        catalog.OPERATIONS,
        read_operations=catalog.READ_OPERATIONS,
        overrides=overrides,
        environ={},
    )
    adapter: Adapter = profile.build_adapter()
    await adapter.start()

    async def call(operation: str, /, **params: Any) -> dict[str, Any]:
        """As the bridge calls: input validated and dumped to JSON, the answer validated against the catalog."""
        op = catalog.OPERATIONS[operation]
        result = await adapter.call(operation, op.input.model_validate(params).model_dump(mode="json"))
        return op.output.model_validate(result).model_dump(mode="json")

    try:
        yield Peer(call, books)
    finally:
        await adapter.close()
        if his is not None:
            await his.close()


def paid(trade_no: str, patient_id: str, amount_fen: int, **more: Any) -> dict[str, Any]:
    return {
        "request_id": f"req-{trade_no}",
        "trade_no": trade_no,
        "patient_id": patient_id,
        "amount_fen": amount_fen,
        "channel": "wechat",
        "channel_trade_no": f"W{trade_no}",
        "paid_at": dt.datetime.now(SHANGHAI).replace(microsecond=0).isoformat(),
        **more,
    }


async def apply(peer: Peer, trade_no: str, refund_no: str, amount_fen: int) -> dict[str, Any]:
    return await peer.call(
        "refund.apply", request_id=f"req-{refund_no}", trade_no=trade_no, refund_no=refund_no, amount_fen=amount_fen
    )


async def cancel(peer: Peer, trade_no: str, refund_no: str, **more: Any) -> dict[str, Any]:
    request_id = more.pop("request_id", f"req-cx-{refund_no}")
    return await peer.call("refund.cancel", request_id=request_id, trade_no=trade_no, refund_no=refund_no, **more)


async def check(peer: Peer, trade_no: str, operation: str, refund_no: str | None = None) -> dict[str, Any]:
    return await peer.call("trade.check", trade_no=trade_no, operation=operation, refund_no=refund_no)


async def refused(peer: Peer, operation: str, /, **params: Any) -> PermanentError:
    with pytest.raises(PermanentError) as refusal:
        await peer.call(operation, **params)
    return refusal.value


async def test_cancel_gives_back_the_slot_the_bills_and_the_deposit(peer: Peer) -> None:
    books = peer.books

    # 退号 withdrawn: the registration's slot went back to the schedule with the refund and is taken again.
    await peer.call("registration.commit", **paid("T-REG", "P0001", 1000, schedule_id="S001"))
    assert books.booked("S001") == 1
    await apply(peer, "T-REG", "R-REG", 1000)
    assert books.booked("S001") == 0
    assert (await check(peer, "T-REG", "refund.cancel", "R-REG"))["found"] is False
    reason = "患者改为到院就诊 <不退号> & 'ok' |^~\\"
    withdrawn = await cancel(peer, "T-REG", "R-REG", reason=reason)
    assert withdrawn["cancelled"] is True and withdrawn["amount_fen"] == 1000 and withdrawn["receipt_no"]
    assert books.booked("S001") == 1
    assert books.value("SELECT cancel_reason FROM refunds WHERE refund_no = ?", "R-REG") == reason
    assert await check(peer, "T-REG", "refund.cancel", "R-REG") == {
        "found": True,
        "receipt_no": withdrawn["receipt_no"],
        "amount_fen": 1000,
        "status": "cancelled",
    }
    assert (await check(peer, "T-REG", "registration.commit"))["status"] == "paid"

    # 退费: the insurance share alone leaves the bills paid; the rest refunds them; withdrawing the rest pays them
    # again, and what it gave back may be refunded again.
    await peer.call("charge.commit", **paid("T-CHG", "P0001", 9850, bill_nos=["B0001", "B0002"]))
    await apply(peer, "T-CHG", "R-CHG-1", 1250)
    assert books.bill_statuses("B0001", "B0002") == ["paid", "paid"]
    assert (await apply(peer, "T-CHG", "R-CHG-2", 8600))["refundable_fen"] == 8600
    assert books.bill_statuses("B0001", "B0002") == ["refunded", "refunded"]
    assert (await check(peer, "T-CHG", "charge.commit"))["status"] == "refunded"
    await cancel(peer, "T-CHG", "R-CHG-2")
    assert books.bill_statuses("B0001", "B0002") == ["paid", "paid"]
    assert (await check(peer, "T-CHG", "charge.commit"))["status"] == "partial"
    assert (await apply(peer, "T-CHG", "R-CHG-3", 8600))["refundable_fen"] == 8600

    # The inpatient deposit: the refund took it from the balance, the cancellation puts it back.
    before = books.balance("Z0001")
    await peer.call("prepay.commit", **paid("T-DEP", "P0003", 50000, inpatient_no="Z0001"))
    await apply(peer, "T-DEP", "R-DEP", 30000)
    assert books.balance("Z0001") == before + 20000
    await cancel(peer, "T-DEP", "R-DEP")
    assert books.balance("Z0001") == before + 50000
    assert books.applications("CancelRefund") == 3


async def test_written_back_refused_repeat_answers_the_same_unknown_refused(peer: Peer) -> None:
    books = peer.books
    await peer.call("charge.commit", **paid("T-WB", "P0001", 1250, bill_nos=["B0001"]))
    await apply(peer, "T-WB", "R-WB", 1250)
    await peer.call(
        "refund.writeback",
        request_id="req-wb-R-WB",
        trade_no="T-WB",
        refund_no="R-WB",
        amount_fen=1250,
        channel_refund_no="50300000000000000001",
        refunded_at=dt.datetime.now(SHANGHAI).replace(microsecond=0).isoformat(),
    )
    written_back = await refused(peer, "refund.cancel", request_id="req-cx-wb", trade_no="T-WB", refund_no="R-WB")
    assert written_back.code == "3004"
    assert "written back" in written_back.message and "50300000000000000001" in written_back.message
    assert books.bill_statuses("B0001") == ["refunded"] and books.applications("CancelRefund") == 0
    assert (await check(peer, "T-WB", "refund.apply", "R-WB"))["status"] == "written_back"

    # A repeat (another request id: the bridge's journal would answer the same one itself) reaches the HIS and
    # answers the same voucher without giving the deposit back twice.
    before = books.balance("Z0001")
    await peer.call("prepay.commit", **paid("T-REP", "P0003", 10000, inpatient_no="Z0001"))
    await apply(peer, "T-REP", "R-REP", 10000)
    first = await cancel(peer, "T-REP", "R-REP")
    second = await cancel(peer, "T-REP", "R-REP", request_id="req-cx-again")
    assert first == second and books.applications("CancelRefund") == 2
    assert books.balance("Z0001") == before + 10000

    # A withdrawn refund is neither written back nor applied again under its number.
    late = await refused(
        peer,
        "refund.writeback",
        request_id="req-wb-late",
        trade_no="T-REP",
        refund_no="R-REP",
        amount_fen=10000,
        channel_refund_no="50300000000000000002",
        refunded_at=dt.datetime.now(SHANGHAI).replace(microsecond=0).isoformat(),
    )
    assert late.code == "3005" and "cancelled" in late.message
    assert (await check(peer, "T-REP", "refund.writeback", "R-REP"))["found"] is False
    again = await refused(
        peer, "refund.apply", request_id="req-rf-again", trade_no="T-REP", refund_no="R-REP", amount_fen=10000
    )
    assert again.code == "3005"
    assert books.balance("Z0001") == before + 10000

    for trade_no, refund_no in (("T-REP", "R-NONE"), ("T-WB", "R-REP")):
        unknown = await refused(
            peer, "refund.cancel", request_id="req-cx-unknown", trade_no=trade_no, refund_no=refund_no
        )
        assert unknown.code == "3003"
    assert books.applications("CancelRefund") == 2


async def test_a_slot_given_away_meanwhile_cannot_be_taken_back(peer: Peer) -> None:
    """S003 has one slot: once the refunded registration's slot went to another patient, the HIS refuses to
    withdraw the refund rather than overbook, and nothing changes."""
    books = peer.books
    await peer.call("registration.commit", **paid("T-S1", "P0001", 1500, schedule_id="S003"))
    await apply(peer, "T-S1", "R-S1", 1500)
    await peer.call("registration.commit", **paid("T-S2", "P0002", 1500, schedule_id="S003"))
    full = await refused(peer, "refund.cancel", request_id="req-cx-full", trade_no="T-S1", refund_no="R-S1")
    assert full.code == "1002" and "S003" in full.message
    assert books.booked("S003") == 1
    assert (await check(peer, "T-S1", "refund.cancel", "R-S1"))["found"] is False
    assert (await check(peer, "T-S1", "refund.apply", "R-S1"))["status"] == "applied"
    assert books.applications("CancelRefund") == 0


async def test_recon_lists_refunds_on_the_day_applied_with_their_state(peer: Peer) -> None:
    books = peer.books
    await peer.call("charge.commit", **paid("T-RECON", "P0001", 9850, bill_nos=["B0001", "B0002"]))
    await apply(peer, "T-RECON", "R-R1", 500)  # applied, the channel never paid it
    await apply(peer, "T-RECON", "R-R2", 300)  # applied yesterday (below), written back today
    await apply(peer, "T-RECON", "R-R3", 200)  # withdrawn: no longer in the HIS's books
    await cancel(peer, "T-RECON", "R-R3")
    books.date_applied_back_a_day("R-R2")
    refunded_at = dt.datetime.now(SHANGHAI).replace(microsecond=0).isoformat()
    await peer.call(
        "refund.writeback",
        request_id="req-wb-R-R2",
        trade_no="T-RECON",
        refund_no="R-R2",
        amount_fen=300,
        channel_refund_no="50300000000000000003",
        refunded_at=refunded_at,
    )
    today, yesterday = books.day("applied_at", "R-R1"), books.day("applied_at", "R-R2")
    assert yesterday < books.day("written_back_at", "R-R2")

    async def refunds_of(day: dt.date) -> list[dict[str, Any]]:
        answer = await peer.call("recon.fetch", date=day.isoformat())
        assert answer["total"] == len(answer["records"]) and not answer["has_more"]
        return [r for r in answer["records"] if r["kind"] == "refund"]

    applied = await refunds_of(today)
    assert [r["refund_no"] for r in applied] == ["R-R1"]
    assert {k: v for k, v in applied[0].items() if k != "time"} == {
        "trade_no": "T-RECON",
        "kind": "refund",
        "receipt_no": None,
        "amount_fen": 500,
        "channel": "wechat",
        "channel_trade_no": "WT-RECON",
        "refund_no": "R-R1",
        "refund_state": "applied",
        "channel_refund_no": None,
        "written_back_at": None,
    }
    assert dt.datetime.fromisoformat(applied[0]["time"]).date() == today

    (written_back,) = await refunds_of(yesterday)
    assert (written_back["refund_no"], written_back["refund_state"]) == ("R-R2", "written_back")
    assert written_back["channel_refund_no"] == "50300000000000000003" and written_back["receipt_no"]
    assert dt.datetime.fromisoformat(written_back["time"]).date() == yesterday
    assert dt.datetime.fromisoformat(written_back["written_back_at"]).date() == books.day("written_back_at", "R-R2")
