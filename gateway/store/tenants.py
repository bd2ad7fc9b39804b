"""Hospitals, apps and merchants as rows: read whole by every instance, changed one at a time by the CLI, the
console and the import of a config's blocks.

Every change is compared with the row first, so writing what is already there changes nothing (an import run
twice, a form saved twice). A real change is written with its audit entry and a bump of the tenants' version
in one transaction; on PostgreSQL the transaction also sends ``NOTIFY``, so instances reload within moments
(the others notice the version on their next poll).

Who manages a row is its ``source``. ``config`` rows follow the gateway config's blocks, re-imported at every
start (as before tenants lived in the database); once a row is changed by the CLI, the console or an explicit
import, the database owns it and the config's block for it is ignored from then on (with a warning), so a
restart never undoes an operator's change.

Secrets are never stored: a hospital's agent link names its key files, a merchant's settings name key files and
``{file = …}`` / ``{env = …}`` secrets (the channel settings have no field for a secret's value).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from pydantic_core import to_jsonable_python
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge import protocol
from gateway.channels import factory
from gateway.config import DEFAULT_OPERATIONS, AppConfig, BridgeLink, HospitalConfig, MerchantConfig
from gateway.model import HisCommit, RefundPolicy, utcnow
from gateway.store import audit
from gateway.store.db import Database
from gateway.store.platform_tables import app_keys, tenants_version
from gateway.store.tables import apps, hospitals, merchants

log = structlog.get_logger("gateway.tenants")

NOTIFY_CHANNEL = "hisgateway_tenants"
Source = Literal["config", "import", "cli", "console"]
Outcome = Literal["added", "updated", "unchanged", "skipped"]
"""``skipped``: a config block for a row the database owns now."""


class TenantError(ValueError):
    """A change that cannot be made; the message says why (unknown hospital, bad key, bad settings…)."""


@dataclass(frozen=True)
class AppKey:
    name: str
    public_key_pem: str
    added_at: dt.datetime
    valid_from: dt.datetime | None = None
    retire_at: dt.datetime | None = None

    def valid_at(self, now: dt.datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= now) and (self.retire_at is None or now < self.retire_at)

    def verify_key(self, app_id: str) -> protocol.VerifyKey:
        return protocol.VerifyKey(app_id, serialization.load_pem_public_key(self.public_key_pem.encode()))  # type: ignore[arg-type]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key_pem)


@dataclass(frozen=True)
class HospitalRow:
    id: str
    name: str
    refund_policy: str
    enabled: bool
    recon_at: str | None
    bridge: dict[str, Any] | None
    read_cache: dict[str, int]
    source: str
    updated_at: dt.datetime
    his_commit: str = HisCommit.gateway.value

    def config(self) -> HospitalConfig:
        return HospitalConfig(
            id=self.id,
            name=self.name,
            refund_policy=RefundPolicy(self.refund_policy),
            bridge=BridgeLink.model_validate(self.bridge) if self.bridge else None,
            recon_at=self.recon_at,
            enabled=self.enabled,
            read_cache=self.read_cache,
            his_commit=HisCommit(self.his_commit),
        )


@dataclass(frozen=True)
class MerchantRow:
    id: str
    channel: str
    hospital_id: str
    enabled: bool
    settings: dict[str, Any]
    source: str
    updated_at: dt.datetime

    def config(self) -> MerchantConfig:
        return MerchantConfig.model_validate(
            {
                **self.settings,
                "id": self.id,
                "channel": self.channel,
                "hospital": self.hospital_id,
                "enabled": self.enabled,
            }
        )


@dataclass(frozen=True)
class AppRow:
    id: str
    hospital_id: str
    notify_url: str | None
    enabled: bool
    operations: tuple[str, ...] | None
    keys: tuple[AppKey, ...]
    source: str
    updated_at: dt.datetime
    notify_hosts: tuple[str, ...] = ()
    kind: str = "app"
    his_commit: str | None = None
    client_cert_cn: str | None = None

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset(self.operations if self.operations is not None else DEFAULT_OPERATIONS)

    def valid_keys(self, now: dt.datetime) -> list[AppKey]:
        """Newest first: during a rotation most requests come signed by the new key."""
        return sorted((k for k in self.keys if k.valid_at(now)), key=lambda k: k.added_at, reverse=True)


@dataclass
class Rows:
    version: int
    hospitals: dict[str, HospitalRow] = field(default_factory=dict)
    merchants: dict[str, MerchantRow] = field(default_factory=dict)
    apps: dict[str, AppRow] = field(default_factory=dict)


def fingerprint(pem: str) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo, hex: the same key in any PEM spelling has one fingerprint."""
    key = serialization.load_pem_public_key(pem.encode())
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def normalize_public_key(pem: str | bytes, what: str = "public key") -> str:
    """A public key as the gateway stores it: one PEM spelling, Ed25519 or RSA ≥ 2048 bits (a private key is
    refused: its public half is what the gateway needs, and the private half must not travel)."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"PRIVATE KEY" in data:
        raise TenantError(f"{what}: this is a private key; give the app's public key (the app keeps the private one)")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise TenantError(f"{what}: not a PEM public key ({e})") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise TenantError(f"{what}: RSA keys shorter than 2048 bits are refused")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise TenantError(f"{what}: only Ed25519 and RSA keys are supported, got {type(key).__name__}")
    return protocol.VerifyKey("x", key).public_pem().decode()


def check_merchant_settings(channel: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The channel's settings validated and reduced to what was set (defaults follow the code), as JSON."""
    try:
        parsed = factory.channel_config(channel, settings)
    except Exception as e:  # pydantic's ValidationError, with the field and the problem
        raise TenantError(f"{channel} settings: {e}") from None
    return parsed.model_dump(mode="json", exclude={"channel"}, exclude_unset=True)


