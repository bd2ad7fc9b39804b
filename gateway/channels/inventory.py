"""The doctor's view of a merchant's keys: for each role (signs, verifies, anchors) how long the merchant can
still do it, judged by the last key of that role to lapse — one key about to expire is fine if its successor is
already configured — with what to do about it. The same rule drives the ``HisGatewayChannelKey*`` alerts."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from enum import IntEnum

from gateway.channels.keys import EXPIRY_WARNING, KeyInfo, KeyRole, KeyStatus
from gateway.channels.metrics import usable_until


class Level(IntEnum):
    OK = 0
    WARN = 1
    FAIL = 2


@dataclass(frozen=True)
class Finding:
    level: Level
    merchant: str
    what: str
    fix: str = ""


FIXES = {
    KeyRole.signs: "configure the next merchant key next to this one (merchant_keys, with valid_from) after "
    "registering it with the channel; see docs/CHANNELS.md#keys-and-their-rotation",
    KeyRole.verifies: "WeChat: check that certificate downloads work (his-gateway logs channel_trust_refresh_failed); "
    "Alipay: the next certificate is fetched when Alipay first signs with it; configure a new one if the "
    "channel has announced a change",
    KeyRole.anchors: "install the channel's new root/intermediate certificate files and restart",
}


def _lasting(t: float) -> str:
    if math.isinf(t):
        return "no expiry (a bare key)"
    return "valid until " + dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")


def check(
    merchant: str, rows: list[KeyInfo], now: dt.datetime, *, warn: dt.timedelta = EXPIRY_WARNING
) -> list[Finding]:
    out: list[Finding] = []
    channel = rows[0].channel if rows else "?"
    for role in KeyRole:
        mine = [r for r in rows if r.role is role and r.watched]
        if not mine:
            continue
        if role is KeyRole.signs and not any(r.status in (KeyStatus.active, KeyStatus.superseded) for r in mine):
            states = ", ".join(f"{r.id} {r.status.value}" for r in mine)
            out.append(Finding(Level.FAIL, merchant, f"{channel}: no key may sign now ({states})", FIXES[role]))
            continue
        live = [r for r in mine if r.status in (KeyStatus.active, KeyStatus.standby, KeyStatus.superseded)]
        last = max((usable_until(r) for r in live), default=-math.inf)
        left = last - now.timestamp()
        what = f"{channel} {role.value}: {_lasting(last)}"
        if left < 0:
            out.append(Finding(Level.FAIL, merchant, f"{channel} {role.value}: every key has expired", FIXES[role]))
        elif left < warn.total_seconds():
            days = left / 86400
            out.append(Finding(Level.WARN, merchant, f"{what} ({days:.0f} days left)", FIXES[role]))
        else:
            out.append(Finding(Level.OK, merchant, what))
        for r in mine:
            if r.status in (KeyStatus.retired, KeyStatus.expired) or (
                r.status is KeyStatus.superseded and r.expires_within(dt.timedelta(0), now)
            ):
                out.append(
                    Finding(Level.OK, merchant, f"{channel} {role.value} {r.id}: {r.status.value}, can be removed")
                )
    return out
