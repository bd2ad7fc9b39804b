"""Finance staff at the console, through the console's own pages and forms (no browser needed, nothing the staff
could not do): sign in, export the exception list, and work each exception — an over-collection is proposed for
a refund by a clerk and approved by an approver (two people), anything else settled offline is marked handled
with a note."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
ERROR_RE = re.compile(r'class="[^"]*\berror\b[^"]*"[^>]*>\s*([^<]+)<')
STATUSES = {
    "open": "open",
    "awaiting approval": "proposed",
    "refunding": "approved",
    "handled": "handled",
    "closed": "closed",
}
"""The English export's status words, back to the statuses (a class or status not listed is kept as written, in
snake case)."""
REMEDY_RE = re.compile(r'id="remedy-([a-z_]+)" data-allowed="(yes|no)"')
COLUMNS = {
    "id": "No.",
    "day": "Day",
    "class": "Class",
    "status": "Status",
    "entry": "Entry",
    "out_trade_no": "Platform trade no.",
    "out_refund_no": "Platform refund no.",
    "his_amount": "HIS amount",
    "platform_amount": "Platform amount",
    "channel_amount": "Channel amount",
    "detail": "Difference",
    "note": "Note",
    "class_code": "Class code",
}


def _key(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")


@dataclass(frozen=True)
class ConsoleException:
    id: int
    day: dt.date
    cls: str
    status: str
    entry: str
    out_trade_no: str
    out_refund_no: str
    his_amount: str
    platform_amount: str
    channel_amount: str
    detail: str
    note: str


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    status: int
    message: str


class Console:
    """One signed-in person."""

    def __init__(self, base_url: str, username: str) -> None:
        self.base = base_url.rstrip("/") + "/console"
        self.username = username
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.session.close()

    async def _get(self, path: str, **params: Any) -> tuple[int, str]:
        async with self.session.get(self.base + path, params={**params, "lang": "en"}) as resp:
            text = await resp.text()
        if found := CSRF_RE.search(text):
            self.csrf = found.group(1)
        return resp.status, text

    async def _post(self, path: str, form: dict[str, str]) -> tuple[int, str, str]:
        async with self.session.post(self.base + path, data={"csrf": self.csrf, **form}) as resp:
            text, url = await resp.text(), str(resp.url)
        if found := CSRF_RE.search(text):
            self.csrf = found.group(1)
        return resp.status, text, url

    async def login(self, password: str) -> None:
        await self._get("/login")
        status, _, url = await self._post("/login", {"username": self.username, "password": password})
        if status != 200 or "/login" in url:
            raise RuntimeError(f"console: {self.username} could not sign in (HTTP {status})")

    async def exceptions(self, day_from: dt.date, day_to: dt.date) -> list[ConsoleException]:
        """Every exception of the days, whatever its status, as the CSV export lists them."""
        params = {"status": "all", "from": day_from.isoformat(), "to": day_to.isoformat(), "lang": "en"}
        async with self.session.get(self.base + "/exceptions.csv", params=params) as resp:
            if resp.status != 200:
                raise RuntimeError(f"console: the export answered HTTP {resp.status}")
            text = (await resp.read()).decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text)))
        return [self._row(r) for r in rows]

    @staticmethod
    def _row(row: dict[str, str]) -> ConsoleException:
        get = {name: row.get(label, "") for name, label in COLUMNS.items()}
        status = STATUSES.get(get["status"].strip().lower(), _key(get["status"]))
        return ConsoleException(
            id=int(get["id"]),
            day=dt.date.fromisoformat(get["day"]),
            cls=get["class_code"] or _key(get["class"]),
            status=status,
            entry=_key(get["entry"]),
            out_trade_no=get["out_trade_no"],
            out_refund_no=get["out_refund_no"],
            his_amount=get["his_amount"],
            platform_amount=get["platform_amount"],
            channel_amount=get["channel_amount"],
            detail=get["detail"],
            note=get["note"],
        )

    async def _act(self, exception_id: int, action: str, form: dict[str, str]) -> ActionResult:
        await self._get(f"/exceptions/{exception_id}")
        status, text, url = await self._post(f"/exceptions/{exception_id}/{action}", form)
        if status == 200 and "done=flash." in url:
            return ActionResult(True, status, url.rsplit("done=", 1)[1])
        found = ERROR_RE.search(text)
        return ActionResult(False, status, found.group(1).strip() if found else f"HTTP {status}")

    async def remedies(self, exception_id: int) -> set[str]:
        """The remedies the exception's page offers now (``refund``, ``pay_refund``, ``cancel_his_refund``)."""
        _, text = await self._get(f"/exceptions/{exception_id}")
        return {action for action, allowed in REMEDY_RE.findall(text) if allowed == "yes"}

    async def propose_refund(self, exception_id: int, amount_yuan: str, reason: str) -> ActionResult:
        return await self._act(exception_id, "propose", {"action": "refund", "amount": amount_yuan, "reason": reason})

    async def propose(self, exception_id: int, action: str, reason: str) -> ActionResult:
        """Propose a remedy that has no amount to choose (paying or cancelling a HIS refund)."""
        return await self._act(exception_id, "propose", {"action": action, "reason": reason})

    async def redrive(self, exception_id: int, note: str) -> ActionResult:
        return await self._act(exception_id, "redrive", {"note": note})

    async def approve(self, exception_id: int, note: str) -> ActionResult:
        return await self._act(exception_id, "approve", {"note": note})

    async def mark_handled(self, exception_id: int, note: str) -> ActionResult:
        return await self._act(exception_id, "handle", {"note": note})