# --- reading -----------------------------------------------------------------------------------------------


async def current_version(conn: AsyncConnection) -> int:
    value = (await conn.execute(sa.select(tenants_version.c.version).where(tenants_version.c.id == 1))).scalar()
    return int(value or 0)


async def read_version(db: Database) -> int:
    async with db.read() as conn:
        return await current_version(conn)


def _hospital(row: Any) -> HospitalRow:
    return HospitalRow(
        row.id, row.name, row.refund_policy, bool(row.enabled), row.recon_at, row.bridge, dict(row.read_cache or {}),
        row.source, row.updated_at, row.his_commit,
    )  # fmt: skip


def _merchant(row: Any) -> MerchantRow:
    return MerchantRow(
        row.id, row.channel, row.hospital_id, bool(row.enabled), dict(row.settings or {}), row.source, row.updated_at
    )


def _key(row: Any) -> AppKey:
    return AppKey(row.name, row.public_key_pem, row.added_at, row.valid_from, row.retire_at)


def _app(row: Any, keys: list[AppKey]) -> AppRow:
    ops = tuple(row.operations) if row.operations is not None else None
    if not keys and row.public_key_pem:
        keys = [AppKey("config", row.public_key_pem, row.updated_at)]
    return AppRow(
        row.id, row.hospital_id, row.notify_url, bool(row.enabled), ops, tuple(keys), row.source, row.updated_at,
        tuple(row.notify_hosts or ()), row.kind, row.his_commit, row.client_cert_cn,
    )  # fmt: skip


async def load(db: Database) -> Rows:
    """Every tenant, read in one transaction (one consistent version)."""
    async with db.read() as conn:
        out = Rows(await current_version(conn))
        for row in await conn.execute(sa.select(hospitals).order_by(hospitals.c.id)):
            out.hospitals[row.id] = _hospital(row)
        for row in await conn.execute(sa.select(merchants).order_by(merchants.c.id)):
            out.merchants[row.id] = _merchant(row)
        keys: dict[str, list[AppKey]] = {}
        for row in await conn.execute(sa.select(app_keys).order_by(app_keys.c.id)):
            keys.setdefault(row.app_id, []).append(_key(row))
        for row in await conn.execute(sa.select(apps).order_by(apps.c.id)):
            out.apps[row.id] = _app(row, keys.get(row.id, []))
    return out


@dataclass(frozen=True)
class LoadedApp:
    app: AppRow
    hospital_enabled: bool
    hospital_his_commit: str


