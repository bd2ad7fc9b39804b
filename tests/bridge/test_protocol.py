import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge import protocol
from bridge.protocol import EnvelopeError, SigningKey


def rsa_key(key_id: str) -> SigningKey:
    return SigningKey(key_id, rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(params=["ed25519", "rsa"])
def key(request) -> SigningKey:
    return protocol.generate_ed25519("platform") if request.param == "ed25519" else rsa_key("platform")


def test_signed_request_verifies(key):
    body = b'{"trade_no":"T1"}'
    headers = protocol.sign_request(key, "POST", "/v1/ops/charge.commit", body)
    verified = protocol.verify_request({"platform": key.public()}, "POST", "/v1/ops/charge.commit", headers, body)
    assert verified.key_id == "platform" and verified.nonce == headers[protocol.HEADER_NONCE]


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h, b: (h, b + b" "), "bad_signature"),
        (lambda h, b: ({**h, protocol.HEADER_NONCE: "x" * 32}, b), "bad_signature"),
        (lambda h, b: ({k: v for k, v in h.items() if k != protocol.HEADER_SIGNATURE}, b), "unsigned"),
        (lambda h, b: ({**h, protocol.HEADER_KEY_ID: "nobody"}, b), "unknown_key"),
        (lambda h, b: ({**h, protocol.HEADER_SIGNATURE: "not base64!!"}, b), "bad_signature"),
        (lambda h, b: ({**h, protocol.HEADER_NONCE: "short"}, b), "bad_nonce"),
        (lambda h, b: ({**h, protocol.HEADER_TIMESTAMP: "12abc"}, b), "bad_timestamp"),
    ],
)
def test_tampering_is_refused_with_its_own_code(key, mutate, code):
    body = b'{"amount_fen":100}'
    headers = protocol.sign_request(key, "POST", "/v1/ops/charge.commit", body)
    headers, body = mutate(headers, body)
    with pytest.raises(EnvelopeError) as e:
        protocol.verify_request({"platform": key.public()}, "POST", "/v1/ops/charge.commit", headers, body)
    assert e.value.code == code


def test_path_and_method_are_signed(key):
    headers = protocol.sign_request(key, "POST", "/v1/ops/charge.commit", b"{}")
    for method, path in (("POST", "/v1/ops/prepay.commit"), ("PUT", "/v1/ops/charge.commit")):
        with pytest.raises(EnvelopeError, match="signature"):
            protocol.verify_request({"platform": key.public()}, method, path, headers, b"{}")


def test_wrong_key_is_refused(key):
    other = protocol.generate_ed25519("platform")
    headers = protocol.sign_request(key, "POST", "/p", b"{}")
    with pytest.raises(EnvelopeError) as e:
        protocol.verify_request({"platform": other.public()}, "POST", "/p", headers, b"{}")
    assert e.value.code == "bad_signature"


def test_timestamp_window(key):
    now = time.time()
    old = protocol.sign_request(key, "POST", "/p", b"{}", timestamp=int(now) - 301)
    with pytest.raises(EnvelopeError) as e:
        protocol.verify_request({"platform": key.public()}, "POST", "/p", old, b"{}", now=now)
    assert e.value.code == "stale_timestamp"
    future = protocol.sign_request(key, "POST", "/p", b"{}", timestamp=int(now) + 299)
    protocol.verify_request({"platform": key.public()}, "POST", "/p", future, b"{}", now=now)
    with pytest.raises(EnvelopeError):
        protocol.verify_request({"platform": key.public()}, "POST", "/p", future, b"{}", now=now, window_s=60)


def test_response_is_bound_to_the_request_nonce(key):
    body = b'{"status":"done"}'
    headers = protocol.sign_response(key, 200, "n" * 32, body)
    protocol.verify_response(key.public(), 200, "n" * 32, headers, body)
    for status, nonce, b in ((200, "m" * 32, body), (202, "n" * 32, body), (200, "n" * 32, b"{}")):
        with pytest.raises(EnvelopeError):
            protocol.verify_response(key.public(), status, nonce, headers, b)


def test_keys_load_from_pem_files(tmp_path):
    key = protocol.generate_ed25519("k")
    (tmp_path / "k.pem").write_bytes(protocol.private_pem(key))
    (tmp_path / "k.pub").write_bytes(key.public().public_pem())
    loaded = protocol.load_signing_key("k", tmp_path / "k.pem")
    pub = protocol.load_verify_key("k", tmp_path / "k.pub")
    assert pub.verify(b"m", loaded.sign(b"m"))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "weak.pem").write_bytes(
        weak.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with pytest.raises(ValueError, match="2048"):
        protocol.load_signing_key("w", tmp_path / "weak.pem")
