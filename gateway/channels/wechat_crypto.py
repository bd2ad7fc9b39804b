"""WeChat Pay API v3 cryptography: request signing, answer/callback verification, AEAD_AES_256_GCM.

Kept free of I/O so the published known-answer vectors can check it byte for byte:

- a request is signed over ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n`` with the merchant's RSA key
  (PKCS#1 v1.5, SHA-256, base64) and carried as ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…``;
- answers and callbacks are signed by WeChat over ``TIMESTAMP\\nNONCE\\nBODY\\n``; ``Wechatpay-Serial`` names the
  key: a platform certificate's serial (hex) or, in the newer public-key mode, ``PUB_KEY_ID_…``. A merchant
  migrating between the two has both configured at once, so the verifier keeps one table of serials. A platform
  certificate is never trusted outside its validity;
- callback resources are AES-256-GCM with the 32-byte APIv3 key, a 12-character nonce and associated data,
  ``ciphertext`` being base64(ciphertext ‖ 16-byte tag).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bridge import clock

SCHEME = "WECHATPAY2-SHA256-RSA2048"
PUBLIC_KEY_ID_PREFIX = "PUB_KEY_ID_"

HEADER_TIMESTAMP = "Wechatpay-Timestamp"
HEADER_NONCE = "Wechatpay-Nonce"
HEADER_SIGNATURE = "Wechatpay-Signature"
HEADER_SERIAL = "Wechatpay-Serial"
HEADER_SIGNATURE_TYPE = "Wechatpay-Signature-Type"


class WechatSignatureError(Exception):
    """A signed answer or callback that does not check out; ``reason`` is one of NotificationRejected's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def request_message(method: str, path_qs: str, timestamp: str, nonce: str, body: str | bytes) -> bytes:
    return f"{method.upper()}\n{path_qs}\n{timestamp}\n{nonce}\n".encode() + _bytes(body) + b"\n"


