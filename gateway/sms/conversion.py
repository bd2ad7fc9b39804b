"""Conversion: the share of codes that get verified, per scope, and the escalation it drives.

Patients type in the codes they asked for; a pump's codes go unread, however the pump spreads its traffic over
addresses, devices and numbers. So every code is tagged, when sent, with the scopes it counts in:

- rate scopes — ``gw`` (the whole gateway), ``seg/{号段}`` (the number's first digits, gateway-wide) and
  ``hp/{hospital}/{purpose}/{assurance}`` — whose verify rate over a sliding window decides their level;
- source scopes — ``ip/…``, ``net/…`` (the address's /16), ``dev/…`` (a fingerprinted device), ``id/…`` (an app
  identity) — whose failed codes per day taint the source.

A code settles once: ``verified`` when checked, or ``failed`` when ``sms.conversion_grace_s`` passed without it (a later
verification moves it back), so the rate is measured on outcomes, never on codes still in a patient's hands.

A rate scope's level: 1 (captcha) when the rate's Wilson upper bound is below the band, 2 (refuse past a hard
cap) when it is below ``refuse_ratio`` × the band, with at least ``min_codes`` settled; held for ``hold_s``,
dropped at once when the rate's lower bound is back in band. Levels live in ``sms_escalations``, shared by
every instance; each change is audited, counted and exported for the alert rules.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.services import log
from gateway.sms.clock import Clock
from gateway.sms.config import DAY_S, ConversionPolicy, Policy
from gateway.sms.layers import OtpRequest
from gateway.sms.limits_store import Counters, Window
from gateway.sms.metrics import SmsMetrics
from gateway.sms.phones import segment
from gateway.store import audit
from gateway.store.db import Database
from gateway.store.sms_tables import sms_escalations

GATEWAY = "gw"
ESCALATED = ("identified", "open", "bare")
"""The assurances a rate scope's level applies to: ``identified`` only through its own hospital scope and only
ever up to a captcha (identity caps carry the hard limit there); ``known`` and ``onsite`` never."""


def subnet(ip: str) -> str:
    """The /16 of an IPv4 address, the /48 of an IPv6 one."""
    address = ipaddress.ip_address(ip)
    prefix = 16 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def rate_scopes(req: OtpRequest, policy: Policy) -> list[str]:
    return [
        GATEWAY,
        f"seg/{segment(req.phone, policy.segment.prefix_len)}",
        f"hp/{req.hospital_id}/{req.purpose}/{req.assurance}",
    ]


def source_scopes(req: OtpRequest) -> list[str]:
    scopes = [
        f"ph/{req.subject.phone_hash[:32]}",
        f"ip/{req.ip_hash[:32]}" if req.ip_hash else f"ip/none/{req.hospital_id}",
    ]
    if req.subnet_hash:
        scopes.append(f"net/{req.subnet_hash[:32]}")
    if req.device and req.has_fingerprint:
        scopes.append(f"dev/{req.device}")
    if req.identity_hash:
        scopes.append(f"id/{req.identity_hash[:32]}")
    return scopes


def applies(scope: str, assurance: str) -> bool:
    """Whether a rate scope's level applies to a request of this assurance."""
    if assurance not in ESCALATED:
        return False
    if scope.startswith("hp/"):
        return scope.endswith(f"/{assurance}")
    return assurance != "identified"


def _is_rate_scope(scope: str) -> bool:
    return scope == GATEWAY or scope.startswith(("seg/", "hp/"))


def outcome_windows(scope: str, outcome: str, c: ConversionPolicy, at: float | None = None) -> list[Window]:
    """Where a settled code of this scope is counted: in the windows holding the moment it settled."""
    if _is_rate_scope(scope):
        keep = math.ceil(c.window_s / c.bucket_s) + 2
        return [
            Window(f"cv/{scope}/{outcome}", c.bucket_s, keep=keep, at=at),
            Window(f"cvd/{scope}/{outcome}", DAY_S, keep=c.history_days + 2, at=at),
        ]
    return [Window(f"cvf/{scope}", DAY_S, at=at)] if outcome == "failed" else []


