"""Alipay public-key-certificate mode: ``app_cert_sn`` and ``alipay_root_cert_sn`` as Alipay defines them
(against the values yansongda/pay's tests publish and python-alipay-sdk's DCAliPay computes), and our client
against the sandbox Alipay in certificate mode: every call signed with the SNs, answers verified with the
certificate they name, a replaced Alipay certificate fetched and chain-checked, a foreign one refused."""

from __future__ import annotations

import asyncio
import base64
import json
from urllib.parse import parse_qsl

import aiohttp
import pytest
from alipay import DCAliPay
from cryptography import x509

from gateway.channels import alipay_crypto, certchain
from gateway.channels.alipay import AlipayChannel
from gateway.channels.base import (
    ChannelError,
    NotificationRejected,
    PaymentRequest,
    RefundRequest,
    RefundState,
    Scene,
    TradeState,
)
from sandbox.channels import start_sandbox_channels
from sandbox.channels.alipay import AlipayCertificates
from tests.support.channelrig import (
    ALIPAY_APP_ID,
    ALIPAY_APP_PRIVATE,
    ALIPAY_CERT_FIXTURES,
    ALIPAY_SELLER_ID,
    alipay_cert_config,
    alipay_settings,
    start_receiver,
    write_alipay_cert_trust,
)


@pytest.fixture(scope="module")
def expected_sn() -> dict:
    return json.loads((ALIPAY_CERT_FIXTURES / "expected_sn.json").read_text())


def test_app_cert_sn_is_the_published_value(expected_sn):
    pem = (ALIPAY_CERT_FIXTURES / "alipayAppPublicCert.crt").read_bytes()
    sn = alipay_crypto.cert_sn(x509.load_pem_x509_certificate(pem))
    assert sn == expected_sn["alipayAppPublicCert.crt"] == DCAliPay.get_cert_sn(pem.decode())


def test_root_cert_sn_is_the_published_value(expected_sn):
    """The bundle holds four roots: an SM2 one and one ``cryptography`` cannot read are left out, as Alipay's
    rule (RSA-signed roots only) leaves them out."""
    bundle = (ALIPAY_CERT_FIXTURES / "alipayRootCert.crt").read_bytes()
    assert alipay_crypto.root_cert_sn(bundle) == expected_sn["alipayRootCert.crt"]
    as_the_sdk_reads_it = bundle.decode().replace("\r\n", "\n")  # a text-mode open(); it splits on blank lines
    assert DCAliPay.get_root_cert_sn(as_the_sdk_reads_it) == expected_sn["alipayRootCert.crt"]
    assert bundle.count(b"BEGIN CERTIFICATE") == 4 and len(certchain.load_bundle(bundle)) == 3


def test_the_alipay_certificate_file_holds_its_intermediate():
    certs = certchain.load_bundle((ALIPAY_CERT_FIXTURES / "alipayPublicCert.crt").read_bytes())
    leaf = alipay_crypto.leaf(certs)
    assert "支付宝(中国)网络技术有限公司" in leaf.subject.rfc4514_string()
    assert certchain.issued_by(leaf, next(c for c in certs if c is not leaf))


@pytest.fixture(scope="module")
def alipay_certs() -> AlipayCertificates:
    return AlipayCertificates.generate(ALIPAY_SELLER_ID)


@pytest.fixture
async def cert_sandbox(tmp_path, alipay_certs):
    channels = await start_sandbox_channels(alipay=alipay_settings(alipay_certs), db_path=tmp_path / "ch.sqlite3")
    yield channels
    await channels.close()


@pytest.fixture
def cert_trust(cert_sandbox, tmp_path):
    return write_alipay_cert_trust(cert_sandbox, tmp_path / "alipay-certs")


@pytest.fixture
async def cert_alipay(cert_sandbox, cert_trust):
    channel = AlipayChannel(alipay_cert_config(cert_sandbox, cert_trust))
    yield channel
    await channel.aclose()


async def admin(sandbox, path: str, body: dict | None = None, *, method: str = "POST") -> dict:
    async with aiohttp.ClientSession() as http, http.request(method, sandbox.admin_url + path, json=body) as resp:
        data = await resp.json()
        assert resp.status < 300, data
        return data


async def test_certificate_mode_end_to_end(cert_sandbox, cert_alipay):
    receiver = await start_receiver()
    try:
        started = await cert_alipay.create(
            PaymentRequest("ALI-CM-00001", 2500, "挂号费", Scene.native, f"{receiver.url}/cm")
        )
        assert started.pay_params["qr_code"]
        await admin(cert_sandbox, "/payer/scan", {"channel": "alipay", "out_trade_no": "ALI-CM-00001"})
        await admin(cert_sandbox, "/payer/pay", {"channel": "alipay", "out_trade_no": "ALI-CM-00001"})
        (cb,) = await receiver.wait_for(1)
        note = cert_alipay.verify_notification(cb.headers, cb.body)
        assert note.trade is not None and note.trade.state is TradeState.success and note.trade.amount_fen == 2500
        assert (await cert_alipay.query("ALI-CM-00001")).state is TradeState.success
        refund = await cert_alipay.refund(RefundRequest("ALI-CM-00001", "ALI-CM-R1", 500, 2500))
        assert refund.state is RefundState.success
        signed = cert_sandbox.alipay.signed_with
        assert list(signed) == [cert_alipay.keys.current().serial] and sum(signed.values()) >= 3
    finally:
        await receiver.close()


