"""Mutual TLS: contexts for both ends, and the pinned identity of the calling platform.

The platform CA may sign certificates for more than the bridge's caller, so a valid chain is not enough: the
peer must also be one of the configured identities, named by subject CN or pinned by its public key
(SPKI SHA-256, the form HPKP used: base64, or hex).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID


def server_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def client_context(server_ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def spki_sha256(cert: x509.Certificate) -> str:
    """The base64 SHA-256 of the certificate's SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def normalize_pin(pin: str) -> str:
    """Accept a pin as base64 or hex and return base64, so configs may use either."""
    pin = pin.strip()
    if len(pin) == 64 and all(c in "0123456789abcdefABCDEF" for c in pin):
        return base64.b64encode(bytes.fromhex(pin)).decode()
    raw = base64.b64decode(pin, validate=True)
    if len(raw) != 32:
        raise ValueError(f"SPKI pin {pin!r} is not a SHA-256 digest")
    return pin


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def days_to_expiry(cert: x509.Certificate, now: dt.datetime | None = None) -> float:
    now = now or dt.datetime.now(dt.UTC)
    return (cert.not_valid_after_utc - now).total_seconds() / 86400


@dataclass(frozen=True)
class PeerIdentity:
    cn: str | None
    spki_sha256: str

    @property
    def client_id(self) -> str:
        return self.cn or f"spki:{self.spki_sha256[:16]}"


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerIdentity | None:
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return _identity_of(der)


@functools.lru_cache(maxsize=64)
def _identity_of(der: bytes) -> PeerIdentity:
    """Cached by the certificate's bytes: parsing it and hashing its key on every request cost more than the
    rest of the identity check, and a caller presents the same certificate on every request."""
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else None
    return PeerIdentity(cn=cn, spki_sha256=spki_sha256(cert))


@dataclass(frozen=True)
class AllowedClient:
    """One identity the agent accepts, and the signing keys it may use (None: every configured key)."""

    cn: str | None = None
    spki_sha256: str | None = None
    key_ids: frozenset[str] | None = None

    def matches(self, identity: PeerIdentity) -> bool:
        if self.cn is not None:
            return identity.cn == self.cn
        return self.spki_sha256 is not None and identity.spki_sha256 == self.spki_sha256

    def may_sign_with(self, key_id: str) -> bool:
        return self.key_ids is None or key_id in self.key_ids


@dataclass(frozen=True)
class IdentityPolicy:
    """The allowed identities. A TLS identity is bound to the keys it may sign with, so that one allowed
    caller cannot sign requests with another's key id and act as it."""

    clients: tuple[AllowedClient, ...]

    @classmethod
    def build(cls, clients: list[AllowedClient]) -> IdentityPolicy:
        return cls(
            tuple(
                AllowedClient(c.cn, normalize_pin(c.spki_sha256) if c.spki_sha256 else None, c.key_ids) for c in clients
            )
        )

    def match(self, identity: PeerIdentity) -> AllowedClient | None:
        return next((c for c in self.clients if c.matches(identity)), None)

    def allows(self, identity: PeerIdentity) -> bool:
        return self.match(identity) is not None
