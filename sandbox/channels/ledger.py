"""The sandbox channels' own books (SQLite): trades, refunds and the callbacks sent, with the channel's word on
each. Amounts are integer fen here whatever the wire says; times are Beijing time, as both channels write them.

Trade states use WeChat's words (NOTPAY, USERPAYING, SUCCESS, REFUND, CLOSED, REVOKED, PAYERROR); the Alipay
server translates them to its own at the edge.
"""

from __future__ import annotations

import datetime as dt
import secrets
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge import clock

CST = dt.timezone(dt.timedelta(hours=8))
Clock = Callable[[], dt.datetime]

SCHEMA = """
CREATE TABLE IF NOT EXISTS trades (
    channel TEXT NOT NULL, merchant TEXT NOT NULL, out_trade_no TEXT NOT NULL,
    trade_no TEXT NOT NULL UNIQUE, appid TEXT, scene TEXT NOT NULL, amount_fen INTEGER NOT NULL,
    description TEXT, notify_url TEXT, attach TEXT, payer_id TEXT, auth_code TEXT,
    state TEXT NOT NULL, scanned INTEGER NOT NULL DEFAULT 1, request TEXT,
    created_at TEXT NOT NULL, paid_at TEXT, closed_at TEXT, expires_at TEXT,
    refunded_fen INTEGER NOT NULL DEFAULT 0, queries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, merchant, out_trade_no)
);
CREATE TABLE IF NOT EXISTS refunds (
    channel TEXT NOT NULL, merchant TEXT NOT NULL, out_trade_no TEXT NOT NULL, out_refund_no TEXT NOT NULL,
    refund_no TEXT NOT NULL UNIQUE, amount_fen INTEGER NOT NULL, total_fen INTEGER NOT NULL,
    state TEXT NOT NULL, reason TEXT, notify_url TEXT, held INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL, succeeded_at TEXT,
    PRIMARY KEY (channel, merchant, out_trade_no, out_refund_no)
);
CREATE TABLE IF NOT EXISTS order_times (
    channel TEXT NOT NULL, merchant TEXT NOT NULL, order_id TEXT NOT NULL, txn_time TEXT NOT NULL,
    kind TEXT NOT NULL, PRIMARY KEY (channel, merchant, order_id)
);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, merchant TEXT NOT NULL, kind TEXT NOT NULL,
    ref TEXT NOT NULL, notification_id TEXT NOT NULL, url TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_status INTEGER, last_error TEXT,
    created_at TEXT NOT NULL, delivered_at TEXT
);
"""


def beijing_now() -> dt.datetime:
    return clock.utcnow().astimezone(CST).replace(microsecond=0)


def new_serial(prefix: str, now: dt.datetime) -> str:
    """A channel-style serial: a fixed prefix, the date, random digits."""
    return prefix + now.strftime("%Y%m%d") + "".join(secrets.choice("0123456789") for _ in range(14))


