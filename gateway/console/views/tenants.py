"""The admin role's pages for the platform's tenants: hospitals with their agent links, their apps (keys that
rotate with an overlap, allowed operations, notify URLs) and their merchants (channel settings that name their
secrets). Every change goes through ``gateway.store.tenants`` (compared first, audited as ``console:<user>``,
versioned) and reaches every running instance without a restart.

File paths typed here must be absolute: they are read by every gateway instance, on its own host.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import tomllib
from collections.abc import Awaitable, Callable
from typing import Any, get_args

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from gateway.config import AppOperation, BridgeLink, HospitalConfig, MerchantConfig
from gateway.console.auth import Role
from gateway.console.views import SERVICES, redirect, render, session_of
from gateway.model import RefundPolicy, utcnow
from gateway.store import tenants as store

OPERATIONS = get_args(AppOperation)
HOST_PATTERN = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$"
READ_CACHE_OPS = ("patient.query", "bills.unpaid")
BRIDGE_FIELDS = ("url", "ca", "client_cert", "client_key", "signing_key_id", "signing_key", "bridge_key_id",
                 "bridge_public_key")  # fmt: skip
FILE_FIELDS = ("ca", "client_cert", "client_key", "signing_key", "bridge_public_key")
FLASHES = {"flash.tenant_saved", "flash.tenant_unchanged", "flash.key_added", "flash.key_retired"}


class FormError(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def admin_only(handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]]) -> Handler:
    """Tenant pages and forms are the admin's: anyone else gets 403; the handler gets the actor to audit."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        user = session_of(request).user
        if not user.can(Role.admin):
            return _forbidden(request)
        return await handler(request, f"console:{user.username}"[:64])

    return checked


def _forbidden(request: web.Request) -> web.Response:
    return render(request, "error.html", status=403, message="error.forbidden")


def _text(form: Any, name: str, limit: int = 500) -> str:
    return str(form.get(name, "")).strip()[:limit]