async def load_app(conn: AsyncConnection, app_id: str) -> LoadedApp | None:
    """One app with its keys, and what the API needs of its hospital."""
    stmt = sa.select(
        apps, hospitals.c.enabled.label("hospital_enabled"), hospitals.c.his_commit.label("hospital_his_commit")
    ).join(hospitals, hospitals.c.id == apps.c.hospital_id)
    row = (await conn.execute(stmt.where(apps.c.id == app_id))).first()
    if row is None:
        return None
    keys = [_key(k) for k in await conn.execute(sa.select(app_keys).where(app_keys.c.app_id == app_id))]
    return LoadedApp(_app(row, keys), bool(row.hospital_enabled), row.hospital_his_commit)


async def get_hospital(db: Database, hospital_id: str) -> HospitalRow | None:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(hospitals).where(hospitals.c.id == hospital_id))).first()
    return _hospital(row) if row is not None else None


async def get_merchant(db: Database, merchant_id: str) -> MerchantRow | None:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(merchants).where(merchants.c.id == merchant_id))).first()
    return _merchant(row) if row is not None else None


async def get_app(db: Database, app_id: str) -> AppRow | None:
    async with db.read() as conn:
        found = await load_app(conn, app_id)
    return found.app if found is not None else None


# --- changing ----------------------------------------------------------------------------------------------


async def _changed(conn: AsyncConnection, db: Database, actor: str, action: str, subject: str, detail: Any) -> None:
    """Record one change: its audit entry, the version bump, and on PostgreSQL the wake-up of every instance."""
    await audit.record(conn, actor, action, subject, detail)
    result = await conn.execute(
        sa.update(tenants_version)
        .where(tenants_version.c.id == 1)
        .values(version=tenants_version.c.version + 1, changed_at=utcnow())
    )
    if not result.rowcount:
        await conn.execute(sa.insert(tenants_version).values(id=1, version=2, changed_at=utcnow()))
    if db.is_postgres:
        await conn.execute(sa.text(f"NOTIFY {NOTIFY_CHANNEL}"))


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    return {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}


def _owned_elsewhere(existing: Any, source: Source) -> bool:
    return source == "config" and existing is not None and existing.source != "config"


async def _hospital_exists(conn: AsyncConnection, hospital_id: str) -> None:
    found = (await conn.execute(sa.select(hospitals.c.id).where(hospitals.c.id == hospital_id))).first()
    if found is None:
        raise TenantError(f"no hospital {hospital_id!r}: add it first (his-gateway hospitals add)")


def hospital_values(spec: HospitalConfig) -> dict[str, Any]:
    return {
        "name": spec.name or spec.id,
        "refund_policy": spec.refund_policy.value,
        "enabled": spec.enabled,
        "recon_at": spec.recon_at,
        "bridge": spec.bridge.model_dump(mode="json") if spec.bridge is not None else None,
        "read_cache": dict(spec.read_cache) or None,
        "his_commit": spec.his_commit.value,
    }


async def _put_hospital(
    db: Database, spec: HospitalConfig, *, actor: str, source: Source, must_exist: bool | None = None
) -> Outcome:
    """Add or update a hospital. ``must_exist``: True for an update (an unknown id is an error), False for an add
    (an existing id is an error), None for an import (either)."""
    values = hospital_values(spec)
    async with db.write() as conn:
        existing = (await conn.execute(db.for_update(sa.select(hospitals).where(hospitals.c.id == spec.id)))).first()
        if must_exist is True and existing is None:
            raise TenantError(f"no hospital {spec.id!r}")
        if must_exist is False and existing is not None:
            raise TenantError(f"hospital {spec.id!r} exists: change it with update")
        if _owned_elsewhere(existing, source):
            return "skipped"
        now = utcnow()
        if existing is None:
            await conn.execute(sa.insert(hospitals).values(id=spec.id, source=source, updated_at=now, **values))
            await _changed(conn, db, actor, "hospital.add", f"hospital:{spec.id}", {"source": source, **values})
            return "added"
        old = {k: existing._mapping[k] for k in values}
        old["read_cache"] = old["read_cache"] or None
        diff = _diff(old, values)
        if not diff and existing.source == source:
            return "unchanged"
        await conn.execute(
            sa.update(hospitals).where(hospitals.c.id == spec.id).values(source=source, updated_at=now, **values)
        )
        await _changed(conn, db, actor, "hospital.update", f"hospital:{spec.id}", {"source": source, **diff})
        return "updated" if diff else "unchanged"


