"""The published WeChat Pay v3 known answers (gunsluo/wechatpay-go test sources) against our crypto."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.channels import wechat_crypto
from gateway.channels.wechat_crypto import WechatSignatureError
from tests.support.channelrig import WECHAT_FIXTURES


@pytest.fixture(scope="module")
def signature_vector() -> dict:
    return json.loads((WECHAT_FIXTURES / "request_signature_vector.json").read_text())


@pytest.fixture(scope="module")
def aes_vector() -> dict:
    return json.loads((WECHAT_FIXTURES / "aes_gcm_vector.json").read_text())


def test_request_signature_known_answer(signature_vector):
    key = wechat_crypto.load_private_key((WECHAT_FIXTURES / signature_vector["private_key_file"]).read_bytes())
    message = wechat_crypto.request_message(
        signature_vector["method"],
        signature_vector["url_path_with_query"],
        signature_vector["timestamp"],
        signature_vector["nonce"],
        signature_vector["body"],
    )
    assert wechat_crypto.sign(key, message) == signature_vector["expected_signature"]


def test_authorization_header_known_answer(signature_vector):
    key = wechat_crypto.load_private_key((WECHAT_FIXTURES / signature_vector["private_key_file"]).read_bytes())
    header = wechat_crypto.authorization(
        mchid=signature_vector["merchant_id"],
        serial_no=signature_vector["merchant_serial_no"],
        key=key,
        method=signature_vector["method"],
        path_qs=signature_vector["url_path_with_query"],
        body=signature_vector["body"].encode(),
        timestamp=signature_vector["timestamp"],
        nonce=signature_vector["nonce"],
    )
    assert header == signature_vector["expected_authorization"]


def test_request_signature_verifies_with_the_public_half(signature_vector):
    key = wechat_crypto.load_private_key((WECHAT_FIXTURES / signature_vector["private_key_file"]).read_bytes())
    message = wechat_crypto.request_message(
        "POST",
        signature_vector["url_path_with_query"],
        signature_vector["timestamp"],
        signature_vector["nonce"],
        signature_vector["body"],
    )
    assert wechat_crypto.verify(key.public_key(), message, signature_vector["expected_signature"])
    assert not wechat_crypto.verify(key.public_key(), message + b"x", signature_vector["expected_signature"])


def test_aes_gcm_known_answer(aes_vector):
    plain = wechat_crypto.aes_gcm_decrypt(
        aes_vector["key"].encode(), aes_vector["nonce"], aes_vector["associated_data"], aes_vector["ciphertext_base64"]
    )
    assert plain == aes_vector["plaintext"].encode()


def test_aes_gcm_encrypt_reproduces_the_vector(aes_vector):
    sealed = wechat_crypto.aes_gcm_encrypt(
        aes_vector["key"].encode(), aes_vector["nonce"], aes_vector["associated_data"], aes_vector["plaintext"].encode()
    )
    assert sealed == aes_vector["ciphertext_base64"]


@pytest.mark.parametrize("field", ["key", "nonce", "associated_data", "ciphertext"])
def test_aes_gcm_any_change_is_a_bad_tag(aes_vector, field):
    key, nonce, ad = aes_vector["key"].encode(), aes_vector["nonce"], aes_vector["associated_data"]
    ciphertext = aes_vector["ciphertext_base64"]
    if field == "key":
        key = b"X" + key[1:]
    elif field == "nonce":
        nonce = "X" + nonce[1:]
    elif field == "associated_data":
        ad = "transaction"
    else:
        raw = bytearray(base64.b64decode(ciphertext))
        raw[0] ^= 1
        ciphertext = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(WechatSignatureError) as info:
        wechat_crypto.aes_gcm_decrypt(key, nonce, ad, ciphertext)
    assert info.value.reason == "bad_tag"
