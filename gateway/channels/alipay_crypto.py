"""Alipay OpenAPI RSA2 signing and verification (public-key and public-key-certificate modes), free of I/O.

- A request is signed over its parameters except ``sign`` and the empty ones, sorted by name, joined as
  ``k=v&k=v`` (raw values, not URL-encoded), SHA256withRSA, base64.
- A synchronous answer is signed over the exact JSON text of its ``<method>_response`` object as it appears in the
  body, so that text is cut out of the raw body rather than re-serialized.
- An async notification is signed over every field but ``sign`` and ``sign_type``, sorted and joined the same way.
- In certificate mode every request names the app certificate (``app_cert_sn``) and the root bundle
  (``alipay_root_cert_sn``), and every answer the Alipay certificate that signed it (``alipay_cert_sn``). A
  certificate's SN is ``md5(issuer DN + decimal serial)``, the issuer written as Alipay's Java SDK writes it
  (``X500Principal.getName()``: RFC 2253, most specific attribute first); the root SN joins the SNs of the
  bundle's RSA-signed roots with ``_``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from gateway.channels import certchain

RSA_SIGNED = frozenset({SignatureAlgorithmOID.RSA_WITH_SHA1, SignatureAlgorithmOID.RSA_WITH_SHA256})


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


def cert_sn(cert: x509.Certificate) -> str:
    return hashlib.md5((cert.issuer.rfc4514_string() + str(cert.serial_number)).encode()).hexdigest()


def root_cert_sn(bundle: bytes) -> str:
    """``alipay_root_cert_sn`` of a root bundle: the SNs of its RSA-signed certificates, joined by ``_``."""
    certs = certchain.load_bundle(bundle)
    return "_".join(cert_sn(c) for c in certs if c.signature_algorithm_oid in RSA_SIGNED)


def leaf(certs: list[x509.Certificate]) -> x509.Certificate:
    """The end-entity certificate of a file that may carry its intermediate too (the one that issued nothing)."""
    ends = [c for c in certs if not any(o is not c and o.issuer == c.subject for o in certs)]
    if len(ends) != 1:
        raise ValueError(f"expected one end-entity certificate among {len(certs)}")
    return ends[0]


def answer_cert_sn(text: str) -> str | None:
    """The ``alipay_cert_sn`` an answer names (certificate mode), beside ``sign``."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return None
    value = document.get("alipay_cert_sn") if isinstance(document, dict) else None
    return str(value) if value else None