class Ledger:
    def __init__(self, db_path: str | Path, *, clock: Clock | None = None) -> None:
        self.db_path = Path(db_path)
        self.clock: Clock = clock or beijing_now
        self._db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def now(self) -> dt.datetime:
        return self.clock().astimezone(CST).replace(microsecond=0)

    def _one(self, sql: str, args: tuple[Any, ...]) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return dict(row) if row is not None else None

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def _insert(self, table: str, values: dict[str, Any]) -> int:
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._lock:
            cur = self._db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(values.values()))
            return int(cur.lastrowid or 0)

    def _update(self, table: str, where: dict[str, Any], values: dict[str, Any]) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        cond = " AND ".join(f"{k} = ?" for k in where)
        with self._lock:
            self._db.execute(f"UPDATE {table} SET {sets} WHERE {cond}", (*values.values(), *where.values()))

    def add_trade(self, **values: Any) -> dict[str, Any]:
        values.setdefault("created_at", self.now().isoformat())
        self._insert("trades", values)
        trade = self.trade(values["channel"], values["merchant"], values["out_trade_no"])
        assert trade is not None
        return trade

    def trade(self, channel: str, merchant: str, out_trade_no: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM trades WHERE channel = ? AND merchant = ? AND out_trade_no = ?",
            (channel, merchant, out_trade_no),
        )

    def trade_by_no(self, channel: str, merchant: str, trade_no: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM trades WHERE channel = ? AND merchant = ? AND trade_no = ?", (channel, merchant, trade_no)
        )

    def update_trade(self, trade: dict[str, Any], **values: Any) -> dict[str, Any]:
        key = {k: trade[k] for k in ("channel", "merchant", "out_trade_no")}
        self._update("trades", key, values)
        fresh = self.trade(**key)
        assert fresh is not None
        return fresh

    def trades(self, channel: str | None = None) -> list[dict[str, Any]]:
        if channel:
            return self._all("SELECT * FROM trades WHERE channel = ? ORDER BY created_at", (channel,))
        return self._all("SELECT * FROM trades ORDER BY created_at")

    def add_refund(self, **values: Any) -> dict[str, Any]:
        values.setdefault("created_at", self.now().isoformat())
        self._insert("refunds", values)
        refund = self.refund(values["channel"], values["merchant"], values["out_refund_no"], values["out_trade_no"])
        assert refund is not None
        return refund

    def refund(
        self, channel: str, merchant: str, out_refund_no: str, out_trade_no: str | None = None
    ) -> dict[str, Any] | None:
        if out_trade_no is None:
            return self._one(
                "SELECT * FROM refunds WHERE channel = ? AND merchant = ? AND out_refund_no = ?",
                (channel, merchant, out_refund_no),
            )
        return self._one(
            "SELECT * FROM refunds WHERE channel = ? AND merchant = ? AND out_refund_no = ? AND out_trade_no = ?",
            (channel, merchant, out_refund_no, out_trade_no),
        )

    def update_refund(self, refund: dict[str, Any], **values: Any) -> dict[str, Any]:
        key = {k: refund[k] for k in ("channel", "merchant", "out_trade_no", "out_refund_no")}
        self._update("refunds", key, values)
        fresh = self.refund(key["channel"], key["merchant"], key["out_refund_no"], key["out_trade_no"])
        assert fresh is not None
        return fresh

    def refunds(self, channel: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM refunds WHERE 1 = 1", []
        if channel:
            sql += " AND channel = ?"
            args.append(channel)
        if state:
            sql += " AND state = ?"
            args.append(state)
        return self._all(sql + " ORDER BY created_at", tuple(args))

    def paid_on(self, channel: str, merchant: str, day: dt.date) -> list[dict[str, Any]]:
        """Trades whose payment happened on ``day`` (Beijing time), whatever became of them since."""
        return self._all(
            "SELECT * FROM trades WHERE channel = ? AND merchant = ? AND substr(paid_at, 1, 10) = ? ORDER BY paid_at",
            (channel, merchant, day.isoformat()),
        )

    def refunded_on(self, channel: str, merchant: str, day: dt.date) -> list[dict[str, Any]]:
        return self._all(
            "SELECT r.*, t.trade_no, t.appid, t.payer_id, t.scene, t.description, t.attach, t.paid_at"
            " FROM refunds r JOIN trades t USING (channel, merchant, out_trade_no)"
            " WHERE r.channel = ? AND r.merchant = ? AND r.state = 'SUCCESS' AND substr(r.succeeded_at, 1, 10) = ?"
            " ORDER BY r.succeeded_at",
            (channel, merchant, day.isoformat()),
        )

    def settled_between(
        self, channel: str, merchant: str, start: dt.datetime, end: dt.datetime
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Payments and successful refunds in [start, end) (for a channel whose settlement day does not end at
        midnight: UnionPay's ends at 23:00)."""
        lo, hi = start.astimezone(CST).isoformat(), end.astimezone(CST).isoformat()
        payments = self._all(
            "SELECT * FROM trades WHERE channel = ? AND merchant = ? AND paid_at >= ? AND paid_at < ? ORDER BY paid_at",
            (channel, merchant, lo, hi),
        )
        refunds = self._all(
            "SELECT r.*, t.trade_no, t.appid, t.payer_id, t.scene, t.description, t.attach, t.paid_at"
            " FROM refunds r JOIN trades t USING (channel, merchant, out_trade_no)"
            " WHERE r.channel = ? AND r.merchant = ? AND r.state = 'SUCCESS' AND r.succeeded_at >= ?"
            " AND r.succeeded_at < ? ORDER BY r.succeeded_at",
            (channel, merchant, lo, hi),
        )
        return payments, refunds

    def add_order_time(self, channel: str, merchant: str, order_id: str, txn_time: str, kind: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO order_times (channel, merchant, order_id, txn_time, kind) VALUES (?, ?, ?, ?, ?)",
                (channel, merchant, order_id, txn_time, kind),
            )

    def order_time(self, channel: str, merchant: str, order_id: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM order_times WHERE channel = ? AND merchant = ? AND order_id = ?",
            (channel, merchant, order_id),
        )

    def add_notification(self, **values: Any) -> int:
        values.setdefault("created_at", self.now().isoformat())
        values.setdefault("status", "pending")
        return self._insert("notifications", values)

    def update_notification(self, notification_id: int, **values: Any) -> None:
        self._update("notifications", {"id": notification_id}, values)

    def notifications(self, channel: str | None = None) -> list[dict[str, Any]]:
        if channel:
            return self._all("SELECT * FROM notifications WHERE channel = ? ORDER BY id", (channel,))
        return self._all("SELECT * FROM notifications ORDER BY id")

    def notification(self, notification_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM notifications WHERE id = ?", (notification_id,))
