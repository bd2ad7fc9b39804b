"""The Tencent Cloud sandbox server (aiohttp, real sockets). One endpoint, ``POST /``, answers both products, as
``sms.tencentcloudapi.com`` and ``captcha.tencentcloudapi.com`` do; the action is in ``X-TC-Action``.

Each request is authenticated as Tencent Cloud documents it ("Signature v3"): the ``Authorization`` header's
credential scope must name the day of ``X-TC-Timestamp`` (UTC) and the action's service; the timestamp must be
within five minutes; the SecretId known; the signature recomputed over the canonical request built from the
headers the request lists in ``SignedHeaders`` (values as sent, lowercased) and the SHA-256 of the body as
received. Failures answer HTTP 200 with ``Response.Error`` (``AuthFailure.*``), as the real API does.

This module has its own TC3 implementation on purpose: the gateway's client and this server are written apart
and checked against each other, against the published example and against Tencent's own SDK as a client.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SERVICES = {"SendSms": ("sms", "2021-01-11"), "DescribeCaptchaResult": ("captcha", "2019-07-22")}
AUTHORIZATION = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<service>[a-z]+)/tc3_request, "
    r"SignedHeaders=(?P<headers>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$"
)
MAX_SKEW_S = 300


class ApiFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def expected_signature(
    secret_key: str, date: str, service: str, timestamp: str, signed: list[str], headers: Any, body: bytes
) -> str:
    canonical_headers = "".join(f"{name}:{headers.get(name, '').strip().lower()}\n" for name in signed)
    payload_hash = (
        "UNSIGNED-PAYLOAD"
        if headers.get("X-TC-Content-SHA256") == "UNSIGNED-PAYLOAD"
        else hashlib.sha256(body).hexdigest()
    )
    canonical = "\n".join(["POST", "/", "", canonical_headers, ";".join(signed), payload_hash])
    to_sign = "\n".join(
        ["TC3-HMAC-SHA256", timestamp, f"{date}/{service}/tc3_request", hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(_hmac(_hmac(f"TC3{secret_key}".encode(), date), service), "tc3_request")
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass
class SentSms:
    phone: str
    sdk_app_id: str
    sign_name: str
    template_id: str
    params: list[str]


@dataclass
class TencentCloudSandbox:
    keys: dict[str, str]
    """SecretId → SecretKey."""
    sms_apps: dict[str, set[str]] = field(default_factory=dict)
    """SmsSdkAppId → its approved template ids."""
    captcha_apps: dict[int, str] = field(default_factory=dict)
    """CaptchaAppId → AppSecretKey."""
    clock: Callable[[], float] = time.time
    sent: list[SentSms] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """The error codes answered, in order (tests read them)."""
    _tickets: dict[str, tuple[int, str]] = field(default_factory=dict)

    def solve_captcha(self, captcha_app_id: int) -> tuple[str, str]:
        """What the widget hands a person who solved it: (ticket, randstr), good once."""
        ticket = "t03" + secrets.token_urlsafe(48)
        randstr = "@" + secrets.token_urlsafe(6)
        self._tickets[ticket] = (captcha_app_id, randstr)
        return ticket, randstr

    def authenticate(self, request: web.Request, body: bytes, action: str) -> None:
        match = AUTHORIZATION.match(request.headers.get("Authorization", ""))
        if match is None:
            raise ApiFailure("AuthFailure.InvalidAuthorization", "the Authorization header is not TC3-HMAC-SHA256")
        timestamp = request.headers.get("X-TC-Timestamp", "")
        if not re.fullmatch(r"[0-9]{1,12}", timestamp):
            raise ApiFailure("MissingParameter", "X-TC-Timestamp is missing or not a number")
        if abs(self.clock() - int(timestamp)) > MAX_SKEW_S:
            raise ApiFailure("AuthFailure.SignatureExpire", "the signature expired: the timestamp is off by > 5 min")
        if match["date"] != dt.datetime.fromtimestamp(int(timestamp), dt.UTC).strftime("%Y-%m-%d"):
            raise ApiFailure("AuthFailure.InvalidAuthorization", "the credential date is not the timestamp's (UTC)")
        if match["service"] != SERVICES[action][0]:
            raise ApiFailure("AuthFailure.InvalidAuthorization", f"the credential scope is not {SERVICES[action][0]}")
        secret_key = self.keys.get(match["id"])
        if secret_key is None:
            raise ApiFailure("AuthFailure.SecretIdNotFound", "the SecretId does not exist")
        signed = match["headers"].split(";")
        if not {"content-type", "host"} <= set(signed) or signed != sorted(signed):
            raise ApiFailure(
                "AuthFailure.InvalidAuthorization", "SignedHeaders must be sorted and sign content-type and host"
            )
        want = expected_signature(secret_key, match["date"], match["service"], timestamp, signed, request.headers, body)
        if not hmac.compare_digest(want, match["signature"]):
            raise ApiFailure("AuthFailure.SignatureFailure", "the signature does not match")

    def send_sms(self, params: dict[str, Any]) -> dict[str, Any]:
        app = str(params.get("SmsSdkAppId", ""))
        if app not in self.sms_apps:
            raise ApiFailure("FailedOperation.SmsSdkAppIdVerifyFail", "SmsSdkAppId is not this account's")
        template = str(params.get("TemplateId", ""))
        if template not in self.sms_apps[app]:
            raise ApiFailure("FailedOperation.TemplateIncorrectOrUnapproved", "the template is not approved")
        phones = params.get("PhoneNumberSet")
        if not isinstance(phones, list) or not phones or not params.get("SignName"):
            raise ApiFailure("MissingParameter", "PhoneNumberSet and SignName are required")
        statuses = []
        for phone in phones:
            if not re.fullmatch(r"\+861[3-9][0-9]{9}", str(phone)):
                statuses.append({"PhoneNumber": phone, "Code": "InvalidParameterValue.IncorrectPhoneNumber",
                                 "Message": "incorrect phone number", "SerialNo": "", "Fee": 0})  # fmt: skip
                continue
            self.sent.append(SentSms(phone[3:], app, str(params["SignName"]), template,
                                     [str(v) for v in params.get("TemplateParamSet", [])]))  # fmt: skip
            statuses.append({"SerialNo": uuid.uuid4().hex, "PhoneNumber": phone, "Fee": 1, "SessionContext": "",
                             "Code": "Ok", "Message": "send success", "IsoCode": "CN"})  # fmt: skip
        return {"SendStatusSet": statuses}

    def describe_captcha_result(self, params: dict[str, Any]) -> dict[str, Any]:
        app = params.get("CaptchaAppId")
        if app not in self.captcha_apps or params.get("CaptchaType") != 9:
            raise ApiFailure("InvalidParameter", "CaptchaAppId or CaptchaType is wrong")
        if params.get("AppSecretKey") != self.captcha_apps[app]:
            return {"CaptchaCode": 100, "CaptchaMsg": "appid-secretkey-ticket mismatch", "EvilLevel": 0}
        issued = self._tickets.pop(str(params.get("Ticket", "")), None)
        if issued is None or issued != (app, params.get("Randstr")):
            return {"CaptchaCode": 7, "CaptchaMsg": "captcha no match", "EvilLevel": 0}
        return {"CaptchaCode": 1, "CaptchaMsg": "OK", "EvilLevel": 0, "GetCaptchaTime": int(self.clock())}

    async def handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        body = await request.read()
        action = request.headers.get("X-TC-Action", "")
        try:
            if action not in SERVICES:
                raise ApiFailure("InvalidAction", f"no action {action!r} here")
            if request.headers.get("X-TC-Version") != SERVICES[action][1]:
                raise ApiFailure("InvalidParameterValue", f"{action} is version {SERVICES[action][1]}")
            self.authenticate(request, body, action)
            try:
                params = json.loads(body)
            except ValueError:
                raise ApiFailure("InvalidParameter", "the body is not JSON") from None
            if not isinstance(params, dict):
                raise ApiFailure("InvalidParameter", "the body is not a JSON object")
            result = self.send_sms(params) if action == "SendSms" else self.describe_captcha_result(params)
        except ApiFailure as e:
            self.refused.append(e.code)
            return _answer({"Error": {"Code": e.code, "Message": e.message}, "RequestId": request_id})
        return _answer({**result, "RequestId": request_id})


def _answer(response: dict[str, Any]) -> web.Response:
    """As Tencent Cloud answers: HTTP 200, ``Content-Type: application/json`` with no charset (the SDK compares
    the header exactly before it looks for ``Response.Error``)."""
    body = json.dumps({"Response": response}, ensure_ascii=False).encode()
    return web.Response(body=body, headers={"Content-Type": "application/json"})


@dataclass
class RunningSandbox:
    sandbox: TencentCloudSandbox
    runner: web.AppRunner
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_tencent_sandbox(sandbox: TencentCloudSandbox, host: str = "127.0.0.1", port: int = 0) -> RunningSandbox:
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/", sandbox.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    return RunningSandbox(sandbox, runner, host, bound)
