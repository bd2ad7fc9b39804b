"""Certificate chains for the sandbox channels: a root, an intermediate, and the certificates issued under
them, shaped like the real ones (UnionPay's CFCA chain, Alipay's Ant Financial chain) but made fresh."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bridge import clock
from sandbox.channels import crypto


def name(*, cn: str, o: str, ou: str | None = None, c: str = "CN") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, c), x509.NameAttribute(NameOID.ORGANIZATION_NAME, o)]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _serial() -> int:
    return int.from_bytes(secrets.token_bytes(8), "big") >> 1 | (1 << 40)


@dataclass
class Authority:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def root(cls, subject: x509.Name, *, days: int = 7300) -> Authority:
        key = crypto.new_rsa_key()
        now = clock.utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        subject: x509.Name,
        public_key: rsa.RSAPublicKey,
        *,
        ca: bool = False,
        days: int = 1825,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        start = not_before or clock.utcnow() - dt.timedelta(days=1)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def intermediate(self, subject: x509.Name, *, days: int = 3650) -> Authority:
        key = crypto.new_rsa_key()
        return Authority(key, self.issue(subject, key.public_key(), ca=True, days=days))
