"""The signed envelope spoken between the cloud platform and the bridge.

Every request carries a key id, a timestamp, a nonce and a signature over the method, the path (with its
query), the timestamp, the nonce and the SHA-256 of the body. Every response is signed by the bridge over
its status, the request's nonce (so a response cannot be replayed as the answer to another request), its own
timestamp and the SHA-256 of its body.

This module is deliberately free of I/O and of the rest of the bridge (but ``clock``, a leaf like itself): the
gateway and the sandbox import it to speak the protocol, and nothing here may pull the server in with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from bridge import clock

SCHEME = "HB1"

HEADER_KEY_ID = "X-HB-Key-Id"
HEADER_TIMESTAMP = "X-HB-Timestamp"
HEADER_NONCE = "X-HB-Nonce"
HEADER_SIGNATURE = "X-HB-Signature"

DEFAULT_WINDOW_S = 300
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
"""ASCII digits only: ``str.isdigit`` also accepts superscripts and other scripts' digits, which ``int`` refuses."""
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class EnvelopeError(Exception):
    """A request or response failed authentication; ``code`` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def request_string(method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{SCHEME}\n{method.upper()}\n{path_qs}\n{timestamp}\n{nonce}\n{body_digest(body)}\n".encode()


def response_string(status: int, request_nonce: str, timestamp: str, body: bytes) -> bytes:
    return f"{SCHEME}-RESP\n{status}\n{request_nonce}\n{timestamp}\n{body_digest(body)}\n".encode()


def new_nonce() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class SigningKey:
    """A private key with the id its peer knows it by."""

    key_id: str
    key: PrivateKey

    def sign(self, message: bytes) -> str:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            raw = self.key.sign(message)
        else:
            raw = self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(raw).decode()

    def public(self) -> VerifyKey:
        return VerifyKey(self.key_id, self.key.public_key())


@dataclass(frozen=True)
class VerifyKey:
    key_id: str
    key: PublicKey

    def verify(self, message: bytes, signature_b64: str) -> bool:
        try:
            raw = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            return False
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(raw, message)
            else:
                self.key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True

    def public_pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_key_type(key: object, path: Path) -> None:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"{path}: RSA keys shorter than 2048 bits are refused")
        return
    if not isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        raise ValueError(f"{path}: only Ed25519 and RSA keys are supported, got {type(key).__name__}")


def load_signing_key(key_id: str, path: str | Path) -> SigningKey:
    path = Path(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    _check_key_type(key, path)
    return SigningKey(key_id, key)  # type: ignore[arg-type]


def load_verify_key(key_id: str, path: str | Path) -> VerifyKey:
    """Load a public key from a PEM file; a private key file is accepted too, and only its public half kept."""
    path = Path(path)
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return load_signing_key(key_id, path).public()
    key = serialization.load_pem_public_key(data)
    _check_key_type(key, path)
    return VerifyKey(key_id, key)  # type: ignore[arg-type]


def write_private(path: str | Path, data: bytes) -> None:
    """Write a secret (a private key, a token) into a new file created with mode 0600, so that it never exists
    with wider permissions — not even between a write and a chmod. A file already there is replaced."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate_ed25519(key_id: str) -> SigningKey:
    return SigningKey(key_id, ed25519.Ed25519PrivateKey.generate())


def private_pem(key: SigningKey) -> bytes:
    return key.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def sign_request(
    key: SigningKey,
    method: str,
    path_qs: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Return the headers that authenticate this request."""
    ts = str(int(clock.now()) if timestamp is None else timestamp)
    nonce = nonce or new_nonce()
    return {
        HEADER_KEY_ID: key.key_id,
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: key.sign(request_string(method, path_qs, ts, nonce, body)),
    }


@dataclass(frozen=True)
class VerifiedRequest:
    key_id: str
    nonce: str
    timestamp: int


def required_header(headers: Mapping[str, str], name: str) -> str:
    """A signing header's value; its absence means the request is unsigned."""
    value = headers.get(name)
    if not value:
        raise EnvelopeError("unsigned", f"missing header {name}")
    return value


def check_timestamp(raw: str, window_s: int, now: float | None = None) -> int:
    if not TIMESTAMP_RE.fullmatch(raw):
        raise EnvelopeError("bad_timestamp", f"{HEADER_TIMESTAMP} must be integer Unix seconds")
    ts = int(raw)
    now = clock.now() if now is None else now
    if abs(now - ts) > window_s:
        raise EnvelopeError(
            "stale_timestamp",
            f"timestamp {ts} is {int(now - ts)} s away from now; the window is ±{window_s} s",
        )
    return ts


def verify_request(
    keys: Mapping[str, VerifyKey],
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    window_s: int = DEFAULT_WINDOW_S,
    now: float | None = None,
) -> VerifiedRequest:
    """Check a request's signature and timestamp. The nonce's freshness is the caller's to check (it needs
    durable storage); this only checks its shape."""
    key_id = required_header(headers, HEADER_KEY_ID)
    ts_raw = required_header(headers, HEADER_TIMESTAMP)
    nonce = required_header(headers, HEADER_NONCE)
    signature = required_header(headers, HEADER_SIGNATURE)
    if not NONCE_RE.match(nonce):
        raise EnvelopeError("bad_nonce", "nonce must be 16-64 characters of [A-Za-z0-9_-]")
    key = keys.get(key_id)
    if key is None:
        raise EnvelopeError("unknown_key", f"key id {key_id[:64]!r} is not configured")
    ts = check_timestamp(ts_raw, window_s, now)
    if not key.verify(request_string(method, path_qs, ts_raw, nonce, body), signature):
        raise EnvelopeError("bad_signature", "signature does not match the request")
    return VerifiedRequest(key_id=key_id, nonce=nonce, timestamp=ts)


def sign_response(key: SigningKey, status: int, request_nonce: str, body: bytes) -> dict[str, str]:
    ts = str(int(clock.now()))
    return {
        HEADER_KEY_ID: key.key_id,
        HEADER_TIMESTAMP: ts,
        HEADER_SIGNATURE: key.sign(response_string(status, request_nonce, ts, body)),
    }


def verify_response(
    key: VerifyKey,
    status: int,
    request_nonce: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    window_s: int = DEFAULT_WINDOW_S,
    now: float | None = None,
) -> None:
    key_id = required_header(headers, HEADER_KEY_ID)
    if key_id != key.key_id:
        raise EnvelopeError("unknown_key", f"response signed by {key_id!r}, expected {key.key_id!r}")
    ts_raw = required_header(headers, HEADER_TIMESTAMP)
    check_timestamp(ts_raw, window_s, now)
    signature = required_header(headers, HEADER_SIGNATURE)
    if not key.verify(response_string(status, request_nonce, ts_raw, body), signature):
        raise EnvelopeError("bad_signature", "response signature does not match")
