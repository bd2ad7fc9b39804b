"""Keys derived from the one SMS secret: phone numbers and IPs are stored as HMACs, codes as an HMAC for checking
and sealed (AES-GCM) for resending the same code within its life. A copy of the database alone reveals neither
numbers nor codes; the secret lives in its own file, never in the database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_SECRET_BYTES = 32


def _derive(secret: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"hisgateway-sms/{purpose}".encode()).derive(
        secret
    )


@dataclass(frozen=True)
class SmsKeys:
    subject_key: bytes
    code_key: bytes
    seal_key: bytes
    captcha_key: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> SmsKeys:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the SMS secret must be at least {MIN_SECRET_BYTES} bytes")
        return cls(*(_derive(secret, p) for p in ("subject", "code", "seal", "captcha")))

    @classmethod
    def from_file(cls, path: Path) -> SmsKeys:
        return cls.from_secret(path.read_bytes().strip())

    def subject_hash(self, kind: str, value: str) -> str:
        """A stable pseudonym for a phone number or an IP address."""
        return hmac.new(self.subject_key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()

    def code_hash(self, binding: str, code: str) -> str:
        return hmac.new(self.code_key, f"{binding}|{code}".encode(), hashlib.sha256).hexdigest()

    def seal(self, binding: str, code: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self.seal_key).encrypt(nonce, code.encode(), binding.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode()

    def unseal(self, binding: str, sealed: str) -> str:
        raw = base64.urlsafe_b64decode(sealed)
        return AESGCM(self.seal_key).decrypt(raw[:12], raw[12:], binding.encode()).decode()
