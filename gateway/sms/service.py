"""The SMS defences of one gateway instance: builds the layers, the code book, the captcha and the provider
from ``[sms]``, and runs one code request or verification through them; settles codes for the conversion layer
(failed once their grace has passed, verified when checked).

Sending happens in a background task after the decision is stored, so the answer never waits on the provider:
a request that was silently dropped and one that sent an SMS take the same path and the same time to answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from gateway.his import HisLink, NoBridge
from gateway.services import log
from gateway.sms.captcha import CaptchaAnswer
from gateway.sms.clock import Clock, system_clock
from gateway.sms.codes import CodeBook, Settled, Subject
from gateway.sms.config import SmsConfig
from gateway.sms.conversion import Conversion, subnet
from gateway.sms.keys import SmsKeys
from gateway.sms.layers import OtpRequest
from gateway.sms.layers.assurance import AssuranceLayer
from gateway.sms.layers.budget import BudgetLayer
from gateway.sms.layers.conversion import ConversionLayer
from gateway.sms.layers.device import DeviceLayer, device_id
from gateway.sms.layers.identity import IdentityLayer
from gateway.sms.layers.ip import IpLayer
from gateway.sms.layers.lists import ListsLayer
from gateway.sms.layers.phone import PhoneLayer
from gateway.sms.layers.segment import SegmentLayer
from gateway.sms.limits_store import SqlStorage, build_counters
from gateway.sms.metrics import SmsMetrics
from gateway.sms.patients import PatientDirectory
from gateway.sms.phones import mask
from gateway.sms.providers import SmsMessage, SmsProvider
from gateway.sms.risk import Decision, RiskEngine
from gateway.sms.vendors import build_captcha, build_provider
from gateway.store import audit
from gateway.store.db import Database
from gateway.store.sms_tables import sms_escalations

PRUNE_INTERVAL_S = 600


class SmsService:
    def __init__(
        self,
        cfg: SmsConfig,
        db: Database,
        *,
        clock: Clock = system_clock,
        provider: SmsProvider | None = None,
        his_for: Callable[[str], HisLink] = NoBridge,
    ) -> None:
        assert cfg.secret_file is not None
        self.cfg = cfg
        self.db = db
        self.clock = clock
        self.keys = SmsKeys.from_file(cfg.secret_file)
        self.metrics = SmsMetrics()
        self.counters = build_counters(cfg.counters, db, clock, cfg.timezone)
        self.codes = CodeBook(db, self.keys, clock)
        self.captcha = build_captcha(cfg.captcha, self.keys.captcha_key, self.counters, clock)
        self.provider = provider or build_provider(cfg.provider, clock)
        c = self.counters
        self.patients = PatientDirectory(his_for, c, db, clock)
        self.conversion = Conversion(c, db, clock, self.metrics)
        layers = [
            ListsLayer(),
            AssuranceLayer(self.patients, self.metrics),
            IpLayer(c),
            DeviceLayer(c),
            SegmentLayer(c),
            IdentityLayer(c),
            ConversionLayer(self.conversion),
            PhoneLayer(c, self.codes),
            BudgetLayer(c, cfg.daily_budget, cfg.breaker),
        ]
        self.engine = RiskEngine(layers, self.captcha)
        self._sending: set[asyncio.Task[None]] = set()

    def subject(self, hospital_id: str, purpose: str, phone: str) -> Subject:
        return Subject(hospital_id, purpose, self.keys.subject_hash("phone", phone), mask(phone))

    def otp_request(
        self,
        *,
        app_id: str,
        hospital_id: str,
        purpose: str,
        phone: str,
        ip: str | None = None,
        user_agent: str = "",
        accept_language: str = "",
        fingerprint: str | None = None,
        headers: dict[str, str] | None = None,
        captcha: CaptchaAnswer | None = None,
        identity: tuple[str, str] | None = None,
        card_no: str | None = None,
    ) -> OtpRequest:
        """``phone`` in normal form (``gateway.sms.phones.normalize``); ``identity`` as (kind, id) in the app."""
        h = self.keys.subject_hash
        return OtpRequest(
            app_id=app_id,
            phone=phone,
            subject=self.subject(hospital_id, purpose, phone),
            ip=ip,
            ip_hash=self.keys.subject_hash("ip", ip) if ip else None,
            device=device_id(
                fingerprint, user_agent, accept_language, {k.lower(): v for k, v in (headers or {}).items()}
            ),
            has_fingerprint=bool(fingerprint),
            captcha=captcha,
            identity_hash=h("identity", f"{app_id}|{identity[0]}|{identity[1]}") if identity else None,
            card_no=card_no,
            subnet_hash=h("subnet", subnet(ip)) if ip else None,
        )

    async def request_code(self, req: OtpRequest) -> Decision:
        policy = self.cfg.policy(req.hospital_id, req.purpose)
        await self.settle()
        decision = await self.engine.decide(req, policy)
        if decision.action == "send":
            issued = await self.codes.issue(
                req.subject, policy, req.scopes, req.identity_hash, self.cfg.conversion_grace_s
            )
            await self._record(issued.settled)
            code = issued.code
            if code is not None:
                self._dispatch(SmsMessage(req.phone, req.hospital_id, req.purpose, code, policy.code.ttl_s // 60))
                self.metrics.sent.labels(req.hospital_id, req.purpose).inc()
                return decision
            decision = Decision("silent", "phone", "resend_interval", decision.score, decision.signals)
        await self._refused(req, decision)
        return decision

    async def verify_code(self, hospital_id: str, purpose: str, phone: str, code: str) -> bool:
        subject = self.subject(hospital_id, purpose, phone)
        settled = await self.codes.verify(subject, code, self.cfg.policy(hospital_id, purpose))
        self.metrics.verifications.labels(hospital_id, purpose, "verified" if settled else "failed").inc()
        if settled is None:
            return False
        await self._record([settled])
        await self.patients.remember(hospital_id, "phone", subject.phone_hash)
        return True

    async def settle(self) -> int:
        """Settle the codes whose grace has passed (on every request: no background task needed, and tests
        that move the clock see it at once)."""
        settled = await self.codes.settle_due(self.cfg.conversion_grace_s)
        await self._record(settled)
        return len(settled)

    async def escalations(self) -> list[dict[str, Any]]:
        """The conversion scopes that are or were escalated, highest level first (operators, the simulator)."""
        async with self.db.read() as conn:
            rows = await conn.execute(sa.select(sms_escalations).order_by(sms_escalations.c.level.desc()))
            return [dict(r._mapping) for r in rows]

    async def _record(self, settled: list[Settled]) -> None:
        for s in settled:
            c = self.cfg.policy(s.hospital_id, s.purpose).conversion
            if s.was_failed:
                await self.conversion.record(s.scopes, "failed", -1, c)
            await self.conversion.record(s.scopes, s.outcome, 1, c, s.at)
            assurance = next((x.rsplit("/", 1)[1] for x in s.scopes if x.startswith("hp/")), "unknown")
            self.metrics.settled.labels(s.hospital_id, s.purpose, assurance, s.outcome).inc()

    async def _refused(self, req: OtpRequest, d: Decision) -> None:
        layer = d.layer or "unknown"
        self.metrics.refused.labels(req.hospital_id, req.purpose, layer, d.action).inc()
        detail: dict[str, Any] = {
            "phone": req.subject.phone_masked,
            "purpose": req.purpose,
            "hospital": req.hospital_id,
            "layer": layer,
            "reason": d.reason,
            "action": d.action,
            "score": d.score,
            "signals": d.signals,
            "ip": req.ip,
            "device": req.device,
            "assurance": req.assurance,
            "escalation": req.escalation,
        }
        log.info("sms_refused", **{k: detail[k] for k in ("phone", "purpose", "layer", "reason", "action")})
        action = "sms.captcha_required" if d.action == "captcha" else "sms.refused"
        async with self.db.write() as conn:
            await audit.record(conn, req.app_id, action, f"sms:{req.subject.phone_hash[:32]}", detail)

    def _dispatch(self, message: SmsMessage) -> None:
        task = asyncio.create_task(self._send(message), name="sms-send")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, message: SmsMessage) -> None:
        try:
            await self.provider.send(message)
        except Exception:
            self.metrics.send_errors.labels(self.provider.name).inc()
            log.exception("sms_send_failed", phone=mask(message.phone), provider=self.provider.name)

    async def flush(self) -> None:
        """Wait for the SMS handed to background tasks (tests, shutdown)."""
        while self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)

    async def prune(self) -> int:
        await self.settle()
        pruned = await self.codes.prune()
        trust_days = max(p.known_patients.trust_days for p in self.cfg.all_policies())
        pruned += await self.patients.forget_older_than(trust_days)
        if isinstance(self.counters.storage, SqlStorage):
            pruned += await self.counters.storage.prune()
        return pruned

    async def run_pruner(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("sms_prune_failed")
            await asyncio.sleep(PRUNE_INTERVAL_S)

    async def close(self) -> None:
        await self.flush()
        await self.provider.close()
        await self.counters.close()