def merchant_values(spec: MerchantConfig, *, validate: bool) -> dict[str, Any]:
    settings = spec.channel_settings()
    return {
        "channel": spec.channel,
        "hospital_id": spec.hospital,
        "enabled": spec.enabled,
        "settings": check_merchant_settings(spec.channel, settings) if validate else to_jsonable_python(settings),
    }


async def _put_merchant(
    db: Database, spec: MerchantConfig, *, actor: str, source: Source, must_exist: bool | None = None
) -> Outcome:
    """Add or update a merchant. Its settings are checked against the channel's schema, except a config block's
    (the gateway has always accepted those as written, and checks them when it builds the channel)."""
    values = merchant_values(spec, validate=source != "config")
    async with db.write() as conn:
        existing = (await conn.execute(db.for_update(sa.select(merchants).where(merchants.c.id == spec.id)))).first()
        if must_exist is True and existing is None:
            raise TenantError(f"no merchant {spec.id!r}")
        if must_exist is False and existing is not None:
            raise TenantError(f"merchant {spec.id!r} exists: change it with update")
        if _owned_elsewhere(existing, source):
            return "skipped"
        await _hospital_exists(conn, spec.hospital)
        now = utcnow()
        if existing is None:
            await conn.execute(sa.insert(merchants).values(id=spec.id, source=source, updated_at=now, **values))
            await _changed(conn, db, actor, "merchant.add", f"merchant:{spec.id}", {"source": source, **values})
            return "added"
        if existing.channel != spec.channel:
            raise TenantError(f"merchant {spec.id} is a {existing.channel} merchant; a new channel needs a new id")
        old = {k: existing._mapping[k] for k in values}
        diff = _diff(old, values)
        if not diff and existing.source == source:
            return "unchanged"
        await conn.execute(
            sa.update(merchants).where(merchants.c.id == spec.id).values(source=source, updated_at=now, **values)
        )
        await _changed(conn, db, actor, "merchant.update", f"merchant:{spec.id}", {"source": source, **diff})
        return "updated" if diff else "unchanged"


@dataclass(frozen=True)
class AppSpec:
    """An app as the CLI, the console and the import give it; keys are changed on their own (``add_app_key``)."""

    id: str
    hospital_id: str
    notify_url: str | None = None
    enabled: bool = True
    operations: tuple[str, ...] | None = None
    notify_hosts: tuple[str, ...] = ()
    """Hosts an order's ``notify_url`` may name besides the host of ``notify_url`` (``gateway.notify_guard``)."""
    kind: str = "app"
    """``agent``: a hospital's bridge agent forwarding its kiosks and windows."""
    his_commit: str | None = None
    """Who tells the HIS after this app's payments (``gateway``, ``caller``); the hospital's when None."""
    client_cert_cn: str | None = None
    """Accepted only over the mutual-TLS listener from a client certificate with this CN."""

    def values(self) -> dict[str, Any]:
        ops = sorted(set(self.operations)) if self.operations is not None else None
        return {
            "hospital_id": self.hospital_id,
            "notify_url": self.notify_url,
            "enabled": self.enabled,
            "operations": ops,
            "notify_hosts": sorted(set(self.notify_hosts)),
            "kind": self.kind,
            "his_commit": self.his_commit,
            "client_cert_cn": self.client_cert_cn,
        }


