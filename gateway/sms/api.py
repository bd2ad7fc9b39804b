"""``POST /v1/sms/otp`` and ``POST /v1/sms/verify`` for the hospital apps, signed like the rest of ``/v1``.

The app forwards what it knows of the patient's browser (``client``: address, user agent, language, selected
headers, the page's fingerprint) and of the person (``identity``: their WeChat openid, Alipay user id or the app's
own user id); the gateway never sees the browser itself. Answers about a phone are the same
whether or not anything is known about it: a request is ``sent`` whether it sent, re-sent the live code, or was
dropped by a per-phone rule; a verification is ``{"verified": false}`` for a wrong, expired, exhausted or
missing code alike.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress

from bridge.errors import ApiError
from gateway.api.auth import APP
from gateway.api.orders import json_response, parse
from gateway.sms.captcha import CaptchaAnswer
from gateway.sms.config import Purpose
from gateway.sms.phones import BadPhone, normalize
from gateway.sms.service import SmsService

SMS = web.AppKey("sms", SmsService)
Short = Annotated[str, Field(max_length=512)]

REFUSALS: dict[str, tuple[int, str, str]] = {
    "refused": (403, "sms_refused", "requests from this client are not accepted"),
    "rate_limited": (429, "sms_rate_limited", "too many code requests from this client; try again later"),
    "unavailable": (503, "sms_unavailable", "verification codes cannot be sent now; try again later"),
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClientInfo(_Body):
    ip: IPvAnyAddress | None = None
    user_agent: Short = ""
    accept_language: Annotated[str, Field(max_length=128)] = ""
    fingerprint: Annotated[str, Field(min_length=8, max_length=128)] | None = None
    headers: Annotated[dict[str, Short], Field(max_length=16)] = {}


class IdentityBody(_Body):
    """Who the person is in the app, as the app knows them (it signs the request, so it vouches for this)."""

    kind: Literal["wechat_openid", "alipay_user_id", "app_user"]
    id: Annotated[str, Field(min_length=1, max_length=128)]


class CaptchaBody(_Body):
    challenge_id: Annotated[str, Field(min_length=1, max_length=512)]
    token: Annotated[str, Field(min_length=1, max_length=512)]


class OtpBody(_Body):
    phone: Annotated[str, Field(min_length=11, max_length=20)]
    purpose: Purpose
    client: ClientInfo = ClientInfo()
    identity: IdentityBody | None = None
    card_no: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z_-]+$")] | None = None
    """For ``binding``: the medical card being bound; the number must be the one the HIS has for it."""
    captcha: CaptchaBody | None = None


class VerifyBody(_Body):
    phone: Annotated[str, Field(min_length=11, max_length=20)]
    purpose: Purpose
    code: Annotated[str, Field(min_length=1, max_length=16)]


class OtpSent(BaseModel):
    """The same answer whether a code went out, the live one was re-sent, or a per-phone rule dropped it."""

    status: Literal["sent"] = "sent"
    resend_after_s: int
    """Wait at least this long before asking for another code for this phone."""
    expires_in_s: int
    """How long a code lives."""


class Verified(BaseModel):
    """``false`` for a wrong, expired, used-up or missing code alike."""

    verified: bool


def _phone(raw: str) -> str:
    try:
        return normalize(raw)
    except BadPhone as e:
        raise ApiError(422, "schema_violation", f"phone: {e}") from None


async def request_otp(request: web.Request) -> web.Response:
    sms, app = request.app[SMS], request[APP]
    body = parse(request, OtpBody)
    client = body.client
    req = sms.otp_request(
        app_id=app.id,
        hospital_id=app.hospital_id,
        purpose=body.purpose,
        phone=_phone(body.phone),
        ip=str(client.ip) if client.ip is not None else None,
        user_agent=client.user_agent,
        accept_language=client.accept_language,
        fingerprint=client.fingerprint,
        headers=client.headers,
        captcha=CaptchaAnswer(body.captcha.challenge_id, body.captcha.token) if body.captcha else None,
        identity=(body.identity.kind, body.identity.id) if body.identity else None,
        card_no=body.card_no,
    )
    decision = await sms.request_code(req)
    policy = sms.cfg.policy(app.hospital_id, body.purpose)
    if decision.action in ("send", "silent"):
        sent = OtpSent(resend_after_s=policy.phone.resend_interval_s, expires_in_s=policy.code.ttl_s)
        return json_response(200, sent.model_dump())
    if decision.action == "captcha":
        assert decision.challenge is not None
        c = decision.challenge
        captcha: dict[str, Any] = {"provider": c.provider, "challenge_id": c.challenge_id, "params": c.params}
        raise ApiError(403, "captcha_required", "solve the captcha and send the request again", captcha=captcha)
    status, code, message = REFUSALS[decision.action]
    raise ApiError(status, code, message)


async def verify_otp(request: web.Request) -> web.Response:
    sms, app = request.app[SMS], request[APP]
    body = parse(request, VerifyBody)
    ok = await sms.verify_code(app.hospital_id, body.purpose, _phone(body.phone), body.code)
    return json_response(200, Verified(verified=ok).model_dump())


def add_routes(app: web.Application, sms: SmsService) -> None:
    app[SMS] = sms
    app.router.add_post("/v1/sms/otp", request_otp)
    app.router.add_post("/v1/sms/verify", verify_otp)
