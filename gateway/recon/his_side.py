"""The HIS side of a day: ``recon.fetch`` through the hospital's bridge agent, one page at a time.

Pages hold at most 1000 records (the catalog's limit), so a busy day never travels as one message; each page
is reduced to compact entries as it arrives. The HIS's trade number is our ``out_trade_no`` and its refund
number our ``out_refund_no`` (the sagas send them), which is what joins it to the other two sides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from bridge.client import BridgeError
from gateway.recon.normalize import SHANGHAI

MAX_PAGE = 1000
MAX_PAGES = 100_000


class ReconFetchError(Exception):
    """The HIS did not give the day's records; the run fails rather than reconcile against half a day."""


class ReconSource(Protocol):
    async def fetch_page(self, day: dt.date, page: int, page_size: int) -> dict[str, Any]:
        """One ``recon.fetch`` answer: ``{"records": [...], "total": N, "has_more": bool}``."""
        ...


class BridgeReconSource:
    """``recon.fetch`` over a ``gateway.his.BridgeHis`` (anything with a ``BridgeClient`` as ``client``)."""

    def __init__(self, link: Any) -> None:
        self.client = link.client

    async def fetch_page(self, day: dt.date, page: int, page_size: int) -> dict[str, Any]:
        params = {"date": day.isoformat(), "page": page, "page_size": page_size}
        try:
            result = await self.client.call("recon.fetch", params)
        except BridgeError as exc:
            raise ReconFetchError(f"recon.fetch {day} page {page}: {exc}") from exc
        if result.status != "done" or result.result is None:
            raise ReconFetchError(f"recon.fetch {day} page {page}: {result.status} {result.error}")
        return result.result


def entry_key(record: dict[str, Any]) -> str:
    if record.get("kind") == "refund":
        return f"refund:{record.get('refund_no') or ''}"
    return f"pay:{record['trade_no']}"


def record_time(record: dict[str, Any]) -> dt.datetime:
    value = record["time"]
    t = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t.replace(tzinfo=SHANGHAI) if t.tzinfo is None else t


async def pages(
    source: ReconSource,
    day: dt.date,
    *,
    page_size: int = MAX_PAGE,
    progress: Callable[[int, int], None] | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield the day's records page by page; stops on ``has_more`` false and checks the count against ``total``."""
    page_size = min(page_size, MAX_PAGE)
    seen = 0
    total: int | None = None
    for page in range(1, MAX_PAGES + 1):
        answer = await source.fetch_page(day, page, page_size)
        records = list(answer.get("records") or [])
        total = int(answer.get("total", 0)) if total is None else total
        seen += len(records)
        if progress is not None:
            progress(seen, total)
        yield records
        if not answer.get("has_more") or not records:
            break
    if total is not None and seen != total:
        raise ReconFetchError(f"recon.fetch {day}: {seen} records read, the HIS announced {total}")
