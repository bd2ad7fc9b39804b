"""Phone numbers: one normal form, a mask for logs and audit, and the number segment (号段) the velocity layer
counts. Only mainland mobile numbers are accepted: they are what the SMS templates are approved for."""

from __future__ import annotations

import re

_MOBILE = re.compile(r"^1[3-9]\d{9}$")


class BadPhone(ValueError):
    pass


def normalize(raw: str) -> str:
    """``+86 138-0013-8000`` → ``13800138000``."""
    digits = re.sub(r"[\s-]", "", raw)
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    elif len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    if not _MOBILE.match(digits):
        raise BadPhone("not a mainland China mobile number")
    return digits


def mask(phone: str) -> str:
    """``13800138000`` → ``138****8000``: enough for a patient or an operator to recognise, not to dial."""
    return f"{phone[:3]}****{phone[-4:]}"


def segment(phone: str, prefix_len: int) -> str:
    return phone[:prefix_len]