def wilson(ok: int, n: int, z: float) -> tuple[float, float]:
    """The one-sided Wilson bounds of a rate of ``ok`` in ``n``."""
    if n == 0:
        return 0.0, 1.0
    p = ok / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (centre - spread) / (1 + z2 / n), (centre + spread) / (1 + z2 / n)


@dataclass(frozen=True)
class ScopeState:
    scope: str
    level: int
    verified: int
    failed: int
    band: float

    @property
    def rate(self) -> float | None:
        n = self.verified + self.failed
        return self.verified / n if n else None


def _kind(scope: str) -> tuple[str, str, str, str]:
    """Metric labels (kind, hospital, purpose, assurance) of a rate scope."""
    if scope.startswith("hp/"):
        _, hospital, purpose, assurance = scope.split("/")
        return "hospital", hospital, purpose, assurance
    return ("segment" if scope.startswith("seg/") else "gateway"), "*", "*", "*"


class Conversion:
    def __init__(self, counters: Counters, db: Database, clock: Clock, metrics: SmsMetrics) -> None:
        self.counters = counters
        self.db = db
        self.clock = clock
        self.metrics = metrics
        self._normal: dict[str, tuple[float, float]] = {}
        self._segments: dict[str, tuple[int, float]] = {}

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    async def record(
        self, scopes: Sequence[str], outcome: str, amount: int, c: ConversionPolicy, at: float | None = None
    ) -> None:
        """Count ``amount`` codes (negative to take back a failure) as ``verified`` or ``failed``."""
        await self.counters.hit_many([(w, amount) for s in scopes for w in outcome_windows(s, outcome, c, at)])

    async def tainted(self, req: OtpRequest, c: ConversionPolicy) -> list[str]:
        """The request's sources with too many failed codes today."""
        limits = {"ip": c.ip_failures, "net": c.subnet_failures, "dev": c.device_failures}
        scopes = [s for s in source_scopes(req) if s.split("/")[0] in limits]
        counts = await self.counters.peek([Window(f"cvf/{s}", DAY_S) for s in scopes])
        return [s.split("/")[0] for s, n in zip(scopes, counts, strict=True) if n >= limits[s.split("/")[0]]]

    async def phone_failed(self, req: OtpRequest, c: ConversionPolicy) -> bool:
        """Whether a code to this number went unverified today."""
        (failed,) = await self.counters.peek([Window(f"cvf/ph/{req.subject.phone_hash[:32]}", DAY_S)])
        return failed >= c.phone_failures

    async def _normal_rate(self, scope: str, c: ConversionPolicy) -> float:
        """The scope's verify rate over its last ``history_days`` (cached for ten minutes), or the safe default.
        Segments are too thin to learn from alone: they use the default."""
        if scope.startswith("seg/"):
            return c.normal_rate
        cached = self._normal.get(scope)
        if cached is not None and cached[1] > self.clock():
            return cached[0]
        back = range(1, c.history_days + 1)
        windows = [Window(f"cvd/{scope}/{o}", DAY_S, back=b) for o in ("verified", "failed") for b in back]
        counts = await self.counters.peek(windows)
        ok, failed = sum(counts[: len(back)]), sum(counts[len(back) :])
        rate = ok / (ok + failed) if ok + failed >= c.history_min_codes else c.normal_rate
        self._normal[scope] = (rate, self.clock() + 600)
        return rate

    async def states(self, scopes: Sequence[str], c: ConversionPolicy, actor: str) -> list[ScopeState]:
        """Each rate scope's level now, moving it up or down (and telling operators) where the rates say so."""
        buckets = math.ceil(c.window_s / c.bucket_s)
        windows = [
            Window(f"cv/{s}/{o}", c.bucket_s, back=b)
            for s in scopes
            for o in ("verified", "failed")
            for b in range(buckets + 1)
        ]
        windows += [Window(f"cvd/{s}/{o}", DAY_S) for s in scopes for o in ("verified", "failed")]
        values = await self.counters.peek(windows)
        today = iter(values[-2 * len(scopes) :])
        counts = iter(values[: -2 * len(scopes)])
        async with self.db.read() as conn:
            rows = await conn.execute(sa.select(sms_escalations).where(sms_escalations.c.scope.in_(scopes)))
            held = {r.scope: r for r in rows}
        now = self._now()
        out = []
        for scope in scopes:
            ok = max(0, sum(next(counts) for _ in range(buckets + 1)))
            failed = max(0, sum(next(counts) for _ in range(buckets + 1)))
            band = min(c.band_ceiling, max(c.band_floor, await self._normal_rate(scope, c) * c.band_ratio))
            n = ok + failed
            lower, upper = wilson(ok, n, c.z)
            evidence = 0
            if n >= c.min_codes and upper < band:
                evidence = 2 if upper < band * c.refuse_ratio else 1
            healthy = n >= c.min_codes and lower >= band
            day_ok, day_failed = next(today), next(today)
            row = held.get(scope)
            current = row.level if row is not None else 0
            held_on = row is not None and row.held_until > now
            if not held_on and current > evidence and not healthy:
                # The hold ran out with nothing new: today's rate decides, so that a pump held off by the level
                # does not win a fresh allowance every ``hold_s``.
                held_on = day_ok + day_failed >= c.min_codes and wilson(day_ok, day_ok + day_failed, c.z)[1] < band
                if held_on:
                    evidence = current
            rising_or_steady = evidence > current or (evidence == current and evidence > 0)
            level = evidence if rising_or_steady or healthy or not held_on else current
            state = ScopeState(scope, level, ok, failed, band)
            if level != current or (level > 0 and evidence == level):
                await self._store(state, current, row, now, c, actor)
            self._export(state)
            out.append(state)
        return out

    async def _store(
        self, state: ScopeState, previous: int, row: Any, now: dt.datetime, c: ConversionPolicy, actor: str
    ) -> None:
        held_until = now + dt.timedelta(seconds=c.hold_s)
        if state.level == previous and row is not None and row.held_until - now > dt.timedelta(seconds=c.hold_s / 2):
            return
        values = {
            "level": state.level,
            "held_until": held_until,
            "verified": state.verified,
            "failed": state.failed,
            "band": state.band,
        }
        t = sms_escalations
        async with self.db.write() as conn:
            if state.level == previous:
                await conn.execute(sa.update(t).where(t.c.scope == state.scope).values(**values))
                return
            if row is None:
                insert = postgresql.insert if self.db.is_postgres else sqlite.insert
                first = insert(t).values(scope=state.scope, since=now, **values).on_conflict_do_nothing()
                changed = (await conn.execute(first)).rowcount == 1
            else:
                step = sa.update(t).where(t.c.scope == state.scope, t.c.level == previous)
                changed = (await conn.execute(step.values(since=now, **values))).rowcount == 1
            if not changed:
                return
            detail = {
                "scope": state.scope,
                "from": previous,
                "to": state.level,
                "verified": state.verified,
                "failed": state.failed,
                "rate": None if state.rate is None else round(state.rate, 3),
                "band": round(state.band, 3),
            }
            action = "sms.scope_escalated" if state.level > previous else "sms.scope_recovered"
            await audit.record(conn, actor, action, f"sms-scope:{state.scope}", detail)
        kind, hospital, purpose, assurance = _kind(state.scope)
        direction = "up" if state.level > previous else "down"
        self.metrics.escalations.labels(kind, hospital, purpose, assurance, direction, str(state.level)).inc()
        log.warning("sms_scope_level", **detail)

    def _export(self, state: ScopeState) -> None:
        kind, hospital, purpose, assurance = _kind(state.scope)
        level = state.level
        if kind == "segment":
            now = self.clock()
            if level:
                self._segments[state.scope] = (level, now)
            else:
                self._segments.pop(state.scope, None)
            for scope, (_, seen) in list(self._segments.items()):
                if seen < now - DAY_S:
                    del self._segments[scope]
            levels = [lv for lv, _ in self._segments.values()]
            level = max(levels, default=0)
            self.metrics.hot_segments.set(len(levels))
        self.metrics.scope_level.labels(kind, hospital, purpose, assurance).set(level)

    async def cap_reached(self, scope: str, verified: int, c: ConversionPolicy) -> bool:
        """Count one send against a level-2 scope's hard cap; True past it."""
        cap = c.cap_floor + math.floor(c.cap_headroom * verified)
        (sent,) = await self.counters.hit([Window(f"cvcap/{scope}", c.cap_window_s)])
        return sent > cap
