"""The 付款码 (barcode) dance shared by WeChat and Alipay: while the payer is still entering a password, query with
bounded backoff; if no answer by the deadline, reverse (撤销), which closes an unpaid trade and refunds a paid one.

Never decides from silence: an error while polling is retried until the deadline, and a reverse that does not go
through is reported in doubt so the gateway keeps asking the channel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from gateway.channels.base import ChannelError, TradeState, TradeStatus
from gateway.channels.config import CodepayPolling

WAITING = frozenset({TradeState.userpaying, TradeState.notpay, TradeState.not_found})


async def settle(
    out_trade_no: str,
    query: Callable[[str], Awaitable[TradeStatus]],
    reverse: Callable[[str], Awaitable[None]],
    polling: CodepayPolling,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> TradeStatus:
    """Poll until the trade leaves the waiting states; past ``deadline_s`` reverse it and report REVOKED."""
    deadline = time.monotonic() + polling.deadline_s
    delay = polling.first_delay_s
    while True:
        await sleep(min(delay, max(0.0, deadline - time.monotonic())))
        try:
            status = await query(out_trade_no)
        except ChannelError as exc:
            if not (exc.retryable or exc.in_doubt):
                raise
            status = None
        if status is not None and status.state not in WAITING:
            return status
        if time.monotonic() >= deadline:
            break
        delay = min(delay * polling.factor if delay else polling.first_delay_s or 0.1, polling.max_delay_s)
    last: ChannelError | None = None
    for _ in range(polling.reverse_attempts):
        try:
            await reverse(out_trade_no)
        except ChannelError as exc:
            if not (exc.retryable or exc.in_doubt):
                raise
            last = exc
            continue
        return TradeStatus(out_trade_no=out_trade_no, state=TradeState.revoked)
    raise ChannelError(
        "REVERSE_FAILED",
        f"{out_trade_no}: still unpaid at the deadline and the reverse did not go through ({last})",
        in_doubt=True,
    )
