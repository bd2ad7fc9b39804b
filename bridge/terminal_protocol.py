"""The per-terminal HMAC envelope spoken between intranet terminals (kiosks, cashier windows) and the agent.

Many kiosks and window clients cannot present a client certificate, but every one can compute an HMAC. A
terminal shares one secret key with the agent and sends, on every request, its id, a timestamp, a nonce and
an HMAC-SHA256 over the method, the path (with its query), those three and the SHA-256 of the body. The agent
answers with an HMAC under the same key over the status, the request's nonce, its own timestamp and the
SHA-256 of its body, so a terminal can trust a "paid" before it prints a receipt.

Like ``bridge.protocol`` this module is free of I/O: the sandbox kiosk imports it to speak the envelope.
The ``EnvelopeError`` codes are the same stable codes the platform-facing envelope uses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from bridge import clock
from bridge.protocol import EnvelopeError, check_timestamp, required_header

SCHEME = "HBT1"

HEADER_TERMINAL = "X-HBT-Terminal"
HEADER_TIMESTAMP = "X-HBT-Timestamp"
HEADER_NONCE = "X-HBT-Nonce"
HEADER_SIGNATURE = "X-HBT-Signature"

TERMINAL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,20}$")
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}$")
MIN_KEY_BYTES = 16


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def request_string(method: str, path_qs: str, terminal: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{SCHEME}\n{method.upper()}\n{path_qs}\n{terminal}\n{timestamp}\n{nonce}\n{body_digest(body)}\n".encode()


def response_string(status: int, request_nonce: str, timestamp: str, body: bytes) -> bytes:
    return f"{SCHEME}-RESP\n{status}\n{request_nonce}\n{timestamp}\n{body_digest(body)}\n".encode()


def mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def parse_key(text: str) -> bytes:
    """A terminal key as written in its key file: hex (64 characters for 32 bytes) or raw text of ≥ 16 bytes."""
    text = text.strip()
    if len(text) >= 2 * MIN_KEY_BYTES and len(text) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    raw = text.encode()
    if len(raw) < MIN_KEY_BYTES:
        raise ValueError(f"a terminal key needs at least {MIN_KEY_BYTES} bytes")
    return raw


def new_key() -> str:
    """A fresh 32-byte terminal key, hex, for a key file."""
    return secrets.token_hex(32)


def sign_request(
    terminal: str,
    key: bytes,
    method: str,
    path_qs: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that authenticate one terminal request."""
    ts = str(int(clock.now()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    return {
        HEADER_TERMINAL: terminal,
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: mac(key, request_string(method, path_qs, terminal, ts, nonce, body)),
    }


@dataclass(frozen=True)
class VerifiedTerminalRequest:
    terminal: str
    nonce: str
    timestamp: int


def claimed_terminal(headers: Mapping[str, str]) -> str | None:
    """The terminal id a request names, if it names a well-formed one (before anything is verified)."""
    value = headers.get(HEADER_TERMINAL, "")
    return value if TERMINAL_ID_RE.match(value) else None


def verify_request(
    key: bytes,
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    window_s: int,
    now: float | None = None,
) -> VerifiedTerminalRequest:
    """Check one request's HMAC and timestamp against the key of the terminal it names. The nonce's freshness
    is the caller's to check (it needs durable storage)."""
    terminal = required_header(headers, HEADER_TERMINAL)
    ts_raw = required_header(headers, HEADER_TIMESTAMP)
    nonce = required_header(headers, HEADER_NONCE)
    signature = required_header(headers, HEADER_SIGNATURE)
    if not NONCE_RE.match(nonce):
        raise EnvelopeError("bad_nonce", "nonce must be 16-64 characters of [A-Za-z0-9_-]")
    ts = check_timestamp(ts_raw, window_s, now)
    expected = mac(key, request_string(method, path_qs, terminal, ts_raw, nonce, body))
    if not SIGNATURE_RE.match(signature) or not hmac.compare_digest(expected, signature):
        raise EnvelopeError("bad_signature", "HMAC does not match the request (key, body or path differ)")
    return VerifiedTerminalRequest(terminal=terminal, nonce=nonce, timestamp=ts)


def sign_response(key: bytes, status: int, request_nonce: str, body: bytes) -> dict[str, str]:
    ts = str(int(clock.now()))
    return {HEADER_TIMESTAMP: ts, HEADER_SIGNATURE: mac(key, response_string(status, request_nonce, ts, body))}


def verify_response(
    key: bytes,
    status: int,
    request_nonce: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    window_s: int = 300,
    now: float | None = None,
) -> None:
    """What a terminal does with every answer: refuse it unless the agent signed it for this request."""
    ts_raw = required_header(headers, HEADER_TIMESTAMP)
    check_timestamp(ts_raw, window_s, now)
    signature = required_header(headers, HEADER_SIGNATURE)
    expected = mac(key, response_string(status, request_nonce, ts_raw, body))
    if not hmac.compare_digest(expected, signature):
        raise EnvelopeError("bad_signature", "answer HMAC does not match")
