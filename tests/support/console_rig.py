"""Building blocks for the finance console's tests: staff logins, realistic reconciliation results in the
database (a run per day, an over-collection whose money sits at the channel, an under-collection the HIS
booked), and a browser-less client that signs in and submits the console's forms with their CSRF token."""

from __future__ import annotations

import datetime as dt
import functools
import re
import secrets
from typing import Any

import aiohttp
import sqlalchemy as sa

from gateway.channels.base import TradeState
from gateway.console import auth
from gateway.model import utcnow
from gateway.sagas.common import new_trade_no
from gateway.store import orders as order_store
from gateway.store.console_tables import console_users
from gateway.store.db import Database
from gateway.store.recon_tables import recon_exceptions, recon_runs
from tests.support.gateway_rig import APP_ID, HOSPITAL, MERCHANT

PASSWORD = "correct horse battery"
STAFF = {"viewer1": "viewer", "clerk1": "clerk", "clerk2": "clerk", "approver1": "approver", "admin1": "admin"}
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@functools.cache
def _staff_hash() -> str:
    """One real scrypt hash of ``PASSWORD`` for every staff login of the run: at N=2**17 a hash is dear, and
    five per test would add minutes to the suite without proving anything more."""
    return auth.hash_password(PASSWORD)


async def add_staff(db: Database) -> None:
    now = utcnow()
    async with db.write() as conn:
        await conn.execute(
            sa.insert(console_users),
            [
                {
                    "username": username,
                    "role": role,
                    "password_hash": _staff_hash(),
                    "active": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for username, role in STAFF.items()
            ],
        )


async def seed_run(db: Database, day: dt.date, *, version: int = 1, **counts: int) -> None:
    now = utcnow()
    values: dict[str, Any] = {
        "his_count": 40,
        "platform_count": 41,
        "channel_count": 41,
        "his_fen": 1_234_500,
        "platform_fen": 1_235_700,
        "channel_fen": 1_235_700,
        "fee_fen": 7_410,
        "matched": 40,
        "over_collection": 1,
        "under_collection": 1,
        "by_channel": {
            "wechat": {"statements": 1, "pay_count": 38, "pay_fen": 1_300_000, "refund_count": 3,
                       "refund_fen": 64_300, "fee_fen": 7_410},
        },
        **counts,
    }  # fmt: skip
    async with db.write() as conn:
        await conn.execute(
            sa.insert(recon_runs).values(
                hospital_id=HOSPITAL,
                day=day,
                version=version,
                trigger="cli",
                status="done",
                started_at=now,
                finished_at=now,
                **values,
            )
        )


async def paid_order(db: Database, channel: Any, *, amount_fen: int, status: str = "his_rejected") -> Any:
    """An order the channel took the money for (and holds, in ``channel``) that the HIS refused to record."""
    out_trade_no = new_trade_no("T")
    paid_at = utcnow() - dt.timedelta(days=1)
    channel_trade_no = f"42{secrets.token_hex(8)}"
    if channel is not None:
        channel.trades[out_trade_no] = {
            "state": TradeState.success,
            "amount": amount_fen,
            "channel_trade_no": channel_trade_no,
            "paid_at": paid_at,
        }
    order, _ = await order_store.insert(
        db,
        {
            "hospital_id": HOSPITAL,
            "app_id": APP_ID,
            "merchant_id": MERCHANT,
            "channel": "wechat",
            "business_order_no": f"B{secrets.token_hex(6)}",
            "out_trade_no": out_trade_no,
            "request_digest": "0" * 64,
            "business_type": "charge",
            "scene": "native",
            "subject": "门诊缴费",
            "amount_fen": amount_fen,
            "his_params": {"bill_nos": ["BL1"]},
            "status": status,
            "channel_trade_no": channel_trade_no,
            "paid_fen": amount_fen,
            "paid_at": paid_at,
            "his_state": "rejected",
            "expires_at": paid_at,
        },
    )
    return order


async def _exception(db: Database, **values: Any) -> int:
    now = utcnow()
    row = {
        "hospital_id": HOSPITAL,
        "first_version": 1,
        "last_version": 1,
        "entry_type": "pay",
        "channel": "wechat",
        "merchant_id": MERCHANT,
        "status": "open",
        "created_at": now,
        "updated_at": now,
        **values,
    }
    row.setdefault("last_day", row["day"])
    async with db.write() as conn:
        return int(
            (
                await conn.execute(sa.insert(recon_exceptions).values(**row).returning(recon_exceptions.c.id))
            ).scalar_one()
        )


async def seed_over_collection(db: Database, channel: Any, day: dt.date, *, amount_fen: int = 12_00) -> tuple[int, Any]:
    """长款: the channel took ``amount_fen``, the platform has the paid order, the HIS has no record."""
    order = await paid_order(db, channel, amount_fen=amount_fen)
    exception_id = await _exception(
        db,
        day=day,
        entry_key=f"pay:{order.out_trade_no}",
        **{"class": "over_collection"},
        detail=f"channel {amount_fen / 100:.2f}, HIS none, platform his_rejected",
        out_trade_no=order.out_trade_no,
        channel_trade_no=order.channel_trade_no,
        his_fen=None,
        platform_fen=amount_fen,
        channel_fen=amount_fen,
        platform_record={"out_trade_no": order.out_trade_no, "status": order.status, "paid_fen": amount_fen},
        channel_record={
            "交易时间": f"{day.isoformat()} 10:15:00",
            "商户订单号": order.out_trade_no,
            "微信订单号": order.channel_trade_no,
            "交易状态": "SUCCESS",
            "应结订单金额": f"{amount_fen / 100:.2f}",
        },
    )
    return exception_id, order


async def seed_under_collection(db: Database, day: dt.date, *, amount_fen: int = 35_00) -> int:
    """短款: the HIS booked a payment that no channel took and the platform never saw."""
    trade_no = new_trade_no("T")
    return await _exception(
        db,
        day=day,
        entry_key=f"pay:{trade_no}",
        **{"class": "under_collection"},
        detail=f"HIS {amount_fen / 100:.2f}, channel none, platform none",
        out_trade_no=trade_no,
        his_trade_no=trade_no,
        his_receipt_no=f"RC{secrets.token_hex(4)}",
        his_fen=amount_fen,
        platform_fen=None,
        channel_fen=None,
        his_record={"trade_no": trade_no, "kind": "charge", "amount_fen": amount_fen, "patient_name": "张*"},
    )


class ConsoleClient:
    """A user of the console without a browser: keeps the session cookie and reads each form's CSRF token."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/") + "/console"
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **params: Any) -> tuple[int, str]:
        async with self.session.get(self.base + path, params=params, allow_redirects=True) as resp:
            text = await resp.text()
        found = CSRF_RE.search(text)
        if found:
            self.csrf = found.group(1)
        return resp.status, text

    async def get_bytes(self, path: str, **params: Any) -> tuple[int, dict[str, str], bytes]:
        async with self.session.get(self.base + path, params=params) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    async def post(self, path: str, data: dict[str, str], *, csrf: str | None = None) -> tuple[int, str, str]:
        """Status, body and the final URL (after the 303 to the page that shows the outcome)."""
        form = {"csrf": self.csrf if csrf is None else csrf, **data}
        async with self.session.post(self.base + path, data=form, allow_redirects=True) as resp:
            text = await resp.text()
            final = str(resp.url)
        found = CSRF_RE.search(text)
        if found:
            self.csrf = found.group(1)
        return resp.status, text, final

    async def login(self, username: str, password: str = PASSWORD) -> int:
        await self.get("/login")
        status, _, _ = await self.post("/login", {"username": username, "password": password})
        return status


def user(username: str, role: str) -> auth.User:
    """A console user as the actions see one, for calling them without a browser session."""
    return auth.User(0, username, auth.Role[role])