async def test_a_replaced_alipay_certificate_is_fetched_and_checked(cert_sandbox, cert_alipay):
    before = cert_sandbox.alipay.certificates.sn
    await cert_alipay.create(PaymentRequest("ALI-CM-00002", 100, "x", Scene.native, "http://127.0.0.1:9/n"))
    rotated = await admin(cert_sandbox, "/alipay/certificates/rotate")
    assert rotated["alipay_cert_sn"] != before
    assert (await cert_alipay.query("ALI-CM-00002")).state is TradeState.not_found
    kept = {c.serial for c in await cert_alipay.state.certificates()}
    assert kept == {rotated["alipay_cert_sn"]}
    assert {k.sn for k in cert_alipay.usable_keys()} == {before, rotated["alipay_cert_sn"]}
    other = AlipayChannel(cert_alipay.config, state=cert_alipay.state)
    try:
        assert rotated["alipay_cert_sn"] not in {k.sn for k in other.usable_keys()}
        await other.load_trust()
        assert rotated["alipay_cert_sn"] in {k.sn for k in other.usable_keys()}, "another instance takes it up"
    finally:
        await other.aclose()


async def test_a_certificate_from_another_ca_is_refused(cert_sandbox, cert_alipay):
    """Answers signed by a certificate of a CA the merchant did not configure: it is downloaded, fails the
    chain check against our root bundle, and nothing it signs is believed."""
    foreign = AlipayCertificates.generate(ALIPAY_SELLER_ID)
    certs = cert_sandbox.alipay.certificates
    certs.previous.append(certs.cert)
    certs.cert, certs.key = foreign.cert, foreign.key
    with pytest.raises(ChannelError) as info:
        await cert_alipay.query("ALI-CM-00003")
    assert info.value.code in ("UNTRUSTED_ALIPAY_CERT", "BAD_RESPONSE_SIGNATURE")
    assert await cert_alipay.state.certificates() == []


async def test_requests_carry_both_sns(cert_sandbox, cert_alipay, cert_trust):
    params = cert_alipay.signed_params("alipay.trade.query", {"out_trade_no": "X"})
    app_cert = x509.load_pem_x509_certificate(cert_trust.app_cert.read_bytes())
    assert (
        params["app_cert_sn"]
        == alipay_crypto.cert_sn(app_cert)
        == DCAliPay.get_cert_sn(cert_trust.app_cert.read_text())
    )
    assert params["alipay_root_cert_sn"] == cert_sandbox.alipay.certificates.root_sn
    assert "_" in params["alipay_root_cert_sn"]


async def test_python_alipay_sdk_dcalipay_as_a_client(cert_sandbox, cert_trust):
    """python-alipay-sdk's certificate-mode client against the sandbox: its SNs are accepted and our sandbox's
    answers pass its verification."""
    sdk = DCAliPay(
        appid=ALIPAY_APP_ID,
        app_private_key_string=ALIPAY_APP_PRIVATE.read_text(),
        app_public_key_cert_string=cert_trust.app_cert.read_text(),
        alipay_public_key_cert_string=cert_trust.alipay_cert.read_text(),
        alipay_root_cert_string=cert_trust.root_cert.read_text(),
    )
    sdk._gateway = cert_sandbox.alipay_gateway_url
    result = await asyncio.to_thread(
        sdk.api_alipay_trade_precreate, subject="挂号费", out_trade_no="SDK-CM-0001", total_amount="1.00"
    )
    assert result["code"] == "10000" and result["qr_code"]
    download = sdk.api_alipay_open_app_alipaycert_download(cert_sandbox.alipay.certificates.sn)
    params = dict(parse_qsl(download))
    assert params["alipay_root_cert_sn"] == cert_sandbox.alipay.certificates.root_sn
    async with aiohttp.ClientSession() as http, http.post(cert_sandbox.alipay_gateway_url, data=params) as resp:
        text = await resp.text()
    content = json.loads(text)["alipay_open_app_alipaycert_download_response"]["alipay_cert_content"]
    assert b"BEGIN CERTIFICATE" in base64.b64decode(content)


async def test_a_notification_signed_by_the_next_certificate_is_learned(cert_sandbox, cert_alipay):
    """Notifications name no certificate: one signed by the certificate Alipay just switched to fails every
    trusted key; ``refresh_trust`` asks Alipay something, its answer names the new certificate, which is fetched,
    and the notification then verifies."""
    receiver = await start_receiver()
    try:
        await cert_alipay.create(PaymentRequest("ALI-CM-00004", 300, "x", Scene.native, f"{receiver.url}/n"))
        await admin(cert_sandbox, "/payer/scan", {"channel": "alipay", "out_trade_no": "ALI-CM-00004"})
        await admin(cert_sandbox, "/alipay/certificates/rotate")
        await admin(cert_sandbox, "/payer/pay", {"channel": "alipay", "out_trade_no": "ALI-CM-00004"})
        (cb,) = await receiver.wait_for(1)
        with pytest.raises(NotificationRejected) as info:
            cert_alipay.verify_notification(cb.headers, cb.body)
        assert info.value.reason == "bad_signature" and cert_alipay.may_learn_keys(info.value.reason)
        assert await cert_alipay.refresh_trust()
        assert cert_alipay.verify_notification(cb.headers, cb.body).trade.amount_fen == 300
        assert not await cert_alipay.refresh_trust(), "nothing new, and no second probe within a minute"
    finally:
        await receiver.close()