def response_message(timestamp: str, nonce: str, body: str | bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + _bytes(body) + b"\n"


def sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def new_nonce() -> str:
    return secrets.token_hex(16).upper()


def authorization(
    *,
    mchid: str,
    serial_no: str,
    key: rsa.RSAPrivateKey,
    method: str,
    path_qs: str,
    body: str | bytes = b"",
    timestamp: str | None = None,
    nonce: str | None = None,
) -> str:
    """The ``Authorization`` header value for one request; timestamp and nonce are fixed only by tests."""
    timestamp = timestamp or str(int(clock.now()))
    nonce = nonce or new_nonce()
    signature = sign(key, request_message(method, path_qs, timestamp, nonce, body))
    return (
        f'{SCHEME} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{serial_no}"'
    )


def aes_gcm_decrypt(key: bytes, nonce: str, associated_data: str, ciphertext_b64: str) -> bytes:
    """Raises ``WechatSignatureError('bad_tag')`` when the key, nonce, data or ciphertext is not the one sealed."""
    try:
        data = base64.b64decode(ciphertext_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WechatSignatureError("malformed", f"resource ciphertext is not base64: {exc}") from None
    try:
        return AESGCM(key).decrypt(nonce.encode(), data, associated_data.encode())
    except InvalidTag:
        raise WechatSignatureError("bad_tag", "AES-GCM tag mismatch (wrong APIv3 key or altered resource)") from None


def aes_gcm_encrypt(key: bytes, nonce: str, associated_data: str, plaintext: bytes) -> str:
    return base64.b64encode(AESGCM(key).encrypt(nonce.encode(), plaintext, associated_data.encode())).decode()


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the merchant key must be RSA")
    return key


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """A PEM public key, or the public key of a PEM certificate."""
    key: object = (
        x509.load_pem_x509_certificate(pem).public_key()
        if b"BEGIN CERTIFICATE" in pem
        else serialization.load_pem_public_key(pem)
    )
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("WeChat Pay keys are RSA")
    return key


def certificate_serial(cert: x509.Certificate) -> str:
    """The serial as WeChat writes it in ``Wechatpay-Serial``: upper-case hex without leading zeros."""
    return f"{cert.serial_number:X}"


@dataclass(frozen=True)
class PlatformKey:
    serial: str
    key: rsa.RSAPublicKey
    not_after: float | None = None
    """Expiry of a platform certificate (Unix time); a WeChat Pay public key has none."""
    not_before: float | None = None
    certificate: x509.Certificate | None = None

    @classmethod
    def of_certificate(cls, cert: x509.Certificate) -> PlatformKey:
        pub = cert.public_key()
        if not isinstance(pub, rsa.RSAPublicKey):
            raise ValueError(f"platform certificate {certificate_serial(cert)} is not RSA")
        return cls(
            certificate_serial(cert),
            pub,
            cert.not_valid_after_utc.timestamp(),
            cert.not_valid_before_utc.timestamp(),
            cert,
        )


def normalize_serial(serial: str) -> str:
    """Certificate serials compare as numbers (headers may keep leading zeros); key ids as written."""
    serial = serial.strip()
    if serial.startswith(PUBLIC_KEY_ID_PREFIX):
        return serial
    try:
        return f"{int(serial, 16):X}"
    except ValueError:
        return serial.upper()


class WechatVerifier:
    """Checks WeChat's signatures on answers and callbacks against every key the merchant trusts."""

    def __init__(self, keys: list[PlatformKey], *, window_s: int = 300) -> None:
        self._keys = {normalize_serial(k.serial): k for k in keys}
        self.window_s = window_s

    @classmethod
    def from_files(
        cls,
        certificates: list[Path],
        public_key: Path | None = None,
        public_key_id: str | None = None,
        *,
        window_s: int = 300,
    ) -> WechatVerifier:
        keys = [PlatformKey.of_certificate(x509.load_pem_x509_certificate(path.read_bytes())) for path in certificates]
        if public_key is not None:
            if not public_key_id:
                raise ValueError("a WeChat Pay public key needs its id (PUB_KEY_ID_…)")
            keys.append(PlatformKey(public_key_id, load_public_key(public_key.read_bytes())))
        return cls(keys, window_s=window_s)

    @property
    def serials(self) -> list[str]:
        return sorted(self._keys)

    @property
    def keys(self) -> list[PlatformKey]:
        return list(self._keys.values())

    def knows(self, serial: str) -> bool:
        return normalize_serial(serial) in self._keys

    def add(self, key: PlatformKey) -> None:
        self._keys[normalize_serial(key.serial)] = key

    def check(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> str:
        """Verify; returns the serial used. Raises ``WechatSignatureError`` with the first reason found."""
        lower = {k.lower(): v for k, v in headers.items()}
        missing = [
            h for h in (HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE, HEADER_SERIAL) if h.lower() not in lower
        ]
        if missing:
            raise WechatSignatureError("malformed", f"missing header(s): {', '.join(missing)}")
        signature_type = lower.get(HEADER_SIGNATURE_TYPE.lower(), SCHEME)
        if signature_type != SCHEME:
            raise WechatSignatureError("malformed", f"unsupported {HEADER_SIGNATURE_TYPE}: {signature_type}")
        serial = lower[HEADER_SERIAL.lower()].strip()
        known = self._keys.get(normalize_serial(serial))
        if known is None:
            raise WechatSignatureError(
                "unknown_serial", f"{HEADER_SERIAL} {serial} is none of the trusted keys ({', '.join(self.serials)})"
            )
        current = clock.now() if now is None else now
        if known.not_after is not None and current > known.not_after:
            raise WechatSignatureError("expired_certificate", f"platform certificate {serial} has expired")
        if known.not_before is not None and current < known.not_before:
            raise WechatSignatureError("expired_certificate", f"platform certificate {serial} is not valid yet")
        timestamp = lower[HEADER_TIMESTAMP.lower()].strip()
        nonce = lower[HEADER_NONCE.lower()]
        if not verify(known.key, response_message(timestamp, nonce, body), lower[HEADER_SIGNATURE.lower()]):
            raise WechatSignatureError("bad_signature", f"signature does not verify with key {serial}")
        try:
            stamp = int(timestamp)
        except ValueError:
            raise WechatSignatureError("malformed", f"{HEADER_TIMESTAMP} is not an integer: {timestamp!r}") from None
        if abs(current - stamp) > self.window_s:
            raise WechatSignatureError(
                "stale", f"signed at {stamp}, {int(current - stamp)} s from now, outside the {self.window_s} s window"
            )
        return known.serial


def open_certificates(
    answer: dict[str, object], apiv3_key: bytes, *, now: float | None = None
) -> list[x509.Certificate]:
    """The platform certificates of a ``GET /v3/certificates`` answer, decrypted with the APIv3 key (which
    authenticates them: only WeChat Pay and the merchant hold it), each checked against the serial and validity
    the answer states. Expired ones are dropped. Raises ``WechatSignatureError`` (bad_tag, malformed)."""
    entries = answer.get("data")
    if not isinstance(entries, list) or not entries:
        raise WechatSignatureError("malformed", "no data[] of certificates in the answer")
    current = clock.now() if now is None else now
    out = []
    for entry in entries:
        try:
            sealed = entry["encrypt_certificate"]
            serial = normalize_serial(str(entry["serial_no"]))
            if sealed["algorithm"] != "AEAD_AES_256_GCM":
                raise ValueError(f"unsupported algorithm {sealed['algorithm']}")
            pem = aes_gcm_decrypt(apiv3_key, sealed["nonce"], sealed.get("associated_data", ""), sealed["ciphertext"])
            cert = x509.load_pem_x509_certificate(pem)
        except (KeyError, TypeError, ValueError) as exc:
            raise WechatSignatureError("malformed", f"certificate entry: {exc!r}") from None
        if certificate_serial(cert) != serial:
            raise WechatSignatureError("malformed", f"serial_no {serial} is not the certificate's own serial")
        if cert.not_valid_after_utc.timestamp() <= current:
            continue
        out.append(cert)
    return out
