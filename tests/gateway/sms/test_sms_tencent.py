"""Tencent Cloud SMS (``SendSms``) and captcha (``DescribeCaptchaResult``), TC3-HMAC-SHA256 signed.

The gateway's signer and the sandbox server's checker (written apart) both reproduce the worked examples of
Tencent's "Signature v3" documentation (tests/fixtures/tencentcloud/); Tencent's own SDK, as a client of the
sandbox, is accepted, and refused with a wrong key or an old timestamp; the running gateway sends its codes and
checks its captchas through the sandbox over real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest
from multidict import CIMultiDict
from tencentcloud.captcha.v20190722 import captcha_client
from tencentcloud.captcha.v20190722 import models as captcha_models
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.sms.v20210111 import models as sms_models
from tencentcloud.sms.v20210111 import sms_client

from gateway.runtime import start_gateway
from gateway.sms import tencent
from sandbox.tencentcloud import TencentCloudSandbox, start_tencent_sandbox
from sandbox.tencentcloud.server import expected_signature
from tests.support.gateway_rig import MERCHANT
from tests.support.memory_channel import MemoryChannel
from tests.support.rig import REPO
from tests.support.sms_rig import SmsApp, client, sms_gateway_config, sms_section

VECTORS = json.loads((REPO / "tests" / "fixtures" / "tencentcloud" / "tc3_signature_v3.json").read_text())
SECRET_ID = "AKIDsandbox0000000000000000000000000"
SECRET_KEY = "sandbox-secret-key-0123456789abcdef"
SDK_APP = "1400000001"
TEMPLATES = {"binding": "2000001", "payment": "2000002", "login": "2000003"}
CAPTCHA_APP = 190000001
CAPTCHA_KEY = "captcha-app-secret-0123456789"


def test_the_signer_reproduces_the_published_examples():
    v = VECTORS["post_json"]
    payload = v["payload"].encode()
    assert hashlib.sha256(payload).hexdigest() == v["hashed_payload"]
    canonical = tencent.canonical_request(v["host"], payload, v["content_type"])
    assert canonical == v["canonical_request"]
    assert hashlib.sha256(canonical.encode()).hexdigest() == v["hashed_canonical_request"]
    assert tencent.tc3_signature(v["secret_key"], v["service"], v["timestamp"], canonical) == (
        v["signature"],
        v["credential_scope"],
    )
    headers = tencent.signed_headers(
        secret_id=v["secret_id"], secret_key=v["secret_key"], service=v["service"], host=v["host"],
        action=v["action"], version=v["version"], timestamp=v["timestamp"], payload=payload, region=v["region"],
    )  # fmt: skip
    assert headers["Authorization"] == (
        f"TC3-HMAC-SHA256 Credential={v['secret_id']}/{v['credential_scope']}, SignedHeaders=content-type;host, "
        f"Signature={v['signature']}"
    )
    g = VECTORS["get_query"]
    assert hashlib.sha256(g["canonical_request"].encode()).hexdigest() == g["hashed_canonical_request"]
    assert tencent.tc3_signature(g["secret_key"], g["service"], g["timestamp"], g["canonical_request"]) == (
        g["signature"],
        g["credential_scope"],
    )


def test_the_sandbox_checker_reproduces_the_published_example():
    v = VECTORS["post_json"]
    headers = CIMultiDict({"Content-Type": v["content_type"], "Host": v["host"]})
    date = v["credential_scope"].split("/")[0]
    args = (v["secret_key"], date, v["service"], str(v["timestamp"]), ["content-type", "host"], headers)
    assert expected_signature(*args, v["payload"].encode()) == v["signature"]
    assert expected_signature(*args, v["payload"].encode() + b" ") != v["signature"]


@pytest.fixture
async def tencent_cloud():
    sandbox = TencentCloudSandbox(
        keys={SECRET_ID: SECRET_KEY},
        sms_apps={SDK_APP: set(TEMPLATES.values())},
        captcha_apps={CAPTCHA_APP: CAPTCHA_KEY},
    )
    running = await start_tencent_sandbox(sandbox)
    yield running
    await running.close()


def sdk_profile(endpoint: str) -> ClientProfile:
    return ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=endpoint.removeprefix("http://")))


async def test_tencents_sdk_is_accepted_by_the_sandbox(tencent_cloud):
    def send(secret_key: str) -> object:
        c = sms_client.SmsClient(
            credential.Credential(SECRET_ID, secret_key), "ap-guangzhou", sdk_profile(tencent_cloud.endpoint)
        )
        req = sms_models.SendSmsRequest()
        req.from_json_string(json.dumps({"PhoneNumberSet": ["+8613800000001"], "SmsSdkAppId": SDK_APP,
                                         "SignName": "医院", "TemplateId": "2000001",
                                         "TemplateParamSet": ["123456", "5"]}))  # fmt: skip
        return c.SendSms(req)

    response = await asyncio.to_thread(send, SECRET_KEY)
    assert response.SendStatusSet[0].Code == "Ok"
    [sent] = tencent_cloud.sandbox.sent
    assert (sent.phone, sent.template_id, sent.params) == ("13800000001", "2000001", ["123456", "5"])
    with pytest.raises(TencentCloudSDKException) as refused:
        await asyncio.to_thread(send, SECRET_KEY + "x")
    assert refused.value.code == "AuthFailure.SignatureFailure"

    ticket, randstr = tencent_cloud.sandbox.solve_captcha(CAPTCHA_APP)

    def check(ticket: str) -> object:
        c = captcha_client.CaptchaClient(
            credential.Credential(SECRET_ID, SECRET_KEY), "", sdk_profile(tencent_cloud.endpoint)
        )
        req = captcha_models.DescribeCaptchaResultRequest()
        req.from_json_string(json.dumps({"CaptchaType": 9, "Ticket": ticket, "UserIp": "127.0.0.1",
                                         "Randstr": randstr, "CaptchaAppId": CAPTCHA_APP,
                                         "AppSecretKey": CAPTCHA_KEY}))  # fmt: skip
        return c.DescribeCaptchaResult(req)

    assert (await asyncio.to_thread(check, ticket)).CaptchaCode == 1
    assert (await asyncio.to_thread(check, ticket)).CaptchaCode == 7, "a ticket is good once"


async def test_the_sandbox_refuses_an_old_timestamp_and_an_unknown_key(tencent_cloud):
    api = tencent.TencentApi(
        "sms", tencent_cloud.endpoint, "2021-01-11", SECRET_ID, SECRET_KEY, lambda: time.time() - 301
    )
    with pytest.raises(tencent.TencentError) as expired:
        await api.call("SendSms", {})
    await api.close()
    assert expired.value.code == "AuthFailure.SignatureExpire"
    api = tencent.TencentApi("sms", tencent_cloud.endpoint, "2021-01-11", "AKIDnobody", SECRET_KEY, time.time)
    with pytest.raises(tencent.TencentError) as unknown:
        await api.call("SendSms", {})
    await api.close()
    assert unknown.value.code == "AuthFailure.SecretIdNotFound"
    api = tencent.TencentApi("captcha", tencent_cloud.endpoint, "2021-01-11", SECRET_ID, SECRET_KEY, time.time)
    with pytest.raises(tencent.TencentError) as wrong_scope:
        await api.call("SendSms", {})
    await api.close()
    assert wrong_scope.value.code == "AuthFailure.InvalidAuthorization"


@pytest.fixture
async def tencent_gateway(tmp_path, keys, api_factory, tencent_cloud):
    (tmp_path / "tencent.key").write_text(SECRET_KEY)
    (tmp_path / "captcha.key").write_text(CAPTCHA_KEY)
    creds = {"secret_id": SECRET_ID, "secret_key_file": "tencent.key", "endpoint": tencent_cloud.endpoint}
    sms = sms_section(
        tmp_path,
        provider={"kind": "tencent", "tencent": {**creds, "sdk_app_id": SDK_APP, "sign_name": "医院",
                                                 "templates": TEMPLATES}},
        captcha={"kind": "tencent", "tencent": {**creds, "captcha_app_id": CAPTCHA_APP,
                                                "app_secret_key_file": "captcha.key"}},
        defaults={"segment": {"caps": [{"window_s": 600, "limit": 1}]}, "conversion": {"enabled": False}},
    )  # fmt: skip
    cfg = sms_gateway_config(tmp_path, keys, f"sqlite+aiosqlite:///{tmp_path / 'gw.sqlite3'}", sms)
    running = await start_gateway(cfg, channels={MERCHANT: MemoryChannel()}, his={}, run_workers=False)
    yield running, SmsApp(api_factory(running))
    await running.stop()


async def test_the_gateway_sends_through_tencent_cloud_sms(tencent_gateway, tencent_cloud):
    running, app = tencent_gateway
    assert (await app.otp("13800000001", "payment", client_info=client(1)))[0] == 200
    assert running.gateway.sms is not None
    await running.gateway.sms.flush()
    [sent] = tencent_cloud.sandbox.sent
    assert (sent.phone, sent.template_id, sent.sign_name) == ("13800000001", "2000002", "医院")
    code, minutes = sent.params
    assert minutes == "5"
    assert await app.verify("13800000001", code, "payment") == (200, {"verified": True})


async def test_the_gateway_checks_tencent_captcha_tickets(tencent_gateway, tencent_cloud):
    _running, app = tencent_gateway
    assert (await app.otp("13800000001", client_info=client(1)))[0] == 200
    status, body = await app.otp("13800000002", client_info=client(2))
    assert (status, body["error"]["code"]) == (403, "captcha_required")
    assert body["captcha"]["provider"] == "tencent"
    assert body["captcha"]["params"]["captcha_app_id"] == CAPTCHA_APP
    challenge = body["captcha"]["challenge_id"]
    ticket, randstr = tencent_cloud.sandbox.solve_captcha(CAPTCHA_APP)
    answer = {"challenge_id": challenge, "token": f"{randstr}:{ticket}"}
    assert (await app.otp("13800000003", client_info=client(3), captcha=answer))[0] == 403, "bound to its number"
    ticket, randstr = tencent_cloud.sandbox.solve_captcha(CAPTCHA_APP)
    answer = {"challenge_id": challenge, "token": f"{randstr}:{ticket}"}
    assert (await app.otp("13800000002", client_info=client(2), captcha=answer))[0] == 200
    assert (await app.otp("13800000002", client_info=client(2), captcha=answer))[0] == 403, "used once"
    forged = {"challenge_id": challenge, "token": f"{randstr}:t03forged"}
    assert (await app.otp("13800000002", client_info=client(2), captcha=forged))[0] == 403


async def test_a_provider_refusal_is_counted_not_lost_silently(tencent_gateway, tencent_cloud):
    running, app = tencent_gateway
    tencent_cloud.sandbox.keys[SECRET_ID] = "rotated"
    assert (await app.otp("13800000001", client_info=client(1)))[0] == 200
    sms = running.gateway.sms
    assert sms is not None
    await sms.flush()
    assert sms.metrics.send_errors.labels("tencent")._value.get() == 1
    assert tencent_cloud.sandbox.refused == ["AuthFailure.SignatureFailure"]
