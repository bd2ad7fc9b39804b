"""Signing keys that rotate without downtime, and the inventory of every key a channel holds.

A merchant may list several signing keys; at any moment the newest one whose ``valid_from`` has passed, and
that is neither retired nor expired, signs. So a rotation is: register the new public half with the channel,
configure the new key next to the old one with a ``valid_from``, and remove the old record after its
``retire_after``. Requests in flight at the switch are each signed by one key or the other, both of which the
channel accepts during the overlap.

The channel-side material a gateway trusts (platform certificates, the Alipay certificate, UnionPay's chain) is
listed the same way, so ``his-gateway channels keys`` and the expiry metric see one inventory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from bridge import clock as shared_clock
from gateway.channels.base import ChannelError
from gateway.channels.config import MerchantKey
from gateway.channels.key_info import KeyInfo, KeyRole, KeyStatus

EXPIRY_WARNING = dt.timedelta(days=30)


@dataclass(frozen=True)
class SigningKey:
    """A loaded merchant key: the private key, its certificate if any, and the id the channel knows it by
    (WeChat: the certificate serial in hex; UnionPay: the certId; Alipay: the app certificate SN)."""

    id: str
    key: rsa.RSAPrivateKey
    serial: str
    certificate: x509.Certificate | None = None
    valid_from: dt.datetime | None = None
    retire_after: dt.datetime | None = None

    @property
    def not_after(self) -> dt.datetime | None:
        return self.certificate.not_valid_after_utc if self.certificate is not None else None

    def status(self, now: dt.datetime) -> KeyStatus:
        if self.retire_after is not None and now >= self.retire_after:
            return KeyStatus.retired
        if self.not_after is not None and now >= self.not_after:
            return KeyStatus.expired
        if self.valid_from is not None and now < self.valid_from:
            return KeyStatus.standby
        return KeyStatus.active


class KeyRing:
    """A merchant's signing keys; ``current`` picks the one that signs now. With none, calls fail as retryable
    (nothing was sent; the order stays open while an operator fixes the keys) with ``NO_SIGNING_KEY``."""

    def __init__(self, keys: list[SigningKey], *, clock: Callable[[], dt.datetime] | None = None) -> None:
        if not keys:
            raise ValueError("a channel needs at least one signing key")
        self.keys = keys
        self.clock = clock or shared_clock.utcnow

    def current(self, now: dt.datetime | None = None) -> SigningKey:
        at = now or self.clock()
        usable = [k for k in self.keys if k.status(at) is KeyStatus.active]
        if not usable:
            raise ChannelError(
                "NO_SIGNING_KEY",
                "no merchant key may sign now (all standby, retired or expired): see his-gateway channels keys",
                retryable=True,
            )
        return max(usable, key=lambda k: k.valid_from or dt.datetime.min.replace(tzinfo=dt.UTC))

    def by_serial(self, serial: str) -> SigningKey | None:
        return next((k for k in self.keys if k.serial == serial), None)

    def inventory(self, channel: str, used_for: str, now: dt.datetime | None = None) -> list[KeyInfo]:
        at = now or self.clock()
        try:
            signing = self.current(at).id
        except ChannelError:
            signing = None
        out = []
        for k in self.keys:
            status = k.status(at)
            if status is KeyStatus.active and k.id != signing:
                status = KeyStatus.superseded
            info = KeyInfo(channel, KeyRole.signs, k.id, k.serial, status, k.not_after, used_for)
            out.append(dataclasses.replace(info, valid_from=k.valid_from, retire_after=k.retire_after))
        return out


def _pem(data: bytes, label: str) -> bytes:
    """The Alipay console hands keys out as bare base64; accept those as well as PEM files."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        return text
    return b"-----BEGIN " + label.encode() + b"-----\n" + text + b"\n-----END " + label.encode() + b"-----\n"


def load_private_key(data: bytes, password: bytes | None = None) -> tuple[rsa.RSAPrivateKey, x509.Certificate | None]:
    """A PKCS#12 file (key and certificate), or a PEM / bare-base64 private key (PKCS#1 or PKCS#8)."""
    if not data.lstrip().startswith(b"-----") and data[:1] == b"\x30":
        key, cert, _ = pkcs12.load_key_and_certificates(data, password)
    else:
        key, cert = serialization.load_pem_private_key(_pem(data, "PRIVATE KEY"), password=password), None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("merchant keys are RSA")
    return key, cert


def load_merchant_key(
    record: MerchantKey, serial_of: Callable[[x509.Certificate], str], *, default_serial: str | None = None
) -> SigningKey:
    """Read one key record's files; ``serial_of`` names a certificate the way the channel does."""
    password = record.password.read().encode() if record.password is not None else None
    key, cert = load_private_key(record.private_key_file.read_bytes(), password)
    if record.certificate_file is not None:
        cert = x509.load_pem_x509_certificate(record.certificate_file.read_bytes())
    if cert is not None:
        pub = cert.public_key()
        if not isinstance(pub, rsa.RSAPublicKey) or pub.public_numbers() != key.public_key().public_numbers():
            raise ValueError(f"merchant key {record.id}: the certificate is not the private key's")
    if record.serial and cert is not None and record.serial.upper().lstrip("0") != serial_of(cert).upper().lstrip("0"):
        raise ValueError(f"merchant key {record.id}: serial {record.serial} is not its certificate's {serial_of(cert)}")
    serial = record.serial or (serial_of(cert) if cert is not None else default_serial)
    if not serial:
        raise ValueError(f"merchant key {record.id}: no serial (give certificate_file or serial)")
    return SigningKey(record.id, key, serial, cert, record.valid_from, record.retire_after)


def certificate_info(
    cert: x509.Certificate,
    *,
    channel: str,
    role: KeyRole,
    id: str,
    serial: str,
    used_for: str,
    now: dt.datetime,
    watched: bool = True,
) -> KeyInfo:
    status = KeyStatus.expired if now >= cert.not_valid_after_utc else KeyStatus.active
    return KeyInfo(channel, role, id, serial, status, cert.not_valid_after_utc, used_for, watched=watched)
