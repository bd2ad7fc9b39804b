"""A merchant's channel as the gateway runs it: the client ``factory`` builds, with its run-time memory in the
database. The one place the channel clients meet the store, so that the clients themselves keep nothing."""

from __future__ import annotations

from gateway.channels.base import Channel
from gateway.channels.factory import build_channel, channel_config
from gateway.config import MerchantConfig
from gateway.store.channel_state import SqlChannelState
from gateway.store.db import Database


def merchant_channel(merchant: MerchantConfig, db: Database | None = None) -> Channel:
    """The merchant's channel; with ``db`` its run-time memory (fetched certificates, UnionPay order times) is
    the database, shared by every instance."""
    state = SqlChannelState(db, merchant.id) if db is not None else None
    return build_channel(channel_config(merchant.channel, merchant.channel_settings()), state=state)