async def _put_app(
    db: Database,
    spec: AppSpec,
    *,
    actor: str,
    source: Source,
    public_key_pem: str | None = None,
    must_exist: bool | None = None,
    replace_keys: bool = True,
) -> Outcome:
    """Add or update an app. A new app needs its public key. For an existing one, ``public_key_pem`` becomes
    its one valid key at once (the config names one key) — or, without ``replace_keys`` (an explicit import),
    only if the app has never had it, so importing a file again after a rotation does not undo the rotation. A
    rotation with an overlap goes through ``add_app_key``."""
    if not protocol.KEY_ID_RE.match(spec.id):
        raise TenantError(f"app id {spec.id!r}: 1-64 characters of A-Z a-z 0-9 _ . : -")
    values = spec.values()
    pem = normalize_public_key(public_key_pem, f"app {spec.id} public key") if public_key_pem else None
    async with db.write() as conn:
        existing = (await conn.execute(db.for_update(sa.select(apps).where(apps.c.id == spec.id)))).first()
        if must_exist is True and existing is None:
            raise TenantError(f"no app {spec.id!r}")
        if must_exist is False and existing is not None:
            raise TenantError(f"app {spec.id!r} exists: change it with update")
        if _owned_elsewhere(existing, source):
            return "skipped"
        await _hospital_exists(conn, spec.hospital_id)
        now = utcnow()
        if existing is None:
            if pem is None:
                raise TenantError(f"app {spec.id}: a new app needs its public key")
            await conn.execute(
                sa.insert(apps).values(id=spec.id, public_key_pem=pem, source=source, updated_at=now, **values)
            )
            await conn.execute(
                sa.insert(app_keys).values(app_id=spec.id, name=fingerprint(pem)[:16], public_key_pem=pem, added_at=now)
            )
            detail = {"source": source, **values, "key": fingerprint(pem)[:16]}
            await _changed(conn, db, actor, "app.add", f"app:{spec.id}", detail)
            return "added"
        if existing.hospital_id != spec.hospital_id:
            raise TenantError(f"app {spec.id} belongs to hospital {existing.hospital_id}; an app never moves")
        old = {k: existing._mapping[k] for k in values}
        old["notify_hosts"] = sorted(old["notify_hosts"] or [])
        diff = _diff(old, values)
        key_changed = False
        if pem is not None and (replace_keys or not await _has_key(conn, spec.id, pem)):
            key_changed = await _only_key(conn, spec.id, pem, now)
            if key_changed:
                diff["key"] = [None, fingerprint(pem)[:16]]
        if not diff and existing.source == source:
            return "unchanged"
        extra = {"public_key_pem": pem} if key_changed else {}
        await conn.execute(
            sa.update(apps).where(apps.c.id == spec.id).values(source=source, updated_at=now, **values, **extra)
        )
        await _changed(conn, db, actor, "app.update", f"app:{spec.id}", {"source": source, **diff})
        return "updated" if diff else "unchanged"


async def _has_key(conn: AsyncConnection, app_id: str, pem: str) -> bool:
    rows = [_key(r) for r in await conn.execute(sa.select(app_keys).where(app_keys.c.app_id == app_id))]
    return any(k.fingerprint == fingerprint(pem) for k in rows)


async def _only_key(conn: AsyncConnection, app_id: str, pem: str, now: dt.datetime) -> bool:
    """Make ``pem`` the app's one valid key, now; True if anything changed."""
    rows = [_key(r) for r in await conn.execute(sa.select(app_keys).where(app_keys.c.app_id == app_id))]
    fp = fingerprint(pem)
    valid = [k for k in rows if k.valid_at(now)]
    if len(valid) == 1 and valid[0].fingerprint == fp:
        return False
    for k in valid:
        if k.fingerprint != fp:
            await conn.execute(
                sa.update(app_keys).where(app_keys.c.app_id == app_id, app_keys.c.name == k.name).values(retire_at=now)
            )
    mine = next((k for k in rows if k.fingerprint == fp), None)
    if mine is None:
        await conn.execute(sa.insert(app_keys).values(app_id=app_id, name=fp[:16], public_key_pem=pem, added_at=now))
    else:
        await conn.execute(
            sa.update(app_keys)
            .where(app_keys.c.app_id == app_id, app_keys.c.name == mine.name)
            .values(valid_from=None, retire_at=None)
        )
    return True


