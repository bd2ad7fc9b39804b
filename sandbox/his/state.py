"""The sandbox HIS's domain state: patients, schedules, bills, deposits, trades and refunds in SQLite.

One method per SOAP operation, taking and returning plain Python values with money as integer fen. Every write
runs in one transaction together with its entry in the ``applications`` log, so an error never half-writes and
the log proves exactly how many times each write reached the HIS. Like many real HIS, it is naive about
duplicate commits: the same ``TradeNo`` committed twice is recorded twice.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bridge import clock

SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
LOCK_TTL = dt.timedelta(minutes=15)
PAY_MODES = frozenset({"WX", "ZFB", "YL"})
MAX_FEN = 10_000_000_000

SOAP_OPERATIONS: dict[str, str] = {
    "QueryPatient": "patient.query",
    "QueryUnpaidBills": "bills.unpaid",
    "LockRegistration": "registration.lock",
    "UnlockRegistration": "registration.unlock",
    "CommitRegistration": "registration.commit",
    "CommitCharge": "charge.commit",
    "CommitPrepay": "prepay.commit",
    "ApplyRefund": "refund.apply",
    "WritebackRefund": "refund.writeback",
    "CancelRefund": "refund.cancel",
    "CheckTrade": "trade.check",
    "FetchRecon": "recon.fetch",
}
"""SOAP operation name → catalog operation name."""

CATALOG_TO_SOAP = {catalog: soap for soap, catalog in SOAP_OPERATIONS.items()}

Clock = Callable[[], dt.datetime]


class OutdatedDatabase(Exception):
    """The database file was written by an older sandbox HIS whose tables lack what this one keeps."""


class HisError(Exception):
    """A business refusal, answered as ``ResultCode`` / ``ResultMsg``; it never changes state."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def shanghai_now() -> dt.datetime:
    return clock.utcnow().astimezone(SHANGHAI)


def format_time(value: dt.datetime) -> str:
    """Render a time as the HIS does: local Asia/Shanghai wall time, no zone."""
    if value.tzinfo is not None:
        value = value.astimezone(SHANGHAI)
    return value.strftime(TIME_FORMAT)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    patient_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    gender TEXT NOT NULL CHECK (gender IN ('M', 'F', 'U')),
    birth_date TEXT,
    card_no TEXT UNIQUE,
    id_card_no TEXT UNIQUE,
    phone TEXT
);
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id TEXT PRIMARY KEY,
    dept_name TEXT NOT NULL,
    doctor_name TEXT,
    visit_date TEXT,
    period TEXT,
    fee_fen INTEGER NOT NULL CHECK (fee_fen >= 0),
    capacity INTEGER NOT NULL,
    booked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bills (
    bill_no TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients(patient_id),
    dept_name TEXT,
    amount_fen INTEGER NOT NULL CHECK (amount_fen >= 0),
    created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'unpaid' CHECK (status IN ('unpaid', 'paid', 'refunded')),
    trade_id INTEGER
);
CREATE TABLE IF NOT EXISTS inpatients (
    inpatient_no TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients(patient_id),
    ward TEXT,
    balance_fen INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS locks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lock_id TEXT UNIQUE,
    trade_no TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    schedule_id TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('locked', 'unlocked', 'used')),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS locks_trade ON locks(trade_no);
CREATE TABLE IF NOT EXISTS trades (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trade_no TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('registration', 'charge', 'prepay')),
    receipt_no TEXT UNIQUE,
    patient_id TEXT NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen >= 0),
    pay_mode TEXT NOT NULL,
    channel_trade_no TEXT NOT NULL,
    pay_time TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    schedule_id TEXT,
    lock_id TEXT,
    visit_no TEXT,
    inpatient_no TEXT,
    bill_nos TEXT
);
CREATE INDEX IF NOT EXISTS trades_trade_no ON trades(trade_no);
CREATE INDEX IF NOT EXISTS trades_recorded ON trades(recorded_at, id);
CREATE TABLE IF NOT EXISTS refunds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    refund_no TEXT NOT NULL UNIQUE,
    trade_no TEXT NOT NULL,
    trade_id INTEGER NOT NULL REFERENCES trades(id),
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    refundable_fen INTEGER NOT NULL,
    reason TEXT,
    his_refund_id TEXT UNIQUE,
    applied_at TEXT NOT NULL,
    channel_refund_no TEXT,
    refund_time TEXT,
    writeback_receipt_no TEXT UNIQUE,
    written_back_at TEXT,
    cancel_receipt_no TEXT UNIQUE,
    cancel_reason TEXT,
    cancelled_at TEXT
);
CREATE INDEX IF NOT EXISTS refunds_trade ON refunds(trade_no);
CREATE INDEX IF NOT EXISTS refunds_applied ON refunds(applied_at, id);
CREATE TABLE IF NOT EXISTS applications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    operation TEXT NOT NULL,
    trade_no TEXT,
    refund_no TEXT,
    applied_at TEXT NOT NULL
);
"""


def _id_card(prefix17: str) -> str:
    """A syntactically valid PRC resident ID number (GB 11643 check digit) for demo patients."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(d) * w for d, w in zip(prefix17, weights, strict=True))
    return prefix17 + "10X98765432"[total % 11]


