"""Prometheus figures for the channels' keys, read from the channels at each scrape.

``hisgateway_channel_key_expiry_timestamp_seconds`` gives, for every key a merchant signs with or will sign with
(active, standby) and every channel key or certificate it trusts, when it stops being usable: its certificate's
expiry or its ``retire_after``, whichever comes first, +Inf when neither exists (a bare public key). Expired ones
stay listed with their past time until the config drops them. ``max by (merchant, channel, role)`` is how long the
merchant can still sign, verify or check the chain: the alerts in config/monitoring watch it.
``hisgateway_channel_signing_keys_usable`` counts the keys that may sign right now (0: every payment fails).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge import clock as shared_clock
from gateway.channels.base import Channel
from gateway.channels.keys import KeyInfo, KeyRole, KeyStatus

EXPORTED = frozenset({KeyStatus.active, KeyStatus.standby, KeyStatus.expired})


def usable_until(info: KeyInfo) -> float:
    ends = [t for t in (info.not_after, info.retire_after) if t is not None]
    return min(ends).timestamp() if ends else math.inf


class ChannelKeyCollector(Collector):
    def __init__(self, channels: Mapping[str, Channel], clock: Callable[[], dt.datetime] | None = None) -> None:
        self.channels = channels
        self.clock = clock or shared_clock.utcnow

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "hisgateway_channel_key_expiry_timestamp_seconds",
            "When a channel key stops being usable (certificate expiry or retire_after; +Inf: never).",
            labels=["merchant", "channel", "role", "key", "serial"],
        )
        usable = GaugeMetricFamily(
            "hisgateway_channel_signing_keys_usable",
            "Merchant keys that may sign requests now.",
            labels=["merchant", "channel"],
        )
        now = self.clock()
        for merchant, channel in sorted(self.channels.items()):
            rows = channel.key_inventory(now)
            for info in rows:
                if info.watched and info.status in EXPORTED:
                    labels = [merchant, info.channel, info.role.value, info.id, info.serial]
                    expiry.add_metric(labels, usable_until(info))
            signing = [r for r in rows if r.role is KeyRole.signs]
            if signing:
                ready = sum(r.status in (KeyStatus.active, KeyStatus.superseded) for r in signing)
                usable.add_metric([merchant, channel.name], float(ready))
        yield expiry
        yield usable


def registry(channels: Mapping[str, Channel]) -> CollectorRegistry:
    made = CollectorRegistry()
    made.register(ChannelKeyCollector(channels))
    return made