async def add_app_key(
    db: Database,
    app_id: str,
    public_key_pem: str,
    *,
    retire_old_at: dt.datetime,
    actor: str,
    source: Source,
    valid_from: dt.datetime | None = None,
) -> Outcome:
    """Rotate an app's key with an overlap: the new key is valid from ``valid_from`` (now when None), every other
    key still valid retires at ``retire_old_at`` (not later than it already would). Adding a key the app already
    has changes nothing."""
    pem = normalize_public_key(public_key_pem, f"app {app_id} public key")
    now = utcnow()
    if retire_old_at.tzinfo is None:
        raise TenantError("the retirement time needs a UTC offset (2026-12-20T00:00:00+08:00)")
    if retire_old_at < now:
        raise TenantError("the old key's retirement is in the past: give a time after now (or 'now' to retire at once)")
    fp = fingerprint(pem)
    async with db.write() as conn:
        existing = (await conn.execute(db.for_update(sa.select(apps).where(apps.c.id == app_id)))).first()
        if existing is None:
            raise TenantError(f"no app {app_id!r}")
        rows = [_key(r) for r in await conn.execute(sa.select(app_keys).where(app_keys.c.app_id == app_id))]
        if any(k.fingerprint == fp for k in rows):
            return "unchanged"
        retired = []
        for k in rows:
            if k.valid_at(now) or (k.valid_from is not None and k.valid_from > now):
                retire = min(retire_old_at, k.retire_at) if k.retire_at is not None else retire_old_at
                await conn.execute(
                    sa.update(app_keys)
                    .where(app_keys.c.app_id == app_id, app_keys.c.name == k.name)
                    .values(retire_at=retire)
                )
                retired.append({"key": k.name, "retire_at": retire.isoformat()})
        await conn.execute(
            sa.insert(app_keys).values(
                app_id=app_id, name=fp[:16], public_key_pem=pem, added_at=now, valid_from=valid_from
            )
        )
        await conn.execute(
            sa.update(apps).where(apps.c.id == app_id).values(public_key_pem=pem, source=source, updated_at=now)
        )
        detail = {"key": fp[:16], "valid_from": valid_from.isoformat() if valid_from else None, "retiring": retired}
        await _changed(conn, db, actor, "app.key_added", f"app:{app_id}", detail)
    return "added"


async def retire_app_key(db: Database, app_id: str, name: str, *, at: dt.datetime, actor: str, source: Source) -> None:
    """Retire one key at ``at`` (now, or sooner than planned). The app keeps at least one key that stays valid."""
    async with db.write() as conn:
        existing = (await conn.execute(db.for_update(sa.select(apps).where(apps.c.id == app_id)))).first()
        if existing is None:
            raise TenantError(f"no app {app_id!r}")
        rows = [_key(r) for r in await conn.execute(sa.select(app_keys).where(app_keys.c.app_id == app_id))]
        key = next((k for k in rows if k.name == name), None)
        if key is None:
            raise TenantError(f"app {app_id} has no key {name!r} (see his-gateway apps show {app_id})")
        lasting = [k for k in rows if k.name != name and k.retire_at is None]
        if not lasting:
            raise TenantError(
                f"key {name} is the only key of app {app_id} that does not retire: add its successor first"
            )
        await conn.execute(
            sa.update(app_keys).where(app_keys.c.app_id == app_id, app_keys.c.name == name).values(retire_at=at)
        )
        await conn.execute(sa.update(apps).where(apps.c.id == app_id).values(source=source, updated_at=utcnow()))
        await _changed(conn, db, actor, "app.key_retired", f"app:{app_id}", {"key": name, "retire_at": at.isoformat()})


TABLES = {"hospital": hospitals, "app": apps, "merchant": merchants}


async def set_enabled(db: Database, kind: str, row_id: str, enabled: bool, *, actor: str, source: Source) -> Outcome:
    table = TABLES[kind]
    async with db.write() as conn:
        existing = (await conn.execute(db.for_update(sa.select(table).where(table.c.id == row_id)))).first()
        if existing is None:
            raise TenantError(f"no {kind} {row_id!r}")
        if bool(existing.enabled) == enabled and existing.source == source:
            return "unchanged"
        await conn.execute(
            sa.update(table).where(table.c.id == row_id).values(enabled=enabled, source=source, updated_at=utcnow())
        )
        action = f"{kind}.{'enable' if enabled else 'disable'}"
        await _changed(conn, db, actor, action, f"{kind}:{row_id}", {"source": source, "was_enabled": existing.enabled})
    return "updated"


