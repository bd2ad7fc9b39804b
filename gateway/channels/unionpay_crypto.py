"""UnionPay online payment (全渠道, version 5.1.0) message signatures, free of I/O.

``signMethod=01``: the message's fields but ``signature``, sorted by name and joined as ``k=v&k=v`` (raw values,
blank ones left out when signing, as UnionPay's SDKs filter them), are hashed with SHA-256; the lower-case hex
digest is signed with SHA256withRSA and base64-encoded. ``certId`` is the decimal serial of the merchant's
signing certificate.

Every answer and back-notification carries the certificate it was signed with (``signPubKeyCert``). It is
believed only if, as UnionPay's own SDKs check: it chains through UnionPay's intermediate to UnionPay's root,
every certificate in the chain is within its validity at the time of checking, and the third ``@``-separated
field of its CN names UnionPay (``041@<code>@中国银联股份有限公司@<n>``) (``certchain``).

Synchronous answers are ``k=v&k=v`` *without* URL encoding (a certificate's newlines and base64 ``=`` go raw);
values of the reserved fields may hold ``{…}`` with ``&`` inside, so splitting respects braces, as the SDKs'
``convertResultStringToMap`` does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from gateway.channels import certchain

VERSION = "5.1.0"
SIGN_METHOD = "01"


class UnionPaySignatureError(Exception):
    """A message that must not be believed; ``reason`` is one of NotificationRejected's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def canonical(params: Mapping[str, str], *, skip_blank: bool) -> bytes:
    items = sorted((k, v) for k, v in params.items() if k != "signature" and not (skip_blank and v == ""))
    return "&".join(f"{k}={v}" for k, v in items).encode("utf-8")


def digest(params: Mapping[str, str], *, skip_blank: bool = True) -> bytes:
    """What is signed: the hex SHA-256 of the canonical string, as ASCII bytes."""
    return hashlib.sha256(canonical(params, skip_blank=skip_blank)).hexdigest().encode("ascii")


def sign(key: rsa.RSAPrivateKey, params: Mapping[str, str]) -> str:
    return base64.b64encode(key.sign(digest(params), padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def verify(key: rsa.RSAPublicKey, params: Mapping[str, str]) -> bool:
    """Over every field as received but ``signature`` (UnionPay's ``validate`` filters nothing else)."""
    try:
        raw = base64.b64decode(params.get("signature", ""), validate=True)
        key.verify(raw, digest(params, skip_blank=False), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def cert_id(cert: x509.Certificate) -> str:
    return str(cert.serial_number)


def owner(cert: x509.Certificate) -> str:
    """The organisation in a UnionPay certificate's CN (``041@8310000000083040@中国银联股份有限公司@00016495``)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    parts = str(names[0].value).split("@") if names else []
    return parts[2] if len(parts) > 2 else ""


def check_signing_certificate(
    pem: str | bytes,
    *,
    roots: Sequence[x509.Certificate],
    middles: Sequence[x509.Certificate],
    owners: Sequence[str],
    at: dt.datetime,
) -> x509.Certificate:
    """The ``signPubKeyCert`` if UnionPay's SDKs would believe it; ``UnionPaySignatureError`` otherwise."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise UnionPaySignatureError("malformed", f"signPubKeyCert is not a PEM certificate: {exc}") from None
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise UnionPaySignatureError("untrusted_certificate", "signPubKeyCert is not an RSA certificate")
    try:
        certchain.verify_chain(cert, middles, roots, at=at)
    except certchain.ChainError as exc:
        raise UnionPaySignatureError(exc.reason, f"signPubKeyCert: {exc.message}") from None
    name = owner(cert)
    if name not in owners:
        raise UnionPaySignatureError(
            "untrusted_certificate", f"signPubKeyCert belongs to {name or 'nobody'!r}, not to {', '.join(owners)}"
        )
    return cert


def parse_answer(text: str) -> dict[str, str]:
    """A synchronous answer ``k=v&k=v`` (raw values; braces protect ``&`` inside a value)."""
    fields: dict[str, str] = {}
    depth, start, i = 0, 0, 0
    parts: list[str] = []
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}" and depth:
            depth -= 1
        elif c == "&" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    for part in parts:
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"not a k=v field: {part[:40]!r}")
        fields[key] = value
    return fields


def form_body(fields: Mapping[str, str]) -> bytes:
    return urlencode(dict(fields)).encode("ascii")


def txn_time(at: dt.datetime) -> str:
    """``txnTime``: Beijing time, ``YYYYMMDDhhmmss``."""
    return at.astimezone(dt.timezone(dt.timedelta(hours=8))).strftime("%Y%m%d%H%M%S")


def parse_txn_time(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone(dt.timedelta(hours=8)))
