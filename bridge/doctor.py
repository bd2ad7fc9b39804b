"""``his-bridge doctor``: what an on-call operator checks first, each finding with the fix.

Every check yields OK, WARN or FAIL and never stops the others, so one run shows everything that is wrong:
config and profile, keys and certificates (and days to expiry), the HIS (a harmless ``trade.check`` on a
number that cannot exist), the clock against the platform (request signatures carry a timestamp), the journal's
disk (free space, fsync latency), the journal itself (backlog, entries in doubt or quarantined), the way out for
the hospital's terminals (keys, the gateway over mutual TLS, what waits in the outbound journal) and whether the
running agent answers its readiness probe. The exit code is the worst finding: 0 OK, 1 WARN, 2 FAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import shutil
import sqlite3
import ssl
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from adapters.base import AdapterError, ErrorKind
from adapters.profile import ProfileError, load_profile
from bridge import catalog, protocol, tls
from bridge.config import BridgeConfig, ConfigError, load_config
from bridge.egress.check import check_outbound
from bridge.egress.gateway import GatewayClient as EgressClient
from bridge.journal import JournalError, open_file
from bridge.settings import parse_host_port
from bridge.wiring import build_adapter

MIB = 1024 * 1024


class Level(IntEnum):
    OK = 0
    WARN = 1
    FAIL = 2


@dataclass(frozen=True)
class Finding:
    level: Level
    what: str
    fix: str = ""

    def text(self) -> str:
        line = f"{self.level.name:<5} {self.what}"
        return line + (f"\n      fix: {self.fix}" if self.fix and self.level is not Level.OK else "")


@dataclass
class Thresholds:
    cert_warn_days: float = 30
    disk_warn_bytes: int = 1024 * MIB
    disk_fail_bytes: int = 100 * MIB
    fsync_warn_s: float = 0.05
    skew_warn_s: float = 10
    backlog_warn: int = 100
    pending_warn_s: float = 900
    his_timeout_s: float = 10
    egress_wait_warn_s: float = 3600
    """A refund queued for the platform, or a terminal payment in doubt, this long is worth a look."""


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: Level, what: str, fix: str = "") -> None:
        self.findings.append(Finding(level, what, fix))

    @property
    def worst(self) -> Level:
        return max((f.level for f in self.findings), default=Level.OK)

    def text(self) -> str:
        counts = {lvl: sum(1 for f in self.findings if f.level is lvl) for lvl in Level}
        summary = f"doctor: {counts[Level.FAIL]} FAIL, {counts[Level.WARN]} WARN, {counts[Level.OK]} OK"
        return "\n".join([*(f.text() for f in self.findings), summary])


def run(
    config_path: str | Path,
    *,
    platform_url: str | None = None,
    thresholds: Thresholds | None = None,
    clock: Callable[[], float] = time.time,
) -> Report:
    t = thresholds or Thresholds()
    report = Report()
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        report.add(Level.FAIL, f"config: {e}", f"correct the config; `his-bridge check --config {config_path}`")
        return report
    report.add(Level.OK, f"config {config_path}: valid")
    profile = check_profile(cfg, report)
    check_keys(cfg, report)
    check_certificates(cfg, report, t)
    if profile is not None:
        asyncio.run(check_his(cfg, report, t))
    check_clock(cfg, report, platform_url, t, clock)
    check_disk(cfg, report, t)
    check_journal(cfg, report, t, clock)
    if cfg.egress is not None:
        asyncio.run(check_egress(cfg, report, t, clock))
    check_agent(cfg, report)
    return report


def check_profile(cfg: BridgeConfig, report: Report) -> object | None:
    try:
        profile = load_profile(
            cfg.his.profile,
            known_operations=frozenset(catalog.OPERATIONS),
            read_operations=catalog.READ_OPERATIONS,
            overrides=cfg.his.overrides,
        )
    except ProfileError as e:
        report.add(Level.FAIL, f"profile: {e}", f"`his-bridge check --profile {cfg.his.profile}` shows each problem")
        return None
    missing = sorted(set(catalog.OPERATIONS) - set(profile.operations))
    if "trade.check" not in profile.operations:
        report.add(
            Level.FAIL,
            f"profile {profile.name}: binds no trade.check; in-doubt writes could never be settled",
            "bind trade.check to the HIS's status query",
        )
    elif missing:
        report.add(
            Level.WARN,
            f"profile {profile.name}: does not bind {', '.join(missing)}",
            "bind them, or make sure the platform never calls them for this hospital",
        )
    else:
        report.add(Level.OK, f"profile {profile.name} ({profile.protocol}): every operation bound")
    return profile


def check_keys(cfg: BridgeConfig, report: Report) -> None:
    try:
        protocol.load_signing_key(cfg.signing.key_id, cfg.signing.key)
        for c in cfg.signing.clients:
            protocol.load_verify_key(c.key_id, c.public_key)
    except (OSError, ValueError) as e:
        report.add(Level.FAIL, f"signing keys: {e}", "restore the key files named in [signing] (mode 0600 for ours)")
        return
    mode = cfg.signing.key.stat().st_mode & 0o077
    if mode:
        report.add(Level.WARN, f"signing key {cfg.signing.key} is readable by others", f"chmod 600 {cfg.signing.key}")
    else:
        report.add(
            Level.OK, f"signing keys: ours ({cfg.signing.key_id}) and {len(cfg.signing.clients)} platform key(s)"
        )


def check_certificates(cfg: BridgeConfig, report: Report, t: Thresholds) -> None:
    import datetime as dt

    from cryptography.hazmat.primitives import serialization

    now = dt.datetime.now(dt.UTC)
    renew = "`his-bridge csr --config FILE` makes a new key and CSR for the platform CA; then docs/OPERATIONS.md"
    for name, path in (("server certificate", cfg.tls.cert), ("platform CA", cfg.tls.client_ca)):
        try:
            cert = tls.load_certificate(path)
        except (OSError, ValueError) as e:
            report.add(Level.FAIL, f"{name} {path}: {e}", "put the PEM certificate there (see docs/OPERATIONS.md)")
            continue
        days = tls.days_to_expiry(cert, now)
        if cert.not_valid_before_utc > now:
            report.add(
                Level.FAIL,
                f"{name} {path}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z",
                "check this host's clock, or wait for the certificate's start",
            )
        elif days < 0:
            report.add(Level.FAIL, f"{name} {path}: expired {-days:.0f} days ago", renew)
        elif days < t.cert_warn_days:
            report.add(Level.WARN, f"{name} {path}: expires in {days:.0f} days", renew)
        else:
            report.add(Level.OK, f"{name} {path}: {days:.0f} days to expiry")
        if name == "server certificate":
            try:
                key = serialization.load_pem_private_key(Path(cfg.tls.key).read_bytes(), password=None)
            except (OSError, ValueError, TypeError) as e:
                report.add(Level.FAIL, f"server key {cfg.tls.key}: {e}", "restore the key the CSR was made from")
                continue
            spki = serialization.PublicFormat.SubjectPublicKeyInfo
            der = serialization.Encoding.DER
            if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
                report.add(
                    Level.FAIL,
                    f"server certificate {path} was not issued for the key {cfg.tls.key}",
                    "install the certificate issued for this key's CSR (or the key that goes with it)",
                )


async def check_his(cfg: BridgeConfig, report: Report, t: Thresholds) -> None:
    adapter = build_adapter(cfg)
    probe = {"trade_no": f"DOCTOR{int(time.time())}", "operation": "charge.commit"}
    fix = f"check the HIS is up and that this host may reach {adapter.endpoint} (firewall, DNS, [his] overrides)"
    tried = f"HIS {adapter.protocol} at {adapter.addresses()}"
    try:
        await asyncio.wait_for(adapter.start(), t.his_timeout_s)
        tried = f"HIS {adapter.protocol} at {adapter.addresses()}"  # the WSDL may have named the service
        result = await asyncio.wait_for(adapter.call("trade.check", probe), t.his_timeout_s)
        report.add(Level.OK, f"{tried}: answered trade.check (found={result.get('found')})")
    except AdapterError as e:
        if e.kind is ErrorKind.permanent:
            report.add(Level.OK, f"{tried}: reachable; refused the probe: {e.code}")
        else:
            report.add(Level.FAIL, f"{tried}: unreachable: {e.message}", fix)
    except TimeoutError:
        report.add(Level.FAIL, f"{tried}: no answer within {t.his_timeout_s:.0f} s", fix)
    except Exception as e:
        report.add(Level.FAIL, f"{tried}: {type(e).__name__}: {e}", fix)
    finally:
        try:
            await adapter.close()
        except Exception:
            pass


def platform_skew(url: str, cafile: Path | None, clock: Callable[[], float] = time.time) -> float:
    """Seconds our clock is ahead of the platform's (negative: behind), from its HTTP ``Date`` header, taken
    against the midpoint of the request."""
    ctx = ssl.create_default_context()
    if cafile is not None and cafile.exists():
        ctx.load_verify_locations(cafile=str(cafile))
    request = urllib.request.Request(url, method="HEAD")
    sent = clock()
    try:
        with urllib.request.urlopen(request, timeout=10, context=ctx) as resp:
            date = resp.headers.get("Date")
    except urllib.error.HTTPError as e:
        date = e.headers.get("Date")
    received = clock()
    if not date:
        raise ValueError(f"{url} sent no Date header")
    theirs = email.utils.parsedate_to_datetime(date).timestamp()
    return (sent + received) / 2 - theirs


def check_clock(cfg: BridgeConfig, report: Report, url: str | None, t: Thresholds, clock: Callable[[], float]) -> None:
    window = cfg.signing.timestamp_window_s
    if url is None:
        report.add(
            Level.WARN, "clock skew not checked", "pass --platform-url https://<platform host>/ to compare clocks"
        )
        return
    try:
        skew = platform_skew(url, cfg.tls.client_ca, clock)
    except (OSError, ValueError) as e:
        report.add(
            Level.WARN,
            f"clock skew: cannot read the platform's time from {url}: {e}",
            "check the URL and that this host may reach the platform",
        )
        return
    ahead = "ahead of" if skew > 0 else "behind"
    what = f"clock {abs(skew):.0f} s {ahead} the platform"
    fix = "synchronise this host's clock (systemd-timesyncd or chrony against the hospital's NTP server)"
    if abs(skew) >= window / 2:
        report.add(Level.FAIL, f"{what}: signed requests are refused beyond {window} s", fix)
    elif abs(skew) > t.skew_warn_s:
        report.add(Level.WARN, what, fix)
    else:
        report.add(Level.OK, what)


def check_disk(cfg: BridgeConfig, report: Report, t: Thresholds) -> None:
    folder = cfg.journal.path.parent
    if not folder.is_dir():
        report.add(
            Level.FAIL,
            f"journal folder {folder} does not exist",
            f"create it, writable by the agent's user: install -d -o his-bridge -m 0750 {folder}",
        )
        return
    free = shutil.disk_usage(folder).free
    what = f"journal disk {folder}: {free / MIB:.1f} MiB free"
    fix = "free space on that filesystem, or move the journal (docs/OPERATIONS.md); writes are refused when it is full"
    if free < t.disk_fail_bytes:
        report.add(Level.FAIL, f"{what} (below {t.disk_fail_bytes / MIB:.0f} MiB)", fix)
    elif free < t.disk_warn_bytes:
        report.add(Level.WARN, f"{what} (below {t.disk_warn_bytes / MIB:.0f} MiB)", fix)
    else:
        report.add(Level.OK, what)
    try:
        latency = fsync_latency(folder)
    except OSError as e:
        report.add(
            Level.FAIL,
            f"journal disk {folder}: cannot write and fsync a file: {e}",
            "the agent could not commit either: free space, check permissions and the disk's health",
        )
        return
    what = f"journal disk fsync: {latency * 1000:.1f} ms"
    if latency > t.fsync_warn_s:
        report.add(Level.WARN, what, "a slow or shared disk slows every write; use a local SSD, never a network share")
    else:
        report.add(Level.OK, what)


def fsync_latency(folder: Path, rounds: int = 5) -> float:
    """The median time to write and fsync one small page beside the journal."""
    times = []
    fd, name = tempfile.mkstemp(prefix=".doctor-", dir=folder)
    try:
        for _ in range(rounds):
            os.write(fd, b"\0" * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        os.unlink(name)
    return statistics.median(times)


def check_journal(cfg: BridgeConfig, report: Report, t: Thresholds, clock: Callable[[], float]) -> None:
    path = cfg.journal.path
    if not path.exists():
        report.add(Level.OK, f"journal {path}: not created yet (the agent creates it at first start)")
        return
    try:
        conn = open_file(path, create=False)
    except JournalError as e:
        report.add(
            Level.FAIL,
            f"journal: {e}",
            "never delete it: stop the agent, move the file aside, restore the last backup (docs/OPERATIONS.md)",
        )
        return
    try:
        counts = dict(conn.execute("SELECT state, COUNT(*) FROM entries GROUP BY state").fetchall())
        oldest = conn.execute(
            "SELECT MIN(created_at) FROM entries WHERE state IN ('accepted', 'in_flight', 'unknown')"
        ).fetchone()[0]
    finally:
        conn.close()
    backlog = counts.get("accepted", 0) + counts.get("in_flight", 0)
    age = clock() - oldest if oldest else 0.0
    what = f"journal backlog: {backlog} waiting for the HIS, oldest {age:.0f} s"
    if backlog > t.backlog_warn or age > t.pending_warn_s:
        report.add(Level.WARN, what, "the HIS is not taking writes: see the HIS line above and the breaker metric")
    else:
        report.add(Level.OK, what)
    unknown = counts.get("unknown", 0)
    if unknown:
        report.add(
            Level.WARN,
            f"journal: {unknown} entries in doubt (waiting for trade.check)",
            "they settle by themselves once the HIS answers trade.check; `his-bridge journal list --state unknown`",
        )
    else:
        report.add(Level.OK, "journal: no entries in doubt")
    quarantined = counts.get("quarantined", 0)
    if quarantined:
        report.add(
            Level.FAIL,
            f"journal: {quarantined} entries quarantined",
            "`his-bridge journal list --state quarantined`, check each in the HIS, then `retry` or `resolve`",
        )
    else:
        report.add(Level.OK, "journal: nothing quarantined")


async def check_egress(cfg: BridgeConfig, report: Report, t: Thresholds, clock: Callable[[], float]) -> None:
    """The kiosks' and windows' door out: the terminals' and apps' keys and certificates, the gateway's
    mutual-TLS listener, and what waits in the outbound journal."""
    egress = cfg.egress
    assert egress is not None
    problems: list[str] = []
    notes: list[str] = []
    check_outbound(cfg, problems, notes)
    for problem in problems:
        report.add(Level.FAIL, problem, "`his-bridge check --config FILE` shows the same; fix the file, then reload")
    for note in notes:
        report.add(Level.WARN if "plain HTTP" in note else Level.OK, note)
    client = EgressClient(egress)
    try:
        reachable = await client.reachable()
    finally:
        await client.close()
    if reachable:
        report.add(Level.OK, f"egress: the gateway {egress.gateway_url} answers over mutual TLS")
    else:
        report.add(
            Level.FAIL,
            f"egress: cannot reach the gateway {egress.gateway_url} over mutual TLS: kiosk payments fail at once, "
            "window refunds queue",
            "check the DMZ's route and firewall to the platform, the client certificate and the gateway CA",
        )
    if not egress.journal.exists():
        report.add(Level.OK, f"outbound journal {egress.journal}: none yet")
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{egress.journal}?mode=ro", uri=True)) as conn:
            rows = conn.execute(
                "SELECT state, COUNT(*), MIN(created_at) FROM requests WHERE state IN ('queued', 'in_doubt') "
                "GROUP BY state"
            ).fetchall()
    except sqlite3.Error as e:
        report.add(Level.FAIL, f"outbound journal {egress.journal}: cannot be read: {e}", "his-bridge egress list")
        return
    waiting = {state: (count, oldest) for state, count, oldest in rows}
    if not waiting:
        report.add(Level.OK, f"outbound journal {egress.journal}: nothing waiting")
        return
    for state, (count, oldest) in sorted(waiting.items()):
        age = clock() - oldest
        what = f"outbound journal: {count} {state.replace('_', ' ')}, the oldest {age / 60:.0f} min"
        fix = "the link to the platform is down or the gateway refuses: his-bridge egress list --state " + state
        report.add(
            Level.WARN if age > t.egress_wait_warn_s else Level.OK, what, fix if age > t.egress_wait_warn_s else ""
        )


def check_agent(cfg: BridgeConfig, report: Report) -> None:
    import json

    host, port = parse_host_port(cfg.server.ops_listen)
    if port == 0:
        return
    host = "127.0.0.1" if host == "0.0.0.0" else host
    url = f"http://{host}:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    except (OSError, ValueError) as e:
        report.add(
            Level.WARN,
            f"agent: not answering on {url}: {e}",
            "start it: systemctl start his-bridge; then journalctl -u his-bridge",
        )
        return
    if body.get("ready"):
        report.add(Level.OK, f"agent: ready ({url})")
    elif body.get("journal_writable") is False:
        report.add(
            Level.FAIL,
            f"agent: cannot commit its journal: {body.get('journal_error')}",
            "free space on the journal's disk; the agent recovers by itself",
        )
    else:
        report.add(Level.FAIL, f"agent: not ready ({url}): {body}", "journalctl -u his-bridge shows why")
