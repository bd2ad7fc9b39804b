"""One instance's view of the tenants at one version: what the sagas, the callbacks, the schedule and the
reconciliation ask about hospitals and merchants, without a query each time."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import structlog

from gateway.config import GatewayConfig, HospitalConfig, MerchantConfig
from gateway.store.tenants import AppKey, AppRow, Rows, app_spec

log = structlog.get_logger("gateway.tenants")
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Tenants:
    version: int = 0
    hospitals: dict[str, HospitalConfig] = field(default_factory=dict)
    """Every hospital, enabled or not, by id."""
    merchants: dict[str, MerchantConfig] = field(default_factory=dict)
    """Every merchant, enabled or not, by id."""
    apps: dict[str, AppRow] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    """Rows that could not be read into a usable shape (``merchant:wx1`` → why); logged, left out."""

    @classmethod
    def from_rows(cls, rows: Rows) -> Tenants:
        hospitals: dict[str, HospitalConfig] = {}
        merchants: dict[str, MerchantConfig] = {}
        broken: dict[str, str] = {}
        for row in rows.hospitals.values():
            try:
                hospitals[row.id] = row.config()
            except Exception as e:  # a row written by an older version, or edited by hand
                broken[f"hospital:{row.id}"] = str(e)
        for m in rows.merchants.values():
            try:
                merchants[m.id] = m.config()
            except Exception as e:
                broken[f"merchant:{m.id}"] = str(e)
        for name, why in broken.items():
            log.error("tenant_unreadable", tenant=name, error=why)
        return cls(rows.version, hospitals, merchants, dict(rows.apps), broken)

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> Tenants:
        """The tenants a config file declares (tools and tests that run without the database's registry)."""
        apps = {}
        for h in cfg.hospitals:
            for a in h.apps:
                spec = app_spec(a, h.id)
                key = (
                    AppKey("config", a.public_key.read_text(encoding="utf-8"), _EPOCH)
                    if a.public_key.exists()
                    else None
                )
                apps[a.app_id] = AppRow(
                    a.app_id, h.id, a.notify_url, a.enabled, spec.operations, (key,) if key else (), "config", _EPOCH,
                    spec.notify_hosts, spec.kind, spec.his_commit, spec.client_cert_cn,
                )  # fmt: skip
        return cls(0, {h.id: h for h in cfg.hospitals}, {m.id: m for m in cfg.merchants}, apps)

    def hospital(self, hospital_id: str) -> HospitalConfig:
        try:
            return self.hospitals[hospital_id]
        except KeyError:
            raise LookupError(f"no hospital {hospital_id!r}") from None

    def active_hospitals(self) -> list[HospitalConfig]:
        return [h for h in self.hospitals.values() if h.enabled]

    def merchant(self, merchant_id: str) -> MerchantConfig | None:
        return self.merchants.get(merchant_id)

    def merchants_of(self, hospital_id: str) -> list[MerchantConfig]:
        """The hospital's enabled merchants, by id."""
        return sorted(
            (m for m in self.merchants.values() if m.hospital == hospital_id and m.enabled), key=lambda m: m.id
        )
