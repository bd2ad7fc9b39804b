"""What a channel client must remember beyond one call, kept where every gateway instance sees it.

- Certificates the channel handed out at run time (WeChat platform certificates downloaded from
  ``/v3/certificates``, Alipay certificates fetched by their SN, UnionPay signing certificates seen on messages):
  an instance that learns one shares it, and a restart does not forget it.
- UnionPay's ``txnTime``: every later call about an order (query, refund, cancel, reversal) must repeat the
  ``txnTime`` sent with it, and the order's number alone does not carry it. It is written *before* the request
  goes out, so a crash between the two cannot make a retry send the same ``orderId`` with another time.

The gateway keeps this in its database (``gateway.store.channel_state``); tests and tools without a database use
``MemoryState``. Channels only see this protocol, never the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class KeptCertificate:
    serial: str
    pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    source: str
    """``downloaded`` (asked for) or ``seen`` (arrived on a signed message)."""


@dataclass(frozen=True)
class OrderTime:
    txn_time: str
    kind: str
    """What the order was sent as (UnionPay: ``consume``, ``refund``, ``cancel``), so a retry repeats it."""


class ChannelState(Protocol):
    async def certificates(self) -> list[KeptCertificate]: ...

    async def keep_certificate(self, cert: KeptCertificate) -> None:
        """Insert, or refresh the row of the same serial."""

    async def reserve_order_time(self, order_id: str, txn_time: str, kind: str) -> OrderTime:
        """Remember ``order_id``'s time unless one is kept already; returns the one kept (the first)."""

    async def order_time(self, order_id: str) -> OrderTime | None: ...


class MemoryState:
    """``ChannelState`` in this process only (tests, offline tools)."""

    def __init__(self) -> None:
        self._certificates: dict[str, KeptCertificate] = {}
        self._times: dict[str, OrderTime] = {}

    async def certificates(self) -> list[KeptCertificate]:
        return list(self._certificates.values())

    async def keep_certificate(self, cert: KeptCertificate) -> None:
        self._certificates[cert.serial] = cert

    async def reserve_order_time(self, order_id: str, txn_time: str, kind: str) -> OrderTime:
        return self._times.setdefault(order_id, OrderTime(txn_time, kind))

    async def order_time(self, order_id: str) -> OrderTime | None:
        return self._times.get(order_id)