_SEED_PATIENTS = [
    ("P0001", "张三", "M", "1985-03-12", "C0001", _id_card("11010519850312001"), "13800000001"),
    ("P0002", "李四", "F", "1990-07-08", "C0002", _id_card("31011519900708002"), "13800000002"),
    ("P0003", "王五", "M", "1978-11-30", "C0003", _id_card("44030519781130003"), "13800000003"),
    ("P0004", "赵六", "F", "2016-05-21", "C0004", _id_card("51010720160521004"), "13800000004"),
]
_SEED_SCHEDULES = [
    ("S001", "内科", "刘医生", "上午", 1000, 30),
    ("S002", "外科", "陈主任", "上午", 5000, 5),
    ("S003", "儿科", "周医生", "下午", 1500, 1),
]
_SEED_BILLS = [
    ("B0001", "P0001", "内科", 1250),
    ("B0002", "P0001", "检验科", 8600),
    ("B0003", "P0002", "放射科", 26000),
    ("B0004", "P0002", "药房", 4380),
    ("B0005", "P0003", "内科", 2000),
    ("B0006", "P0004", "儿科", 3550),
]
_SEED_INPATIENTS = [("Z0001", "P0003", "心内科一病区", 200000)]


def _fen(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FEN:
        raise ValueError(f"{value!r} is not an amount in fen")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


class HisState:
    """The HIS's books, one SQLite connection, used from one thread (the event loop)."""

    def __init__(self, db_path: str | Path, *, clock: Clock | None = None) -> None:
        self.db_path = str(db_path)
        self.clock: Clock = clock or shanghai_now
        self._db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._refuse_outdated()
        self._db.executescript(_SCHEMA)

    def _refuse_outdated(self) -> None:
        """A file from before refund cancellation has no place to keep it, and its bills cannot be marked
        refunded: say so rather than fail on the first refund (the sandbox keeps no migrations)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(refunds)")}
        if columns and "cancelled_at" not in columns:
            self._db.close()
            raise OutdatedDatabase(
                f"{self.db_path} was created by an older sandbox HIS (its refunds cannot be cancelled);"
                " move it away or start without --db"
            )

    def close(self) -> None:
        self._db.close()

    # --- plumbing ------------------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _now(self) -> str:
        return format_time(self.clock())

    def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        return self._db.execute(sql, params).fetchone()

    def _applied(self, operation: str, trade_no: str | None, refund_no: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO applications (operation, trade_no, refund_no, applied_at) VALUES (?, ?, ?, ?)",
            (operation, trade_no, refund_no, self._now()),
        )

    def _patient(self, patient_id: str) -> sqlite3.Row:
        row = self._one("SELECT * FROM patients WHERE patient_id = ?", (patient_id,))
        if row is None:
            raise HisError("1001", f"患者不存在 (patient {patient_id} not found)")
        return row

    @staticmethod
    def _check_paid(amount_fen: int, pay_mode: str, channel_trade_no: str) -> None:
        if isinstance(amount_fen, bool) or not isinstance(amount_fen, int):
            raise HisError("9001", "金额格式错误 (amount must be integer fen)")
        if not 0 < amount_fen <= MAX_FEN:
            raise HisError("9001", f"金额无效 (amount must be positive, got {amount_fen} fen)")
        if pay_mode not in PAY_MODES:
            raise HisError("9001", f"支付方式无效 (PayMode must be one of WX, ZFB, YL, got {pay_mode!r})")
        if not channel_trade_no:
            raise HisError("9001", "缺少渠道交易号 (ChannelTradeNo is required)")

    def _insert_trade(self, kind: str, prefix: str, **values: Any) -> tuple[int, str]:
        values = {"kind": kind, "recorded_at": self._now(), **values}
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = self._db.execute(f"INSERT INTO trades ({columns}) VALUES ({marks})", tuple(values.values()))
        trade_id = int(cur.lastrowid or 0)
        receipt_no = f"{prefix}{values['recorded_at'][:10].replace('-', '')}{trade_id:06d}"
        self._db.execute("UPDATE trades SET receipt_no = ? WHERE id = ?", (receipt_no, trade_id))
        return trade_id, receipt_no

    # --- seed ----------------------------------------------------------------------------------------------

    def seed(self) -> bool:
        """Insert demo patients, schedules, unpaid bills and an inpatient; only into an empty HIS."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM patients LIMIT 1").fetchone():
                return False
            now = self._now()
            db.executemany("INSERT INTO patients VALUES (?, ?, ?, ?, ?, ?, ?)", _SEED_PATIENTS)
            db.executemany(
                "INSERT INTO schedules (schedule_id, dept_name, doctor_name, visit_date, period, fee_fen, capacity)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(s, d, doc, now[:10], p, fee, cap) for s, d, doc, p, fee, cap in _SEED_SCHEDULES],
            )
            db.executemany(
                "INSERT INTO bills (bill_no, patient_id, dept_name, amount_fen, created_at) VALUES (?, ?, ?, ?, ?)",
                [(*bill, now) for bill in _SEED_BILLS],
            )
            db.executemany("INSERT INTO inpatients VALUES (?, ?, ?, ?)", _SEED_INPATIENTS)
            return True

    def add_patient(
        self,
        patient_id: str,
        name: str,
        gender: str = "U",
        birth_date: str | None = None,
        card_no: str | None = None,
        id_card_no: str | None = None,
        phone: str | None = None,
    ) -> None:
        """Register one more patient (tests use it for names whose encoded bytes look like separators)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO patients VALUES (?, ?, ?, ?, ?, ?, ?)",
                (patient_id, name, gender, birth_date, card_no, id_card_no, phone),
            )

    def add_fixtures(
        self,
        *,
        patients: Sequence[dict[str, Any]] = (),
        schedules: Sequence[dict[str, Any]] = (),
        bills: Sequence[dict[str, Any]] = (),
        inpatients: Sequence[dict[str, Any]] = (),
    ) -> dict[str, int]:
        """Load a day's worth of patients, schedules, unpaid bills and inpatients in one transaction (a simulated
        day needs thousands; the seed has a handful). Any bad row refuses the whole load with ``9001``."""
        now = self._now()
        try:
            patient_rows = [
                (p["patient_id"], p["name"], p.get("gender", "U"), p.get("birth_date"), p.get("card_no"),
                 p.get("id_card_no"), p.get("phone"))
                for p in patients
            ]  # fmt: skip
            schedule_rows = [
                (s["schedule_id"], s["dept_name"], s.get("doctor_name"), s.get("visit_date", now[:10]),
                 s.get("period"), _fen(s["fee_fen"]), _count(s["capacity"]))
                for s in schedules
            ]  # fmt: skip
            bill_rows = [(b["bill_no"], b["patient_id"], b.get("dept_name"), _fen(b["amount_fen"]), now) for b in bills]
            inpatient_rows = [
                (i["inpatient_no"], i["patient_id"], i.get("ward"), _fen(i.get("balance_fen", 0))) for i in inpatients
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise HisError("9001", f"夹具数据无效 (bad fixture row: {exc!r})") from None
        try:
            with self._tx() as db:
                db.executemany("INSERT INTO patients VALUES (?, ?, ?, ?, ?, ?, ?)", patient_rows)
                db.executemany(
                    "INSERT INTO schedules (schedule_id, dept_name, doctor_name, visit_date, period, fee_fen, capacity)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    schedule_rows,
                )
                db.executemany(
                    "INSERT INTO bills (bill_no, patient_id, dept_name, amount_fen, created_at) VALUES (?, ?, ?, ?, ?)",
                    bill_rows,
                )
                db.executemany("INSERT INTO inpatients VALUES (?, ?, ?, ?)", inpatient_rows)
        except sqlite3.IntegrityError as exc:
            raise HisError("9001", f"夹具数据冲突 (fixture rows conflict with the HIS: {exc})") from None
        return {
            "patients": len(patient_rows),
            "schedules": len(schedule_rows),
            "bills": len(bill_rows),
            "inpatients": len(inpatient_rows),
        }

    # --- reads ---------------------------------------------------------------------------------------------

    def query_patient(
        self, card_no: str | None = None, id_card_no: str | None = None, phone: str | None = None
    ) -> dict[str, Any]:
        """Find a patient by any one of card number, ID card number or phone (first given wins)."""
        for column, value in (("card_no", card_no), ("id_card_no", id_card_no), ("phone", phone)):
            if value:
                row = self._one(f"SELECT * FROM patients WHERE {column} = ? ORDER BY patient_id LIMIT 1", (value,))
                if row is None:
                    raise HisError("1001", "患者不存在 (patient not found)")
                return {k: row[k] for k in ("patient_id", "name", "gender", "birth_date", "card_no", "phone")}
        raise HisError("9001", "请提供卡号、身份证号或手机号之一 (give CardNo, IdCardNo or Phone)")

    def unpaid_bills(self, patient_id: str) -> list[dict[str, Any]]:
        self._patient(patient_id)
        rows = self._db.execute(
            "SELECT bill_no, dept_name, amount_fen, created_at FROM bills"
            " WHERE patient_id = ? AND status = 'unpaid' ORDER BY bill_no",
            (patient_id,),
        )
        return [dict(row) for row in rows]

    def balance(self, inpatient_no: str) -> int:
        row = self._one("SELECT balance_fen FROM inpatients WHERE inpatient_no = ?", (inpatient_no,))
        if row is None:
            raise HisError("1001", f"住院号不存在 (inpatient {inpatient_no} not found)")
        return int(row["balance_fen"])

    def receipt(self, receipt_no: str) -> dict[str, Any] | None:
        """A payment by its receipt number, with what has been refunded of it (HIS interfaces that key on
        receipts, such as quyi's ``GetRecieptRefundStatus``)."""
        row = self._one(
            "SELECT t.trade_no, t.kind, t.amount_fen, COALESCE(SUM(r.amount_fen), 0) AS refunded_fen"
            " FROM trades t LEFT JOIN refunds r ON r.trade_id = t.id AND r.cancelled_at IS NULL"
            " WHERE t.receipt_no = ? GROUP BY t.id",
            (receipt_no,),
        )
        return dict(row) if row is not None else None

    # --- registration --------------------------------------------------------------------------------------

    def _free_slots(self, schedule: sqlite3.Row, now: str) -> int:
        held = self._one(
            "SELECT COUNT(*) FROM locks WHERE schedule_id = ? AND status = 'locked' AND expires_at > ?",
            (schedule["schedule_id"], now),
        )
        return int(schedule["capacity"]) - int(schedule["booked"]) - int(held[0] if held else 0)

    def _schedule(self, schedule_id: str) -> sqlite3.Row:
        row = self._one("SELECT * FROM schedules WHERE schedule_id = ?", (schedule_id,))
        if row is None:
            raise HisError("1002", f"排班不存在 (schedule {schedule_id} unknown)")
        return row

    def lock_registration(self, trade_no: str, patient_id: str, schedule_id: str) -> dict[str, Any]:
        """Hold one slot of a schedule for ``LOCK_TTL``; returns lock id, fee and expiry time."""
        with self._tx() as db:
            self._patient(patient_id)
            schedule = self._schedule(schedule_id)
            now_dt = self.clock()
            now = format_time(now_dt)
            if self._free_slots(schedule, now) <= 0:
                raise HisError("1002", f"号源已满 (schedule {schedule_id} is full)")
            expires = format_time(now_dt + LOCK_TTL)
            cur = db.execute(
                "INSERT INTO locks (trade_no, patient_id, schedule_id, amount_fen, status, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, 'locked', ?, ?)",
                (trade_no, patient_id, schedule_id, schedule["fee_fen"], now, expires),
            )
            lock_id = f"LK{int(cur.lastrowid or 0):08d}"
            db.execute("UPDATE locks SET lock_id = ? WHERE id = ?", (lock_id, cur.lastrowid))
            self._applied("LockRegistration", trade_no)
            return {"lock_id": lock_id, "amount_fen": int(schedule["fee_fen"]), "expire_time": expires}

    def unlock_registration(self, trade_no: str, lock_id: str) -> None:
        """Release a held slot. Releasing an already released or expired lock succeeds; a used one does not."""
        with self._tx() as db:
            lock = self._one("SELECT * FROM locks WHERE lock_id = ?", (lock_id,))
            if lock is None or lock["trade_no"] != trade_no:
                raise HisError("1003", f"锁号不存在 (lock {lock_id} unknown for trade {trade_no})")
            if lock["status"] == "used":
                raise HisError("1003", f"已挂号，不能解锁 (lock {lock_id} already used by a registration)")
            db.execute("UPDATE locks SET status = 'unlocked' WHERE lock_id = ?", (lock_id,))
            self._applied("UnlockRegistration", trade_no)

    def commit_registration(
        self,
        trade_no: str,
        patient_id: str,
        schedule_id: str,
        lock_id: str | None,
        amount_fen: int,
        pay_mode: str,
        channel_trade_no: str,
        pay_time: dt.datetime,
    ) -> dict[str, Any]:
        """Record a paid registration. A lock, if given, must be live (or already used by this same trade)."""
        self._check_paid(amount_fen, pay_mode, channel_trade_no)
        with self._tx() as db:
            self._patient(patient_id)
            schedule = self._schedule(schedule_id)
            now = self._now()
            if lock_id:
                lock = self._one("SELECT * FROM locks WHERE lock_id = ?", (lock_id,))
                if (
                    lock is None
                    or lock["patient_id"] != patient_id
                    or lock["schedule_id"] != schedule_id
                    or (lock["status"] == "used" and lock["trade_no"] != trade_no)
                ):
                    raise HisError("1003", f"锁号不存在 (lock {lock_id} unknown)")
                if lock["status"] == "unlocked" or (lock["status"] == "locked" and lock["expires_at"] <= now):
                    raise HisError("1003", f"锁号已失效 (lock {lock_id} expired or released)")
            elif self._free_slots(schedule, now) <= 0:
                raise HisError("1002", f"号源已满 (schedule {schedule_id} is full)")
            if amount_fen != schedule["fee_fen"]:
                raise HisError(
                    "2003", f"金额不符 (amount {amount_fen} fen does not match the fee {schedule['fee_fen']} fen)"
                )
            if lock_id:
                db.execute("UPDATE locks SET status = 'used' WHERE lock_id = ?", (lock_id,))
            db.execute("UPDATE schedules SET booked = booked + 1 WHERE schedule_id = ?", (schedule_id,))
            trade_id, receipt_no = self._insert_trade(
                "registration",
                "GH",
                trade_no=trade_no,
                patient_id=patient_id,
                amount_fen=amount_fen,
                pay_mode=pay_mode,
                channel_trade_no=channel_trade_no,
                pay_time=format_time(pay_time),
                schedule_id=schedule_id,
                lock_id=lock_id,
            )
            visit_no = f"MZ{trade_id:08d}"
            db.execute("UPDATE trades SET visit_no = ? WHERE id = ?", (visit_no, trade_id))
            self._applied("CommitRegistration", trade_no)
            return {"receipt_no": receipt_no, "visit_no": visit_no}

    # --- charge and prepay ---------------------------------------------------------------------------------

    def commit_charge(
        self,
        trade_no: str,
        patient_id: str,
        bill_nos: Sequence[str],
        amount_fen: int,
        pay_mode: str,
        channel_trade_no: str,
        pay_time: dt.datetime,
    ) -> dict[str, Any]:
        """Mark the patient's bills paid; the amount must equal their sum exactly."""
        self._check_paid(amount_fen, pay_mode, channel_trade_no)
        if not bill_nos or len(set(bill_nos)) != len(bill_nos):
            raise HisError("9001", "缴费单号为空或重复 (BillNos must be non-empty and distinct)")
        with self._tx() as db:
            self._patient(patient_id)
            total = 0
            for bill_no in bill_nos:
                bill = self._one("SELECT * FROM bills WHERE bill_no = ?", (bill_no,))
                if bill is None or bill["patient_id"] != patient_id:
                    raise HisError("2001", f"缴费单不存在 (bill {bill_no} unknown for patient {patient_id})")
                if bill["status"] == "paid":
                    raise HisError("2002", f"缴费单已缴费 (bill {bill_no} already paid)")
                total += int(bill["amount_fen"])
            if amount_fen != total:
                raise HisError("2003", f"金额不符 (amount {amount_fen} fen, bills total {total} fen)")
            trade_id, receipt_no = self._insert_trade(
                "charge",
                "SF",
                trade_no=trade_no,
                patient_id=patient_id,
                amount_fen=amount_fen,
                pay_mode=pay_mode,
                channel_trade_no=channel_trade_no,
                pay_time=format_time(pay_time),
                bill_nos=",".join(bill_nos),
            )
            db.executemany(
                "UPDATE bills SET status = 'paid', trade_id = ? WHERE bill_no = ?",
                [(trade_id, b) for b in bill_nos],
            )
            self._applied("CommitCharge", trade_no)
            return {"receipt_no": receipt_no}

    def commit_prepay(
        self,
        trade_no: str,
        patient_id: str,
        inpatient_no: str,
        amount_fen: int,
        pay_mode: str,
        channel_trade_no: str,
        pay_time: dt.datetime,
    ) -> dict[str, Any]:
        """Add to an inpatient's deposit; returns the receipt and the new balance."""
        self._check_paid(amount_fen, pay_mode, channel_trade_no)
        with self._tx() as db:
            self._patient(patient_id)
            inpatient = self._one("SELECT * FROM inpatients WHERE inpatient_no = ?", (inpatient_no,))
            if inpatient is None or inpatient["patient_id"] != patient_id:
                raise HisError("1001", f"住院记录不存在 (inpatient {inpatient_no} unknown for patient {patient_id})")
            db.execute(
                "UPDATE inpatients SET balance_fen = balance_fen + ? WHERE inpatient_no = ?",
                (amount_fen, inpatient_no),
            )
            _, receipt_no = self._insert_trade(
                "prepay",
                "YJ",
                trade_no=trade_no,
                patient_id=patient_id,
                amount_fen=amount_fen,
                pay_mode=pay_mode,
                channel_trade_no=channel_trade_no,
                pay_time=format_time(pay_time),
                inpatient_no=inpatient_no,
            )
            self._applied("CommitPrepay", trade_no)
            return {"receipt_no": receipt_no, "balance_fen": int(inpatient["balance_fen"]) + amount_fen}

    # --- refunds -------------------------------------------------------------------------------------------
    # A refund application takes back what the payment gave: the deposit balance at once (by its amount), and,
    # once the trade's live applications cover all of it, the registration slot (退号) or the paid bills (退费).
    # A partial refund (the insurance share after settlement) leaves the visit and the bills in place.
    # Cancelling an application that was never paid out gives all of it back.

    def _first_trade(self, trade_no: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM trades WHERE trade_no = ? ORDER BY id LIMIT 1", (trade_no,))

    def _live_refunds_fen(self, trade_no: str) -> int:
        """What the trade's refund applications not cancelled add up to."""
        row = self._one(
            "SELECT COALESCE(SUM(amount_fen), 0) FROM refunds WHERE trade_no = ? AND cancelled_at IS NULL",
            (trade_no,),
        )
        return int(row[0] if row else 0)

    def _refund_total_changed(self, trade: sqlite3.Row, before_fen: int, after_fen: int) -> None:
        """Release the slot or the bills when the trade becomes fully refunded; take them back when it stops
        being so. A slot given away meanwhile cannot be taken back: the cancellation is refused (1002)."""
        full_before, full_after = before_fen >= trade["amount_fen"], after_fen >= trade["amount_fen"]
        if full_before == full_after:
            return
        if trade["kind"] == "registration":
            if full_after:
                self._db.execute(
                    "UPDATE schedules SET booked = booked - 1 WHERE schedule_id = ?", (trade["schedule_id"],)
                )
                return
            schedule = self._schedule(trade["schedule_id"])
            if self._free_slots(schedule, self._now()) <= 0:
                raise HisError(
                    "1002",
                    f"号源已满，无法恢复挂号 (schedule {trade['schedule_id']} is full: the registration"
                    f" {trade['receipt_no']} cannot be restored)",
                )
            self._db.execute("UPDATE schedules SET booked = booked + 1 WHERE schedule_id = ?", (trade["schedule_id"],))
        elif trade["kind"] == "charge":
            status = "refunded" if full_after else "paid"
            self._db.execute("UPDATE bills SET status = ? WHERE trade_id = ?", (status, trade["id"]))

    @staticmethod
    def _refund_state(refund: sqlite3.Row) -> str:
        if refund["cancel_receipt_no"] is not None:
            return "cancelled"
        return "written_back" if refund["writeback_receipt_no"] is not None else "applied"

    def apply_refund(self, trade_no: str, refund_no: str, amount_fen: int, reason: str | None = None) -> dict[str, Any]:
        """Cancel part or all of a trade in the HIS.

        ``refundable_fen`` is what the trade still had to refund before this refund (paid minus live refund
        applications; for a deposit also capped by the balance). A second apply of the same ``refund_no`` returns
        the first answer, as a real HIS would, but still counts as an application; one that was cancelled is
        refused (3005): a new refund needs a new number.
        """
        if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or not 0 < amount_fen <= MAX_FEN:
            raise HisError("9001", f"金额无效 (refund amount must be positive fen, got {amount_fen!r})")
        if not refund_no:
            raise HisError("9001", "缺少退款单号 (RefundNo is required)")
        with self._tx() as db:
            existing = self._one("SELECT * FROM refunds WHERE refund_no = ?", (refund_no,))
            if existing is not None:
                if existing["trade_no"] != trade_no:
                    raise HisError("9001", f"退款单号已用于其他交易 (refund {refund_no} belongs to another trade)")
                if existing["cancel_receipt_no"] is not None:
                    raise HisError(
                        "3005",
                        f"退款申请已撤销 (refund {refund_no} was cancelled at {existing['cancelled_at']}; a new"
                        " refund needs a new refund number)",
                    )
                self._applied("ApplyRefund", trade_no, refund_no)
                return {"refundable_fen": int(existing["refundable_fen"]), "his_refund_id": existing["his_refund_id"]}
            trade = self._first_trade(trade_no)
            if trade is None:
                raise HisError("3001", f"交易不存在 (trade {trade_no} unknown)")
            applied = self._live_refunds_fen(trade_no)
            refundable = int(trade["amount_fen"]) - applied
            if trade["kind"] == "prepay":
                refundable = min(refundable, self.balance(trade["inpatient_no"]))
            if amount_fen > refundable:
                raise HisError("3002", f"超出可退金额 (refund {amount_fen} fen exceeds refundable {refundable} fen)")
            if trade["kind"] == "prepay":
                db.execute(
                    "UPDATE inpatients SET balance_fen = balance_fen - ? WHERE inpatient_no = ?",
                    (amount_fen, trade["inpatient_no"]),
                )
            self._refund_total_changed(trade, applied, applied + amount_fen)
            cur = db.execute(
                "INSERT INTO refunds (refund_no, trade_no, trade_id, amount_fen, refundable_fen, reason, applied_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (refund_no, trade_no, trade["id"], amount_fen, refundable, reason, self._now()),
            )
            his_refund_id = f"HR{int(cur.lastrowid or 0):08d}"
            db.execute("UPDATE refunds SET his_refund_id = ? WHERE id = ?", (his_refund_id, cur.lastrowid))
            self._applied("ApplyRefund", trade_no, refund_no)
            return {"refundable_fen": refundable, "his_refund_id": his_refund_id}

    def _refund(self, trade_no: str, refund_no: str) -> sqlite3.Row:
        refund = self._one("SELECT * FROM refunds WHERE refund_no = ?", (refund_no,))
        if refund is None or refund["trade_no"] != trade_no:
            raise HisError("3003", f"退款申请不存在 (refund {refund_no} unknown for trade {trade_no})")
        return refund

    def writeback_refund(
        self, trade_no: str, refund_no: str, amount_fen: int, channel_refund_no: str, refund_time: dt.datetime
    ) -> dict[str, Any]:
        """Record the channel's refund serial against an applied refund; a repeat returns the same receipt. A
        cancelled application is refused (3005): the HIS gave back what it took, so money the channel paid for it
        is for finance to recover."""
        if not channel_refund_no:
            raise HisError("9001", "缺少渠道退款单号 (ChannelRefundNo is required)")
        with self._tx() as db:
            refund = self._refund(trade_no, refund_no)
            if refund["cancel_receipt_no"] is not None:
                raise HisError(
                    "3005",
                    f"退款申请已撤销 (refund {refund_no} was cancelled at {refund['cancelled_at']}; it cannot be"
                    " written back)",
                )
            if amount_fen != refund["amount_fen"]:
                raise HisError(
                    "2003", f"金额不符 (amount {amount_fen} fen, refund applied for {refund['amount_fen']} fen)"
                )
            receipt_no = refund["writeback_receipt_no"]
            if receipt_no is None:
                now = self._now()
                receipt_no = f"TF{now[:10].replace('-', '')}{int(refund['id']):06d}"
                db.execute(
                    "UPDATE refunds SET channel_refund_no = ?, refund_time = ?, writeback_receipt_no = ?,"
                    " written_back_at = ? WHERE id = ?",
                    (channel_refund_no, format_time(refund_time), receipt_no, now, refund["id"]),
                )
            self._applied("WritebackRefund", trade_no, refund_no)
            return {"receipt_no": receipt_no}

    def cancel_refund(self, trade_no: str, refund_no: str, reason: str | None = None) -> dict[str, Any]:
        """Withdraw a refund application the channel never paid: the deposit balance, the slot or the bills come
        back. A repeat returns the same voucher (and still counts as an application); a refund already written
        back is refused (3004), since the money went back to the patient."""
        with self._tx() as db:
            refund = self._refund(trade_no, refund_no)
            amount_fen = int(refund["amount_fen"])
            receipt_no = refund["cancel_receipt_no"]
            if receipt_no is None:
                if refund["writeback_receipt_no"] is not None:
                    raise HisError(
                        "3004",
                        f"退款已完成，不能撤销 (refund {refund_no} was written back at {refund['written_back_at']}"
                        f" with channel refund {refund['channel_refund_no']}: the money went back)",
                    )
                trade = self._one("SELECT * FROM trades WHERE id = ?", (refund["trade_id"],))
                assert trade is not None
                live = self._live_refunds_fen(trade_no)
                self._refund_total_changed(trade, live, live - amount_fen)
                if trade["kind"] == "prepay":
                    db.execute(
                        "UPDATE inpatients SET balance_fen = balance_fen + ? WHERE inpatient_no = ?",
                        (amount_fen, trade["inpatient_no"]),
                    )
                now = self._now()
                receipt_no = f"CX{now[:10].replace('-', '')}{int(refund['id']):06d}"
                db.execute(
                    "UPDATE refunds SET cancel_receipt_no = ?, cancel_reason = ?, cancelled_at = ? WHERE id = ?",
                    (receipt_no, reason, now, refund["id"]),
                )
            self._applied("CancelRefund", trade_no, refund_no)
            return {"receipt_no": receipt_no, "amount_fen": amount_fen}

    # --- checks and reconciliation -------------------------------------------------------------------------

    def check_trade(self, trade_no: str, operation: str, refund_no: str | None = None) -> dict[str, Any]:
        """Did the HIS record the write named by catalog ``operation`` for this trade (first record wins)?"""
        not_found: dict[str, Any] = {"found": False, "receipt_no": None, "amount_fen": None, "status": None}
        if operation in ("registration.commit", "charge.commit", "prepay.commit"):
            kind = operation.split(".")[0]
            row = self._one(
                "SELECT * FROM trades WHERE trade_no = ? AND kind = ? ORDER BY id LIMIT 1", (trade_no, kind)
            )
            if row is None:
                return not_found
            refunded = self._one(
                "SELECT COALESCE(SUM(amount_fen), 0) FROM refunds WHERE trade_id = ? AND cancelled_at IS NULL",
                (row["id"],),
            )
            refunded_fen = int(refunded[0] if refunded else 0)
            status = "paid" if refunded_fen == 0 else "refunded" if refunded_fen >= row["amount_fen"] else "partial"
            return {"found": True, "receipt_no": row["receipt_no"], "amount_fen": row["amount_fen"], "status": status}
        if operation in ("registration.lock", "registration.unlock"):
            where = "" if operation == "registration.lock" else " AND status = 'unlocked'"
            row = self._one(f"SELECT * FROM locks WHERE trade_no = ?{where} ORDER BY id LIMIT 1", (trade_no,))
            if row is None:
                return not_found
            status = row["status"]
            if status == "locked" and row["expires_at"] <= self._now():
                status = "expired"
            return {"found": True, "receipt_no": row["lock_id"], "amount_fen": row["amount_fen"], "status": status}
        if operation in ("refund.apply", "refund.writeback", "refund.cancel"):
            if not refund_no:
                raise HisError("9001", f"缺少退款单号 (RefundNo is required to check {operation})")
            row = self._one("SELECT * FROM refunds WHERE refund_no = ? AND trade_no = ?", (refund_no, trade_no))
            if row is None:
                return not_found
            status = self._refund_state(row)
            if operation == "refund.apply":
                return {
                    "found": True,
                    "receipt_no": row["his_refund_id"],
                    "amount_fen": row["refundable_fen"],
                    "status": status,
                }
            receipt_no = row["writeback_receipt_no" if operation == "refund.writeback" else "cancel_receipt_no"]
            if receipt_no is None:
                return not_found
            return {"found": True, "receipt_no": receipt_no, "amount_fen": row["amount_fen"], "status": status}
        raise HisError("9001", f"不支持的业务类型 (Operation {operation!r} is not a write the HIS records)")

    def recon(self, date: dt.date, page: int = 1, page_size: int = 500) -> dict[str, Any]:
        """One page of the day's records: commits by the time recorded, refunds by the time applied (booked),
        written back or not, with their state; a cancelled application is no longer in the books.

        Ordered by time, then commits before refunds, then insertion order, so pages never shift.
        """
        if page < 1 or not 1 <= page_size <= 1000:
            raise HisError("9001", "分页参数无效 (PageNo >= 1, 1 <= PageSize <= 1000)")
        start = f"{date.isoformat()} 00:00:00"
        end = f"{(date + dt.timedelta(days=1)).isoformat()} 00:00:00"
        union = (
            "SELECT 0 AS src, id, trade_no, kind, receipt_no, amount_fen, pay_mode, channel_trade_no,"
            " NULL AS refund_no, recorded_at AS time, NULL AS refund_state, NULL AS channel_refund_no,"
            " NULL AS written_back_at FROM trades WHERE recorded_at >= ?1 AND recorded_at < ?2"
            " UNION ALL"
            " SELECT 1, r.id, r.trade_no, 'refund', r.writeback_receipt_no, r.amount_fen, t.pay_mode,"
            " t.channel_trade_no, r.refund_no, r.applied_at,"
            " CASE WHEN r.writeback_receipt_no IS NULL THEN 'applied' ELSE 'written_back' END,"
            " r.channel_refund_no, r.written_back_at FROM refunds r JOIN trades t ON t.id = r.trade_id"
            " WHERE r.applied_at >= ?1 AND r.applied_at < ?2 AND r.cancelled_at IS NULL"
        )
        with self._lock:
            total_row = self._one(f"SELECT COUNT(*) FROM ({union})", (start, end))
            rows = self._db.execute(
                f"SELECT * FROM ({union}) ORDER BY time, src, id LIMIT ?3 OFFSET ?4",
                (start, end, page_size, (page - 1) * page_size),
            ).fetchall()
        total = int(total_row[0] if total_row else 0)
        records = [
            {
                k: row[k]
                for k in (
                    "trade_no",
                    "kind",
                    "receipt_no",
                    "amount_fen",
                    "pay_mode",
                    "channel_trade_no",
                    "refund_no",
                    "time",
                    "refund_state",
                    "channel_refund_no",
                    "written_back_at",
                )
            }
            for row in rows
        ]
        return {"total": total, "has_more": page * page_size < total, "records": records}

    def ledger(self) -> dict[str, list[dict[str, Any]]]:
        """Every payment and refund the HIS holds, duplicates included, for checks of a whole day's books."""
        with self._lock:
            trades = self._db.execute(
                "SELECT trade_no, kind, receipt_no, patient_id, amount_fen, pay_mode, channel_trade_no, pay_time,"
                " recorded_at FROM trades ORDER BY id"
            ).fetchall()
            refunds = self._db.execute(
                "SELECT refund_no, trade_no, amount_fen, his_refund_id, applied_at, channel_refund_no,"
                " writeback_receipt_no, written_back_at FROM refunds ORDER BY id"
            ).fetchall()
        return {"trades": [dict(r) for r in trades], "refunds": [dict(r) for r in refunds]}

    # --- the application log -------------------------------------------------------------------------------

    def receipts_for(self, trade_no: str) -> list[str]:
        """Receipt numbers of every payment recorded under ``trade_no``, in the order the HIS recorded them."""
        rows = self._db.execute(
            "SELECT receipt_no FROM trades WHERE trade_no = ? AND kind != 'refund' ORDER BY id", (trade_no,)
        )
        return [r[0] for r in rows]

    def applications(self) -> list[dict[str, Any]]:
        """How many times each write was applied, grouped by operation, trade and refund number."""
        rows = self._db.execute(
            "SELECT operation, trade_no, refund_no, COUNT(*) AS count FROM applications"
            " GROUP BY operation, trade_no, refund_no ORDER BY MIN(id)"
        )
        return [
            {**dict(row), "catalog_operation": SOAP_OPERATIONS.get(row["operation"], row["operation"])} for row in rows
        ]

    def application_count(
        self, operation: str | None = None, trade_no: str | None = None, refund_no: str | None = None
    ) -> int:
        """Applications matching every filter given (``operation`` is the SOAP name)."""
        clauses, params = [], []
        for column, value in (("operation", operation), ("trade_no", trade_no), ("refund_no", refund_no)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        row = self._one(f"SELECT COUNT(*) FROM applications{where}", params)
        return int(row[0] if row else 0)
