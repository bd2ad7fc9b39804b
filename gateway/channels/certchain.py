"""Checking that a channel's certificate chains to the root the merchant configured (UnionPay's signing
certificates, Alipay's public-key certificates).

Written here rather than with ``cryptography``'s ``x509.verification`` policy builder or its
``verify_directly_issued_by``: the builder enforces the CA/Browser-Forum web profile (required extensions) and
both refuse SHA-1 signatures, which UnionPay's CFCA chain still uses (its test root, intermediate and signing
certificates are all sha1WithRSA). What is checked is what the channels' own SDKs check: each link's issuer is the
next link's subject and its signature verifies with the next link's key, the last is a self-signed root the
merchant trusts, every link is within its validity at the time of checking. Revocation is not checked (the SDKs
do not either).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class ChainError(Exception):
    """``reason``: ``untrusted_certificate`` (no path to a trusted root) or ``expired_certificate``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject or child.signature_hash_algorithm is None:
        return False
    key = parent.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(), child.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(child.signature_hash_algorithm))
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def within(cert: x509.Certificate, at: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def load_bundle(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle that ``cryptography`` can read; the others (an SM2 root in Alipay's
    root bundle, for one) are skipped, as no RSA chain can run through them."""
    out = []
    for block in PEM_BLOCK.findall(data):
        try:
            out.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    return out


def describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    at: dt.datetime,
    max_depth: int = 4,
) -> list[x509.Certificate]:
    """The path leaf → … → root; ``ChainError`` if there is none, or a link is outside its validity at ``at``."""

    def extend(path: list[x509.Certificate]) -> list[x509.Certificate] | None:
        tip = path[-1]
        for root in roots:
            if issued_by(tip, root) and issued_by(root, root):
                return [*path, root] if root != tip else path
        if len(path) >= max_depth:
            return None
        for parent in intermediates:
            if parent not in path and issued_by(tip, parent):
                found = extend([*path, parent])
                if found is not None:
                    return found
        return None

    path = extend([leaf])
    if path is None:
        raise ChainError("untrusted_certificate", f"{describe(leaf)} does not chain to a configured root")
    for link in path:
        if not within(link, at):
            raise ChainError(
                "expired_certificate",
                f"{describe(link)} is valid {link.not_valid_before_utc:%Y-%m-%d} to "
                f"{link.not_valid_after_utc:%Y-%m-%d}, not at {at:%Y-%m-%d %H:%M}",
            )
    return path
