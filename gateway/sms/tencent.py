"""Tencent Cloud: SMS (``SendSms``, API 2021-01-11) and captcha ticket verification (``DescribeCaptchaResult``,
API 2019-07-22), both over TencentCloud API 3.0 signed with TC3-HMAC-SHA256.

The official SDK (``tencentcloud-sdk-python``) is blocking (``requests``) and would need a thread per SMS in this
asyncio gateway, and the signature is a few lines: it is written here, checked against the worked example of
Tencent Cloud's "Signature v3" documentation (tests/fixtures/tencentcloud/) and against the SDK acting as a
client of the sandbox server (``sandbox/tencentcloud``), which checks signatures the way Tencent does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.sms.captcha import CaptchaAnswer, Challenge, bind_challenge, open_challenge
from gateway.sms.clock import Clock
from gateway.sms.limits_store import Counters
from gateway.sms.providers import SmsMessage

ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def canonical_request(host: str, payload: bytes, content_type: str = CONTENT_TYPE) -> str:
    return "\n".join(
        [
            "POST",
            "/",
            "",
            f"content-type:{content_type}\nhost:{host}\n",
            "content-type;host",
            hashlib.sha256(payload).hexdigest(),
        ]
    )


def tc3_signature(secret_key: str, service: str, timestamp: int, canonical: str) -> tuple[str, str]:
    """(signature, credential scope) of a canonical request."""
    date = dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d")
    scope = f"{date}/{service}/tc3_request"
    to_sign = f"{ALGORITHM}\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _hmac(_hmac(_hmac(f"TC3{secret_key}".encode(), date), service), "tc3_request")
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), scope


def signed_headers(
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    host: str,
    action: str,
    version: str,
    timestamp: int,
    payload: bytes,
    region: str | None = None,
) -> dict[str, str]:
    signature, scope = tc3_signature(secret_key, service, timestamp, canonical_request(host, payload))
    headers = {
        "Authorization": f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders=content-type;host, "
        f"Signature={signature}",
        "Content-Type": CONTENT_TYPE,
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Timestamp": str(timestamp),
        "X-TC-Version": version,
    }
    if region:
        headers["X-TC-Region"] = region
    return headers


class TencentError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass
class TencentApi:
    """One product's API: ``service`` (``sms``, ``captcha``), its endpoint and version, and the credentials."""

    service: str
    endpoint: str
    version: str
    secret_id: str
    secret_key: str
    clock: Clock
    region: str | None = None
    timeout_s: float = 10.0
    _session: aiohttp.ClientSession | None = None

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[-1].rstrip("/")

    async def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """The ``Response`` object; raises ``TencentError`` for an ``Error`` answer or a transport failure."""
        payload = json.dumps(params, ensure_ascii=False).encode()
        headers = signed_headers(
            secret_id=self.secret_id,
            secret_key=self.secret_key,
            service=self.service,
            host=self.host,
            action=action,
            version=self.version,
            timestamp=int(self.clock()),
            payload=payload,
            region=self.region,
        )
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        url = self.endpoint if "://" in self.endpoint else f"https://{self.endpoint}"
        try:
            async with self._session.post(url.rstrip("/") + "/", data=payload, headers=headers) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise TencentError("Transport", str(e)) from e
        response = body.get("Response") if isinstance(body, dict) else None
        if not isinstance(response, dict):
            raise TencentError("Malformed", "no Response object in the answer")
        error = response.get("Error")
        if error:
            raise TencentError(str(error.get("Code")), str(error.get("Message")))
        return response

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class TencentSmsProvider:
    """``SendSms``: the template approved for each purpose, with the code and its minutes as parameters."""

    name = "tencent"

    def __init__(self, api: TencentApi, sdk_app_id: str, sign_name: str, templates: dict[str, str]) -> None:
        self.api = api
        self.sdk_app_id = sdk_app_id
        self.sign_name = sign_name
        self.templates = templates

    async def send(self, message: SmsMessage) -> None:
        params = {
            "PhoneNumberSet": [f"+86{message.phone}"],
            "SmsSdkAppId": self.sdk_app_id,
            "SignName": self.sign_name,
            "TemplateId": self.templates[message.purpose],
            "TemplateParamSet": [message.code, str(message.minutes)],
        }
        response = await self.api.call("SendSms", params)
        statuses = response.get("SendStatusSet") or []
        if not statuses or statuses[0].get("Code") != "Ok":
            status = statuses[0] if statuses else {}
            raise TencentError(str(status.get("Code", "NoStatus")), str(status.get("Message", "no send status")))

    async def close(self) -> None:
        await self.api.close()


class TencentCaptcha:
    """Tencent Cloud captcha (天御): the page shows the widget for ``captcha_app_id``; the person's ``ticket`` and
    ``randstr`` come back as the answer's token (``randstr:ticket``) and are checked with
    ``DescribeCaptchaResult``. The challenge id is ours: it binds the answer to the phone and purpose, and is
    spent once on every instance."""

    name = "tencent"

    def __init__(
        self,
        api: TencentApi,
        captcha_app_id: int,
        app_secret_key: str,
        key: bytes,
        counters: Counters,
        clock: Clock,
        ttl_s: int,
    ) -> None:
        self.api = api
        self.captcha_app_id = captcha_app_id
        self.app_secret_key = app_secret_key
        self.key = key
        self.counters = counters
        self.clock = clock
        self.ttl_s = ttl_s

    async def issue(self, binding: str) -> Challenge:
        challenge_id = bind_challenge(self.key, binding, self.clock, self.ttl_s)
        return Challenge(self.name, challenge_id, {"captcha_app_id": self.captcha_app_id, "expires_in_s": self.ttl_s})

    async def verify(self, answer: CaptchaAnswer, binding: str, user_ip: str | None = None) -> bool:
        nonce = open_challenge(self.key, answer.challenge_id, binding, self.clock)
        randstr, sep, ticket = answer.token.partition(":")
        if nonce is None or not sep or not ticket:
            return False
        params = {
            "CaptchaType": 9,
            "Ticket": ticket,
            "UserIp": user_ip or "0.0.0.0",
            "Randstr": randstr,
            "CaptchaAppId": self.captcha_app_id,
            "AppSecretKey": self.app_secret_key,
        }
        try:
            response = await self.api.call("DescribeCaptchaResult", params)
        except TencentError:
            return False
        if response.get("CaptchaCode") != 1:
            return False
        return await self.counters.first(f"captcha/{nonce}", self.ttl_s + 60)