def _validation(e: ValidationError) -> FormError:
    return FormError("; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()))


def relative_files(settings: Any, where: str = "") -> list[str]:
    """The file settings (``*_file``, ``file``, ``platform_certificates``) that are not absolute paths."""
    found: list[str] = []
    if isinstance(settings, dict):
        for key, value in settings.items():
            name = f"{where}.{key}" if where else key
            if isinstance(value, dict | list) and key != "platform_certificates":
                found += relative_files(value, name)
            elif key == "platform_certificates" and isinstance(value, list):
                found += [name for v in value if isinstance(v, str) and not v.startswith("/")]
            elif (key == "file" or key.endswith("_file")) and isinstance(value, str) and not value.startswith("/"):
                found.append(name)
    elif isinstance(settings, list):
        for i, value in enumerate(settings):
            found += relative_files(value, f"{where}[{i}]")
    return found


# --- pages -------------------------------------------------------------------------------------------------


@admin_only
async def overview(request: web.Request, who: str) -> web.StreamResponse:
    return await _overview(request)


async def _overview(request: web.Request, *, status: int = 200, error: str | None = None) -> web.Response:
    rows = await store.load(request.app[SERVICES].db)
    apps_of: dict[str, int] = {}
    merchants_of: dict[str, int] = {}
    for a in rows.apps.values():
        apps_of[a.hospital_id] = apps_of.get(a.hospital_id, 0) + 1
    for m in rows.merchants.values():
        merchants_of[m.hospital_id] = merchants_of.get(m.hospital_id, 0) + 1
    return render(
        request,
        "tenants.html",
        status=status,
        rows=rows,
        apps_of=apps_of,
        merchants_of=merchants_of,
        policies=[p.value for p in RefundPolicy],
        error=error,
        form=dict(await request.post()) if request.method == "POST" else {},
    )


@admin_only
async def hospital_page(request: web.Request, who: str) -> web.StreamResponse:
    return await _hospital(request)


async def _hospital(request: web.Request, *, status: int = 200, error: str | None = None) -> web.Response:
    db = request.app[SERVICES].db
    hospital_id = request.match_info["id"]
    row = await store.get_hospital(db, hospital_id)
    if row is None:
        return render(request, "error.html", status=404, message="error.not_found")
    rows = await store.load(db)
    return render(
        request,
        "tenant_hospital.html",
        status=status,
        h=row,
        apps=[a for a in rows.apps.values() if a.hospital_id == hospital_id],
        merchants=[m for m in rows.merchants.values() if m.hospital_id == hospital_id],
        policies=[p.value for p in RefundPolicy],
        operations=OPERATIONS,
        cache_ops=READ_CACHE_OPS,
        bridge_fields=BRIDGE_FIELDS,
        error=error,
        done=_done(request),
        form=dict(await request.post()) if request.method == "POST" else {},
    )


@admin_only
async def app_page(request: web.Request, who: str) -> web.StreamResponse:
    return await _app(request)


async def _app(request: web.Request, *, status: int = 200, error: str | None = None) -> web.Response:
    row = await store.get_app(request.app[SERVICES].db, request.match_info["id"])
    if row is None:
        return render(request, "error.html", status=404, message="error.not_found")
    now = utcnow()
    keys = [
        {
            "name": k.name,
            "fingerprint": k.fingerprint,
            "added_at": k.added_at,
            "valid_from": k.valid_from,
            "retire_at": k.retire_at,
            "valid": k.valid_at(now),
            "pending": k.valid_from is not None and k.valid_from > now,
        }
        for k in row.keys
    ]
    return render(
        request,
        "tenant_app.html",
        status=status,
        app=row,
        keys=keys,
        operations=OPERATIONS,
        error=error,
        done=_done(request),
        form=dict(await request.post()) if request.method == "POST" else {},
    )


@admin_only
async def merchant_page(request: web.Request, who: str) -> web.StreamResponse:
    return await _merchant(request)


async def _merchant(request: web.Request, *, status: int = 200, error: str | None = None) -> web.Response:
    row = await store.get_merchant(request.app[SERVICES].db, request.match_info["id"])
    if row is None:
        return render(request, "error.html", status=404, message="error.not_found")
    return render(
        request,
        "tenant_merchant.html",
        status=status,
        m=row,
        settings_json=json.dumps(row.settings, ensure_ascii=False, indent=2),
        error=error,
        done=_done(request),
        form=dict(await request.post()) if request.method == "POST" else {},
    )


def _done(request: web.Request) -> str | None:
    done = request.query.get("done")
    return done if done in FLASHES else None


# --- actions -----------------------------------------------------------------------------------------------


def _bridge(form: Any, current: dict[str, Any] | None) -> dict[str, Any] | None:
    if form.get("no_bridge"):
        return None
    given = {f: _text(form, f"bridge_{f}") for f in BRIDGE_FIELDS if _text(form, f"bridge_{f}")}
    if not given:
        return current
    relative = [f"bridge_{f}" for f in FILE_FIELDS if f in given and not given[f].startswith("/")]
    if relative:
        raise FormError(f"give absolute paths (every instance reads them on its host): {', '.join(relative)}")
    try:
        return BridgeLink.model_validate({**(current or {}), **given}).model_dump(mode="json")
    except ValidationError as e:
        raise _validation(e) from None


def _hospital_spec(form: Any, hospital_id: str, current: store.HospitalRow | None) -> HospitalConfig:
    cache = dict(current.read_cache) if current else {}
    for op in READ_CACHE_OPS:
        value = _text(form, f"cache_{op}", 8)
        if value:
            if not value.isdigit():
                raise FormError(f"{op}: seconds, 0-3600")
            cache[op] = int(value)
    data = {
        "id": hospital_id,
        "name": _text(form, "name", 200) or (current.name if current else hospital_id),
        "refund_policy": _text(form, "refund_policy", 16) or (current.refund_policy if current else "finance"),
        "recon_at": _text(form, "recon_at", 5) or None,
        "bridge": _bridge(form, current.bridge if current else None),
        "enabled": current.enabled if current else True,
        "read_cache": cache,
    }
    try:
        return HospitalConfig.model_validate(data)
    except ValidationError as e:
        raise _validation(e) from None


@admin_only
async def add_hospital(request: web.Request, who: str) -> web.StreamResponse:
    form = await request.post()
    hospital_id = _text(form, "id", 32)
    try:
        spec = _hospital_spec(form, hospital_id, None)
        await store.put_hospital(request.app[SERVICES].db, spec, actor=who, source="console", must_exist=False)
    except (FormError, store.TenantError) as e:
        return await _overview(request, status=400, error=str(e))
    return redirect(f"/admin/hospitals/{hospital_id}", done="flash.tenant_saved")


@admin_only
async def update_hospital(request: web.Request, who: str) -> web.StreamResponse:
    db = request.app[SERVICES].db
    hospital_id = request.match_info["id"]
    current = await store.get_hospital(db, hospital_id)
    if current is None:
        return render(request, "error.html", status=404, message="error.not_found")
    try:
        spec = _hospital_spec(await request.post(), hospital_id, current)
        outcome = await store.put_hospital(db, spec, actor=who, source="console", must_exist=True)
    except (FormError, store.TenantError) as e:
        return await _hospital(request, status=400, error=str(e))
    return redirect(f"/admin/hospitals/{hospital_id}", done=_flash(outcome))


def _flash(outcome: str) -> str:
    return "flash.tenant_unchanged" if outcome == "unchanged" else "flash.tenant_saved"


def _switch(kind: str, page: str) -> Any:
    @admin_only
    async def handler(request: web.Request, who: str) -> web.StreamResponse:
        row_id = request.match_info["id"]
        enabled = (await request.post()).get("enabled") == "1"
        try:
            outcome = await store.set_enabled(
                request.app[SERVICES].db, kind, row_id, enabled, actor=who, source="console"
            )
        except store.TenantError:
            return render(request, "error.html", status=404, message="error.not_found")
        return redirect(f"/admin/{page}/{row_id}", done=_flash(outcome))

    return handler


def _hosts(form: Any) -> tuple[str, ...]:
    hosts = tuple(h.strip() for h in _text(form, "notify_hosts", 5000).replace("\n", ",").split(",") if h.strip())
    bad = [h for h in hosts if not re.match(HOST_PATTERN, h)]
    if bad:
        raise FormError(f"not host names: {', '.join(bad)}")
    return hosts


def _operations(form: Any) -> tuple[str, ...]:
    return tuple(op for op in OPERATIONS if form.get(f"op_{op}"))


@admin_only
async def add_app(request: web.Request, who: str) -> web.StreamResponse:
    hospital_id = request.match_info["id"]
    form = await request.post()
    app_id = _text(form, "app_id", 64)
    try:
        hosts = _hosts(form)
    except FormError as e:
        return await _hospital(request, status=400, error=str(e))
    spec = store.AppSpec(app_id, hospital_id, _text(form, "notify_url") or None, True, _operations(form), hosts)
    try:
        await store.put_app(
            request.app[SERVICES].db, spec, actor=who, source="console",
            public_key_pem=_text(form, "public_key", 20_000) or None, must_exist=False,
        )  # fmt: skip
    except store.TenantError as e:
        return await _hospital(request, status=400, error=str(e))
    return redirect(f"/admin/apps/{app_id}", done="flash.tenant_saved")


@admin_only
async def update_app(request: web.Request, who: str) -> web.StreamResponse:
    db = request.app[SERVICES].db
    current = await store.get_app(db, request.match_info["id"])
    if current is None:
        return render(request, "error.html", status=404, message="error.not_found")
    form = await request.post()
    notify_url = _text(form, "notify_url") or None
    try:
        hosts = _hosts(form)
    except FormError as e:
        return await _app(request, status=400, error=str(e))
    spec = store.AppSpec(current.id, current.hospital_id, notify_url, current.enabled, _operations(form), hosts)
    try:
        outcome = await store.put_app(db, spec, actor=who, source="console", must_exist=True)
    except store.TenantError as e:
        return await _app(request, status=400, error=str(e))
    return redirect(f"/admin/apps/{current.id}", done=_flash(outcome))


@admin_only
async def rotate_key(request: web.Request, who: str) -> web.StreamResponse:
    app_id = request.match_info["id"]
    form = await request.post()
    try:
        days = _text(form, "overlap_days", 4)
        if not days.isdigit() or not 0 <= int(days) <= 365:
            raise FormError("overlap: whole days, 0-365")
        retire = utcnow() + dt.timedelta(days=int(days))
        outcome = await store.add_app_key(
            request.app[SERVICES].db, app_id, _text(form, "public_key", 20_000), retire_old_at=retire, actor=who,
            source="console",
        )  # fmt: skip
    except (FormError, store.TenantError) as e:
        return await _app(request, status=400, error=str(e))
    return redirect(f"/admin/apps/{app_id}", done="flash.key_added" if outcome == "added" else "flash.tenant_unchanged")


@admin_only
async def retire_key(request: web.Request, who: str) -> web.StreamResponse:
    app_id = request.match_info["id"]
    try:
        await store.retire_app_key(
            request.app[SERVICES].db, app_id, request.match_info["name"], at=utcnow(), actor=who, source="console"
        )
    except store.TenantError as e:
        return await _app(request, status=400, error=str(e))
    return redirect(f"/admin/apps/{app_id}", done="flash.key_retired")


def _merchant_spec(form: Any, merchant_id: str, current: store.MerchantRow | None) -> MerchantConfig:
    text = str(form.get("settings", ""))[:100_000]
    if text.strip():
        try:
            settings = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise FormError(f"settings are not valid TOML: {e}") from None
    elif current is not None:
        settings = current.settings
    else:
        raise FormError("a merchant needs its channel settings")
    relative = relative_files(settings)
    if relative:
        raise FormError(f"give absolute paths (every instance reads them on its host): {', '.join(relative)}")
    for key in ("id", "channel", "hospital", "enabled"):
        settings.pop(key, None)
    data = {
        **settings,
        "id": merchant_id,
        "channel": current.channel if current else _text(form, "channel", 16),
        "hospital": current.hospital_id if current else _text(form, "hospital", 32),
        "enabled": current.enabled if current else True,
    }
    try:
        return MerchantConfig.model_validate(data)
    except ValidationError as e:
        raise _validation(e) from None


@admin_only
async def add_merchant(request: web.Request, who: str) -> web.StreamResponse:
    form = await request.post()
    merchant_id = _text(form, "merchant_id", 64)
    try:
        spec = _merchant_spec({**form, "hospital": request.match_info["id"]}, merchant_id, None)
        await store.put_merchant(request.app[SERVICES].db, spec, actor=who, source="console", must_exist=False)
    except (FormError, store.TenantError) as e:
        return await _hospital(request, status=400, error=str(e))
    return redirect(f"/admin/merchants/{merchant_id}", done="flash.tenant_saved")


@admin_only
async def update_merchant(request: web.Request, who: str) -> web.StreamResponse:
    db = request.app[SERVICES].db
    current = await store.get_merchant(db, request.match_info["id"])
    if current is None:
        return render(request, "error.html", status=404, message="error.not_found")
    try:
        spec = _merchant_spec(await request.post(), current.id, current)
        outcome = await store.put_merchant(db, spec, actor=who, source="console", must_exist=True)
    except (FormError, store.TenantError) as e:
        return await _merchant(request, status=400, error=str(e))
    return redirect(f"/admin/merchants/{current.id}", done=_flash(outcome))


def add_routes(app: web.Application) -> None:
    ident = r"{id:[A-Za-z0-9_.:-]{1,64}}"
    app.router.add_get("/admin", overview)
    app.router.add_post("/admin/hospitals", add_hospital)
    app.router.add_get(f"/admin/hospitals/{ident}", hospital_page)
    app.router.add_post(f"/admin/hospitals/{ident}", update_hospital)
    app.router.add_post(f"/admin/hospitals/{ident}/enabled", _switch("hospital", "hospitals"))
    app.router.add_post(f"/admin/hospitals/{ident}/apps", add_app)
    app.router.add_post(f"/admin/hospitals/{ident}/merchants", add_merchant)
    app.router.add_get(f"/admin/apps/{ident}", app_page)
    app.router.add_post(f"/admin/apps/{ident}", update_app)
    app.router.add_post(f"/admin/apps/{ident}/enabled", _switch("app", "apps"))
    app.router.add_post(f"/admin/apps/{ident}/keys", rotate_key)
    app.router.add_post(f"/admin/apps/{ident}/keys/{{name:[A-Za-z0-9_.:-]{{1,64}}}}/retire", retire_key)
    app.router.add_get(f"/admin/merchants/{ident}", merchant_page)
    app.router.add_post(f"/admin/merchants/{ident}", update_merchant)
    app.router.add_post(f"/admin/merchants/{ident}/enabled", _switch("merchant", "merchants"))
