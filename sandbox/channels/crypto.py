"""The channel side of the cryptography, written apart from ``gateway.channels`` on purpose: two independent
implementations meeting on the wire (and the public SDKs as third parties) catch what one checking itself cannot.

RSA is PKCS#1 v1.5 with SHA-256 throughout (WeChat's WECHATPAY2-SHA256-RSA2048 and Alipay's RSA2).
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from bridge import clock


def rsa_sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def rsa_verify(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature), message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def seal(key: bytes, associated_data: str, plaintext: bytes) -> dict[str, str]:
    """A WeChat ``resource`` object: AEAD_AES_256_GCM with a fresh 12-character nonce."""
    nonce = secrets.token_hex(6)
    sealed = AESGCM(key).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {
        "algorithm": "AEAD_AES_256_GCM",
        "associated_data": associated_data,
        "nonce": nonce,
        "ciphertext": base64.b64encode(sealed).decode("ascii"),
    }


def load_private(path: Path | bytes) -> rsa.RSAPrivateKey:
    pem = path.read_bytes() if isinstance(path, Path) else path
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def load_public(path: Path | bytes) -> rsa.RSAPublicKey:
    pem = path.read_bytes() if isinstance(path, Path) else path
    if b"CERTIFICATE" in pem:
        key = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def platform_certificate(key: rsa.RSAPrivateKey, mchid: str, days: int = 1825) -> x509.Certificate:
    """A self-signed stand-in for a WeChat Pay platform certificate (the real ones chain to Tenpay's CA)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sandbox Tenpay.com"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Sandbox WeChat Pay platform"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Sandbox platform certificate for {mchid}"),
        ]
    )
    now = clock.utcnow()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(20), "big") >> 1 | (1 << 150))
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
