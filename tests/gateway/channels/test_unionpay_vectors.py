"""UnionPay signMethod 01 against published material (tests/fixtures/unionpay/SOURCES.md): the request signature
yansongda/pay's tests expect from UnionPay's test signing certificate, and an answer of UnionPay's test
environment with its signPubKeyCert, checked against UnionPay's test root and intermediate."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.channels import unionpay_crypto
from gateway.channels.keys import load_private_key
from gateway.channels.unionpay_crypto import UnionPaySignatureError
from sandbox.channels import crypto as sandbox_crypto
from sandbox.channels import pki
from tests.support.channelrig import UNIONPAY_FIXTURES

SIGNED_ON = dt.datetime(2022, 9, 8, 6, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def request_vector() -> dict:
    return json.loads((UNIONPAY_FIXTURES / "request_signature_vector.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def answer_vector() -> dict:
    return json.loads((UNIONPAY_FIXTURES / "response_signature_vector.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def chain() -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    roots = x509.load_pem_x509_certificates((UNIONPAY_FIXTURES / "acp_test_root.cer").read_bytes())
    middles = x509.load_pem_x509_certificates((UNIONPAY_FIXTURES / "acp_test_middle.cer").read_bytes())
    return roots, middles


def test_our_signature_is_the_published_one(request_vector):
    key, cert = load_private_key(
        (UNIONPAY_FIXTURES / request_vector["key_file"]).read_bytes(), request_vector["key_password"].encode()
    )
    assert cert is not None and unionpay_crypto.cert_id(cert) == request_vector["expected_cert_id"]
    assert unionpay_crypto.sign(key, request_vector["params"]) == request_vector["expected_signature"]


def test_the_canonical_string_leaves_out_signature_and_blanks(request_vector):
    text = unionpay_crypto.canonical(request_vector["params"], skip_blank=True).decode()
    assert text.startswith("accessType=0&backUrl=https://yansongda.cn/unipay/notify&bizType=000201&")
    assert "signature=" not in text and text.endswith("&version=5.1.0")


def test_a_changed_field_changes_the_signature(request_vector):
    key, _ = load_private_key((UNIONPAY_FIXTURES / "acp_test_sign.pfx").read_bytes(), b"000000")
    changed = dict(request_vector["params"], txnAmt="2")
    assert unionpay_crypto.sign(key, changed) != request_vector["expected_signature"]


def test_unionpays_answer_verifies_with_its_signpubkeycert(answer_vector, chain):
    fields = dict(answer_vector["fields"], signature=answer_vector["signature"])
    roots, middles = chain
    cert = unionpay_crypto.check_signing_certificate(
        fields["signPubKeyCert"], roots=roots, middles=middles, owners=["中国银联股份有限公司"], at=SIGNED_ON
    )
    assert unionpay_crypto.owner(cert) == "中国银联股份有限公司"
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert unionpay_crypto.canonical(fields, skip_blank=False).decode() == answer_vector["signed_content"]
    assert unionpay_crypto.verify(key, fields)
    assert not unionpay_crypto.verify(key, dict(fields, settleAmt="100"))


def test_the_published_certificate_has_expired_since(answer_vector, chain):
    roots, middles = chain
    with pytest.raises(UnionPaySignatureError) as info:
        unionpay_crypto.check_signing_certificate(
            answer_vector["fields"]["signPubKeyCert"],
            roots=roots,
            middles=middles,
            owners=["中国银联股份有限公司"],
            at=dt.datetime(2025, 8, 1, tzinfo=dt.UTC),
        )
    assert info.value.reason == "expired_certificate"


def test_the_organisation_in_the_cn_is_checked(answer_vector, chain):
    roots, middles = chain
    with pytest.raises(UnionPaySignatureError) as info:
        unionpay_crypto.check_signing_certificate(
            answer_vector["fields"]["signPubKeyCert"], roots=roots, middles=middles, owners=["某公司"], at=SIGNED_ON
        )
    assert info.value.reason == "untrusted_certificate" and "中国银联股份有限公司" in info.value.message


def test_a_certificate_from_another_chain_is_refused(chain):
    """Same CN, same shape, issued under a root the merchant did not configure."""
    other_root = pki.Authority.root(pki.name(cn="CFCA TEST CS CA", o="China Financial Certification Authority"))
    other_middle = other_root.intermediate(pki.name(cn="CFCA TEST OCA1", o="China Financial Certification Authority"))
    key = sandbox_crypto.new_rsa_key()
    forged = other_middle.issue(
        pki.name(cn="041@8310000000083040@中国银联股份有限公司@00016495", o="CFCA OCA1", c="cn"), key.public_key()
    )
    roots, middles = chain
    with pytest.raises(UnionPaySignatureError) as info:
        unionpay_crypto.check_signing_certificate(
            sandbox_crypto.certificate_pem(forged),
            roots=roots,
            middles=middles,
            owners=["中国银联股份有限公司"],
            at=dt.datetime.now(dt.UTC),
        )
    assert info.value.reason == "untrusted_certificate"


def test_answers_are_split_on_ampersands_outside_braces():
    text = "respCode=00&reqReserved={a=1&b=2}&signPubKeyCert=-----BEGIN CERTIFICATE-----\nMII==\n-----END"
    fields = unionpay_crypto.parse_answer(text)
    assert fields["reqReserved"] == "{a=1&b=2}" and fields["signPubKeyCert"].endswith("MII==\n-----END")
    with pytest.raises(ValueError):
        unionpay_crypto.parse_answer("respCode=00&garbage")
