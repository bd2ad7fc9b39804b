"""The public SDKs as clients of the sandbox channels: wechatpayv3 (WeChatPay) and python-alipay-sdk (AliPay).

Their signatures must verify at the sandbox, the sandbox's must verify in the SDKs, and the callbacks the
sandbox sends must pass the SDKs' own verification. The SDKs are synchronous (requests/urlopen): they run in a
thread while the sandbox serves from this event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from alipay import AliPay
from Cryptodome.PublicKey import RSA
from wechatpayv3 import WeChatPay, WeChatPayType

from sandbox.channels import crypto as sandbox_crypto
from tests.support.channelrig import (
    ALIPAY_APP_ID,
    ALIPAY_APP_PRIVATE,
    ALIPAY_PUBLIC,
    APIV3_KEY,
    WECHAT_APPID,
    WECHAT_KEY,
    WECHAT_MCHID,
    WECHAT_SERIAL,
)


async def admin(sandbox, path: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as http, http.post(f"{sandbox.admin_url}{path}", json=body) as resp:
        data = await resp.json()
        assert resp.status < 300, data
        return data


def wechat_sdk(sandbox, tmp_path, receiver, *, public_key: bool = False) -> WeChatPay:
    platform = sandbox.wechat.platform
    kwargs: dict = {}
    if public_key:
        kwargs = {
            "public_key": sandbox_crypto.public_pem(platform.public_key_key.public_key()).decode(),
            "public_key_id": platform.public_key_id,
        }
    else:
        cert_dir = tmp_path / "sdk-certs"
        cert_dir.mkdir(exist_ok=True)
        (cert_dir / f"{platform.cert_serial}.pem").write_bytes(sandbox_crypto.certificate_pem(platform.cert))
        kwargs = {"cert_dir": str(cert_dir)}
    sdk = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=WECHAT_MCHID,
        private_key=WECHAT_KEY.read_text(),
        cert_serial_no=WECHAT_SERIAL,
        appid=WECHAT_APPID,
        apiv3_key=APIV3_KEY,
        notify_url=f"{receiver.url}/sdk",
        timeout=(5, 10),
        **kwargs,
    )
    sdk._core._gate_way = sandbox.wechat_base_url
    return sdk


async def test_wechatpayv3_full_round(sandbox, tmp_path, receiver):
    sandbox.wechat.platform.mode = "certificate"
    sdk = wechat_sdk(sandbox, tmp_path, receiver)
    code, message = await asyncio.to_thread(
        sdk.pay, description="挂号费", out_trade_no="SDK-WX-00001", amount={"total": 1250, "currency": "CNY"}
    )
    assert code == 200, message
    assert json.loads(message)["code_url"].startswith("weixin://")
    code, message = await asyncio.to_thread(sdk.query, out_trade_no="SDK-WX-00001")
    assert code == 200 and json.loads(message)["trade_state"] == "NOTPAY"

    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "SDK-WX-00001"})
    (cb,) = await receiver.wait_for(1)
    result = sdk.callback(cb.headers, cb.body)
    assert result is not None, "wechatpayv3 refused the sandbox's callback"
    assert result["event_type"] == "TRANSACTION.SUCCESS"
    assert result["resource"]["out_trade_no"] == "SDK-WX-00001" and result["resource"]["trade_state"] == "SUCCESS"
    tampered = cb.body.replace(b"TRANSACTION.SUCCESS", b"TRANSACTION.SUCCESX")
    assert sdk.callback(cb.headers, tampered) is None

    code, message = await asyncio.to_thread(
        sdk.refund,
        out_refund_no="SDK-WX-RF-1",
        amount={"refund": 250, "total": 1250, "currency": "CNY"},
        out_trade_no="SDK-WX-00001",
        notify_url=f"{receiver.url}/sdk-refund",
    )
    assert code == 200 and json.loads(message)["status"] == "PROCESSING"
    refund_cb = (await receiver.wait_for(2))[1]
    refund = sdk.callback(refund_cb.headers, refund_cb.body)
    assert refund["event_type"] == "REFUND.SUCCESS" and refund["resource"]["amount"]["refund"] == 250
    code, message = await asyncio.to_thread(sdk.query_refund, out_refund_no="SDK-WX-RF-1")
    assert code == 200 and json.loads(message)["status"] == "SUCCESS"

    code, message = await asyncio.to_thread(
        sdk.pay, description="x", out_trade_no="SDK-WX-00002", amount={"total": 1, "currency": "CNY"}
    )
    assert code == 200
    code, _ = await asyncio.to_thread(sdk.close, out_trade_no="SDK-WX-00002")
    assert code == 204

    code, message = await asyncio.to_thread(
        sdk.pay,
        description="药费",
        out_trade_no="SDK-WX-00003",
        amount={"total": 300, "currency": "CNY"},
        payer={"auth_code": "134567890123456789"},
        scene_info={"store_info": {"out_id": "HIS"}},
        pay_type=WeChatPayType.CODEPAY,
    )
    assert code == 200 and json.loads(message)["trade_state"] == "SUCCESS"
    code, message = await asyncio.to_thread(sdk.codepay_reverse, out_trade_no="SDK-WX-00003")
    assert code == 200 and json.loads(message)["out_trade_no"] == "SDK-WX-00003"

    today = sandbox.ledger.now().date().isoformat()
    code, message = await asyncio.to_thread(sdk.trade_bill, bill_date=today)
    assert code == 200, message
    bill = json.loads(message)
    code, content = await asyncio.to_thread(sdk.download_bill, bill["download_url"])
    assert code == 200
    assert hashlib.sha1(gzip.decompress(content)).hexdigest() == bill["hash_value"]


async def test_wechatpayv3_public_key_mode(sandbox, tmp_path, receiver):
    sandbox.wechat.platform.mode = "public_key"
    sdk = wechat_sdk(sandbox, tmp_path, receiver, public_key=True)
    code, message = await asyncio.to_thread(
        sdk.pay, description="x", out_trade_no="SDK-WX-PK-001", amount={"total": 100, "currency": "CNY"}
    )
    assert code == 200, message
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "SDK-WX-PK-001"})
    (cb,) = await receiver.wait_for(1)
    assert cb.headers["Wechatpay-Serial"] == sandbox.wechat.platform.public_key_id
    assert sdk.callback(cb.headers, cb.body)["resource"]["trade_state"] == "SUCCESS"


async def test_wechatpayv3_downloads_the_platform_certificate(sandbox, tmp_path, receiver):
    sandbox.wechat.platform.mode = "certificate"
    sdk = wechat_sdk(sandbox, tmp_path, receiver)
    sdk._core._certificates.clear()
    await asyncio.to_thread(sdk._core._update_certificates)
    assert [c.serial_number for c in sdk._core._certificates] == [sandbox.wechat.platform.cert.serial_number]


async def test_wechatpayv3_with_a_foreign_key_is_refused(sandbox, tmp_path, receiver):
    sdk = wechat_sdk(sandbox, tmp_path, receiver)
    sdk._core._private_key = sandbox_crypto.new_rsa_key()
    code, message = await asyncio.to_thread(sdk.query, out_trade_no="SDK-WX-00009")
    assert code == 401 and json.loads(message)["code"] == "SIGN_ERROR"


def alipay_sdk(sandbox, notify_url: str | None = None) -> AliPay:
    sdk = AliPay(
        appid=ALIPAY_APP_ID,
        app_notify_url=notify_url,
        app_private_key_string=ALIPAY_APP_PRIVATE.read_text(),
        alipay_public_key_string=ALIPAY_PUBLIC.read_text(),
        sign_type="RSA2",
    )
    sdk._gateway = sandbox.alipay_gateway_url
    return sdk


async def test_python_alipay_sdk_full_round(sandbox, receiver):
    sdk = alipay_sdk(sandbox, f"{receiver.url}/alipay")
    result = await asyncio.to_thread(
        sdk.api_alipay_trade_precreate, subject="挂号费", out_trade_no="SDK-ALI-0001", total_amount="12.50"
    )
    assert result["code"] == "10000" and result["qr_code"].startswith("https://qr.alipay.com/")
    result = await asyncio.to_thread(sdk.api_alipay_trade_query, out_trade_no="SDK-ALI-0001")
    assert (result["code"], result["sub_code"]) == ("40004", "ACQ.TRADE_NOT_EXIST")
    await admin(sandbox, "/payer/scan", {"channel": "alipay", "out_trade_no": "SDK-ALI-0001"})
    result = await asyncio.to_thread(sdk.api_alipay_trade_query, out_trade_no="SDK-ALI-0001")
    assert result["trade_status"] == "WAIT_BUYER_PAY"

    await admin(sandbox, "/payer/pay", {"channel": "alipay", "out_trade_no": "SDK-ALI-0001"})
    (cb,) = await receiver.wait_for(1)
    fields = dict(parse_qsl(cb.body.decode()))
    signature = fields.pop("sign")
    assert sdk.verify(dict(fields), signature)
    fields["total_amount"] = "0.01"
    assert not sdk.verify(dict(fields), signature)

    result = await asyncio.to_thread(sdk.api_alipay_trade_query, out_trade_no="SDK-ALI-0001")
    assert result["trade_status"] == "TRADE_SUCCESS" and result["total_amount"] == "12.50"
    result = await asyncio.to_thread(
        sdk.api_alipay_trade_refund, refund_amount="2.50", out_trade_no="SDK-ALI-0001", out_request_no="R1"
    )
    assert result["code"] == "10000" and result["fund_change"] == "Y" and result["refund_fee"] == "2.50"
    result = await asyncio.to_thread(
        sdk.api_alipay_trade_refund, refund_amount="2.50", out_trade_no="SDK-ALI-0001", out_request_no="R1"
    )
    assert result["fund_change"] == "N" and result["refund_fee"] == "2.50"
    result = await asyncio.to_thread(
        sdk.api_alipay_trade_fastpay_refund_query, out_request_no="R1", out_trade_no="SDK-ALI-0001"
    )
    assert result["refund_status"] == "REFUND_SUCCESS" and result["refund_amount"] == "2.50"

    result = await asyncio.to_thread(
        sdk.api_alipay_trade_pay,
        out_trade_no="SDK-ALI-0002",
        scene="bar_code",
        auth_code="286123456789012345",
        subject="药费",
        total_amount="3.00",
    )
    assert result["code"] == "10000" and result["trade_status"] == "TRADE_SUCCESS"
    result = await asyncio.to_thread(sdk.api_alipay_trade_cancel, out_trade_no="SDK-ALI-0002")
    assert result["action"] == "refund" and result["retry_flag"] == "N"

    result = await asyncio.to_thread(
        sdk.api_alipay_trade_create,
        subject="x",
        out_trade_no="SDK-ALI-0003",
        total_amount="1.00",
        buyer_id="2088102177846880",
    )
    result = await asyncio.to_thread(sdk.api_alipay_trade_close, out_trade_no="SDK-ALI-0003")
    assert result["code"] == "10000"


async def test_python_alipay_sdk_client_side_orders(sandbox):
    sdk = alipay_sdk(sandbox)
    order_string = sdk.api_alipay_trade_wap_pay(subject="x", out_trade_no="SDK-ALI-WAP1", total_amount="0.10")
    async with aiohttp.ClientSession() as http, http.get(f"{sandbox.alipay_gateway_url}?{order_string}") as resp:
        assert resp.status == 200 and "SDK-ALI-WAP1" in await resp.text()
    order_string = sdk.api_alipay_trade_app_pay(subject="x", out_trade_no="SDK-ALI-APP1", total_amount="0.20")
    trade = await admin(sandbox, "/payer/app-pay", {"order_string": order_string})
    assert trade["state"] == "SUCCESS" and trade["amount_fen"] == 20


async def test_python_alipay_sdk_with_a_foreign_key_is_refused(sandbox):
    sdk = alipay_sdk(sandbox)
    sdk._app_private_key = RSA.generate(2048)
    result = await asyncio.to_thread(sdk.api_alipay_trade_query, out_trade_no="SDK-ALI-0009")
    assert result["code"] == "40002" and result["sub_code"] == "isv.invalid-signature"


async def test_bill_url_is_on_the_sandbox(sandbox):
    sdk = alipay_sdk(sandbox)
    await asyncio.to_thread(
        sdk.api_alipay_trade_pay,
        out_trade_no="SDK-ALI-BILL",
        scene="bar_code",
        auth_code="286123456789012345",
        subject="x",
        total_amount="1.00",
    )
    result = await asyncio.to_thread(
        sdk.server_api,
        "alipay.data.dataservice.bill.downloadurl.query",
        biz_content={"bill_type": "trade", "bill_date": sandbox.ledger.now().date().isoformat()},
    )
    assert urlsplit(result["bill_download_url"]).netloc == urlsplit(sandbox.base_url).netloc