async def _once_more_on_a_race(put: Callable[..., Awaitable[Outcome]], *args: Any, **kwargs: Any) -> Outcome:
    """Two instances importing one config at the same start both find no row and both insert it: the loser
    tries once more and meets the winner's row (unchanged, or updated)."""
    try:
        return await put(*args, **kwargs)
    except IntegrityError:
        return await put(*args, **kwargs)


async def put_hospital(db: Database, spec: HospitalConfig, **kwargs: Any) -> Outcome:
    """Add or update a hospital (``_put_hospital``)."""
    return await _once_more_on_a_race(_put_hospital, db, spec, **kwargs)


async def put_merchant(db: Database, spec: MerchantConfig, **kwargs: Any) -> Outcome:
    """Add or update a merchant (``_put_merchant``)."""
    return await _once_more_on_a_race(_put_merchant, db, spec, **kwargs)


async def put_app(db: Database, spec: AppSpec, **kwargs: Any) -> Outcome:
    """Add or update an app (``_put_app``)."""
    return await _once_more_on_a_race(_put_app, db, spec, **kwargs)


# --- the config's blocks -----------------------------------------------------------------------------------


@dataclass
class ImportReport:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    """``hospital:H001`` → what happened to it."""
    disabled: list[str] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)

    def summary(self) -> str:
        parts = [f"{self.count(o)} {o}" for o in ("added", "updated", "unchanged", "skipped")]
        if self.disabled:
            parts.append(f"{len(self.disabled)} disabled (no longer in the config)")
        return ", ".join(parts)


def app_spec(app: AppConfig, hospital_id: str) -> AppSpec:
    ops = tuple(app.operations) if app.operations is not None else None
    return AppSpec(
        app.app_id, hospital_id, app.notify_url, app.enabled, ops, tuple(app.notify_hosts), app.kind,
        app.his_commit.value if app.his_commit is not None else None, app.client_cert_cn,
    )  # fmt: skip


async def import_blocks(
    db: Database,
    hospital_blocks: list[HospitalConfig],
    merchant_blocks: list[MerchantConfig],
    *,
    actor: str,
    source: Source,
) -> ImportReport:
    """Make the database hold what the blocks say. Idempotent: a second run changes nothing. With ``source``
    ``config`` (every start), apps and merchants once imported from the config and no longer in it are disabled,
    not deleted (orders refer to them), and rows the database owns are left alone."""
    report = ImportReport()
    for h in hospital_blocks:
        report.outcomes[f"hospital:{h.id}"] = await put_hospital(db, h, actor=actor, source=source)
    for m in merchant_blocks:
        report.outcomes[f"merchant:{m.id}"] = await put_merchant(db, m, actor=actor, source=source)
    for h in hospital_blocks:
        for a in h.apps:
            pem = a.public_key.read_text(encoding="utf-8")
            report.outcomes[f"app:{a.app_id}"] = await put_app(
                db, app_spec(a, h.id), actor=actor, source=source, public_key_pem=pem, replace_keys=source == "config"
            )
    for name, outcome in report.outcomes.items():
        if outcome == "skipped":
            log.warning("tenant_config_block_ignored", tenant=name, why="changed in the database since; it owns it")
    if source == "config":
        keep_apps = [a.app_id for h in hospital_blocks for a in h.apps]
        keep_merchants = [m.id for m in merchant_blocks]
        for kind, table, keep in (("app", apps, keep_apps), ("merchant", merchants, keep_merchants)):
            async with db.read() as conn:
                stale = (
                    await conn.execute(
                        sa.select(table.c.id).where(
                            table.c.source == "config", table.c.enabled, table.c.id.not_in(keep)
                        )
                    )
                ).scalars()
                stale_ids = list(stale)
            for row_id in stale_ids:
                await set_enabled(db, kind, row_id, False, actor=actor, source="config")
                report.disabled.append(f"{kind}:{row_id}")
    return report
