"""Alipay OpenAPI RSA2 signing and verification (public-key mode), free of I/O.

- A request is signed over its parameters except ``sign`` and the empty ones, sorted by name, joined as
  ``k=v&k=v`` (raw values, not URL-encoded), SHA256withRSA, base64.
- A synchronous answer is signed over the exact JSON text of its ``<method>_response`` object as it appears in the
  body, so that text is cut out of the raw body rather than re-serialized.
- An async notification is signed over every field but ``sign`` and ``sign_type``, sorted and joined the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def request_content(params: Mapping[str, str]) -> bytes:
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v != "").encode()


def notification_content(params: Mapping[str, str]) -> bytes:
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type")).encode()


def sign(key: rsa.RSAPrivateKey, content: bytes) -> str:
    return base64.b64encode(key.sign(content, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify(key: rsa.RSAPublicKey, content: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), content, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _pem(data: bytes, label: str) -> bytes:
    """The Alipay console hands keys out as bare base64; accept those as well as PEM files."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        return text
    return b"-----BEGIN " + label.encode() + b"-----\n" + text + b"\n-----END " + label.encode() + b"-----\n"


def load_private_key(data: bytes) -> rsa.RSAPrivateKey:
    """PKCS#1 or PKCS#8, PEM or bare base64 (PKCS#8 assumed for bare)."""
    key = serialization.load_pem_private_key(_pem(data, "PRIVATE KEY"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the app private key must be RSA")
    return key


def load_public_key(data: bytes) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(_pem(data, "PUBLIC KEY"))
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the Alipay public key must be RSA")
    return key


def signed_part(text: str, response_key: str) -> tuple[str | None, str | None]:
    """(raw JSON text of ``response_key``'s object, ``sign``) from an answer body; ``None`` where absent."""
    decoder = json.JSONDecoder()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return None, None
    signature = document.get("sign") if isinstance(document, dict) else None
    marker = text.find(f'"{response_key}"')
    if marker < 0:
        return None, signature
    colon = text.index(":", marker + len(response_key) + 2)
    start = colon + 1
    while text[start] in " \t\r\n":
        start += 1
    _, end = decoder.raw_decode(text, start)
    return text[start:end], signature
